"The course's shape, as issue 21 set it: lessons a learner can read, cells that hold one idea, modules with one job."
import ast, json, re
from conftest import REPO

LESSONS = sorted(REPO.glob('nbs/[0-9]*.ipynb'))        # the numbered lessons (the appendix A* may be longer)
MAX_CELLS, MAX_DEFS, MAX_LINES, MAX_MODULE = 60, 2, 31, 300

def _cells(p): return json.loads(p.read_text(encoding='utf-8'))['cells']

def _exported(p):
    for i, c in enumerate(_cells(p)):
        s = ''.join(c['source'])
        if c['cell_type'] == 'code' and re.match(r'#\|\s*export', s): yield i, s

def _defs(src:str) -> list:
    "Top-level functions and classes a cell defines (a `@patch`ed method counts as one)."
    body = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith('#|'))
    return [n.name for n in ast.parse(body).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]

def test_there_are_lessons(): assert len(LESSONS) > 20

def test_no_lesson_over_60_cells():
    long = {p.stem: len(_cells(p)) for p in LESSONS if len(_cells(p)) > MAX_CELLS}
    assert not long, f"move edge-case tests to tests/ or join cells: {long}"

def test_exported_cells_hold_one_idea():
    bad = [(p.stem, i, len(s.splitlines()), _defs(s)) for p in sorted(REPO.glob('nbs/*.ipynb')) for i, s in _exported(p)
           if len(_defs(s)) > MAX_DEFS or len(s.splitlines()) > MAX_LINES]
    assert not bad, f"split these exported cells (lesson, cell, lines, definitions): {bad}"

def test_modules_are_at_most_300_lines_with_a_docstring():
    for p in sorted(REPO.glob('unet_tutorial/*.py')):
        if p.name in ('_modidx.py', '__init__.py'): continue
        text = p.read_text(encoding='utf-8')
        assert len(text.splitlines()) <= MAX_MODULE, f"{p.name}: {len(text.splitlines())} lines: split it by job"
        assert ast.get_docstring(ast.parse(text)), f"{p.name} has no docstring stating its job"

def test_the_checks_would_catch_a_long_cell():
    three = "#| export\ndef a(): pass\n\ndef b(): pass\n\n@patch\ndef c(self:X): pass\n"
    assert _defs(three) == ['a', 'b', 'c'] and len(_defs(three)) > MAX_DEFS
