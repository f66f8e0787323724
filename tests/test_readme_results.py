"""The landing page quotes each comparison's generated report (tools/make_readme.py, issue 22): the block between
`<!-- results: FILE -->` and `<!-- /results -->` is that report's table, its note and its analysis, refreshed from the
file, so a verdict the report no longer says (a speed, a stale number) cannot stay on the page."""
import importlib.util, json

from conftest import REPO

spec = importlib.util.spec_from_file_location('make_readme', REPO/'tools'/'make_readme.py')
mr = importlib.util.module_from_spec(spec); spec.loader.exec_module(mr)

MD = """# U-Net comparison

Data: something.

| a | b |
|---|---|
| 1 | 2 |

A note on the clocks.

## The original project's numbers

| x |
|---|

## Analysis

Ranked by test IoU: experiment 1 (0.800).

**A verdict** with its interval.
"""


def test_the_excerpt_is_the_table_the_note_and_the_analysis():
    ex = mr.report_excerpt(MD)
    assert ex.startswith('| a | b |\n|---|---|\n| 1 | 2 |\n\nA note on the clocks.\n\n')
    assert ex.endswith('Ranked by test IoU: experiment 1 (0.800).\n\n**A verdict** with its interval.\n')
    assert 'Data:' not in ex and "original project" not in ex and '| x |' not in ex


def test_a_stale_block_is_refreshed_and_a_fresh_one_left_alone(tmp_path, monkeypatch):
    (tmp_path/'r.md').write_text(MD)
    monkeypatch.setattr(mr, 'root', tmp_path)
    nb = dict(cells=[dict(cell_type='markdown', source=['Before.\n', '<!-- results: r.md -->\n', 'speed 41 vs 38\n',
                                                           '<!-- /results -->\n', 'After.'])])
    assert mr.sync_results(nb) is True
    s = ''.join(nb['cells'][0]['source'])
    assert 'speed 41' not in s and '**A verdict**' in s and s.startswith('Before.\n') and s.endswith('<!-- /results -->\nAfter.')
    assert mr.sync_results(json.loads(json.dumps(nb))) is False


def test_the_landing_page_is_in_sync_with_its_reports():
    nb = json.loads((REPO/'nbs'/'index.ipynb').read_text())
    assert any('<!-- results: ' in ''.join(c['source']) for c in nb['cells'])
    assert mr.sync_results(nb) is False, 'run `python tools/make_readme.py`'
