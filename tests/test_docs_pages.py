"The docs site renders every lesson: what nbdev does to a lesson's first cell must not lose any of it."
import json, re
from nbdev.frontmatter import _md2dict
from conftest import REPO

LESSONS = sorted(REPO.glob('nbs/*.ipynb'))   # the lessons, the tour and the index

def test_there_are_lessons(): assert len(LESSONS) > 20

def _first(p): return ''.join(json.loads(p.read_text(encoding='utf-8'))['cells'][0]['source'])

def test_first_cell_is_title_and_subtitle_only():
    # nbdev turns the first markdown cell into the page's front matter and drops the cell: prose there never reaches
    # the site, and a `- key: value` line in it would become a front-matter key
    bad = [p.name for p in LESSONS if not re.fullmatch(r'# [^\n]+\n\n> [^\n]+\n?', _first(p))]
    assert not bad, f"keep only '# Title' and '> subtitle' in the first cell of {bad}; move the rest to the next cell"

def test_front_matter_is_title_and_description():
    for p in LESSONS: assert set(_md2dict(_first(p))) == {'title', 'description'}, p.name

def test_the_check_would_catch_prose_in_the_title_cell():
    s = "# T\n\n> sub\n\nProse a reader would lose.\n\n- a list: with a colon"
    assert not re.fullmatch(r'# [^\n]+\n\n> [^\n]+\n?', s) and 'a list' in _md2dict(s)
