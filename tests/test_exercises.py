"""Every lesson's exercises check themselves (issue 14): the shape that `nbdev_test` relies on to run the solutions.

A lesson with an `## Exercises` heading must have, in that section, at least two checking cells (`check(` from
`unet_tutorial.core`) and, for each, a solution cell that starts with `#| code-fold: true`, is hidden in Jupyter
(`{"jupyter": {"source_hidden": true}}`) and calls `check(..., strict=True)`, so that running the notebook under the
tests fails when a check and its solution drift apart. The committed outputs are a fresh run's (issue 22): an
untouched stub prints nothing and its check prints "no answer yet", never an answer or a verdict.
Reads the notebooks only; runs nothing.
"""
import json, re
from pathlib import Path

import pytest

NBS = Path(__file__).resolve().parent.parent/'nbs'
FOLD = '#| code-fold: true'

# Lessons whose exercises are still a plain list. Every lesson is converted; a new lesson may be listed here while
# its exercises are written: `test_allow_list_shrinks` fails while a converted lesson is still listed.
NOT_YET_CONVERTED = set()

def _lessons(): return sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith('_'))

def _src(cell): return ''.join(cell['source'])

def exercise_cells(path):
    "The cells of the `## Exercises` section of the notebook at `path` (up to the next `## ` heading), or None."
    cells, out = json.loads(Path(path).read_text())['cells'], None
    for c in cells:
        heading = c['cell_type'] == 'markdown' and re.search(r'^## ', _src(c), re.M)
        if out is None:
            if c['cell_type'] == 'markdown' and re.search(r'^## Exercises\s*$', _src(c), re.M): out = []
        elif heading: break
        else: out.append(c)
    return out

def problems(path):
    "What is wrong with the exercises of the notebook at `path` ([] when nothing, or when it has none)."
    cells = exercise_cells(path)
    if cells is None: return []
    code = [c for c in cells if c['cell_type'] == 'code']
    solutions = [c for c in code if _src(c).startswith(FOLD)]
    checks = [c for c in code if 'check(' in _src(c) and c not in solutions]
    errs = []
    if len(checks) < 2: errs.append(f'{len(checks)} exercise check(s); at least 2 are needed')
    if len(solutions) != len(checks): errs.append(f'{len(checks)} checking cells but {len(solutions)} solution cells')
    for c in code:
        s = _src(c)
        if FOLD in s and c not in solutions: errs.append(f'cell {c.get("id")}: `{FOLD}` must be its first line')
        if c in checks and 'strict=True' in s: errs.append(f'cell {c.get("id")}: a learner\'s check must not be strict')
    for c in solutions:
        s = _src(c)
        if not c.get('metadata', {}).get('jupyter', {}).get('source_hidden'):
            errs.append(f'solution {c.get("id")}: no {{"jupyter": {{"source_hidden": true}}}} metadata')
        if not re.search(r'check\(.*strict=True', s, re.S): errs.append(f'solution {c.get("id")}: no check(..., strict=True)')
    return errs

@pytest.mark.parametrize('path', _lessons(), ids=lambda p: p.name)
def test_exercises_check_themselves(path):
    if path.name in NOT_YET_CONVERTED: pytest.skip('in the allow-list of lessons not converted yet')
    assert problems(path) == [], f'{path.name}: ' + '; '.join(problems(path))

def test_allow_list_shrinks():
    names = {p.name for p in _lessons()}
    assert NOT_YET_CONVERTED <= names, f'not lessons (any more): {sorted(NOT_YET_CONVERTED - names)}'
    done = sorted(n for n in NOT_YET_CONVERTED if exercise_cells(NBS/n) is not None and not problems(NBS/n))
    assert not done, f'converted: remove {done} from NOT_YET_CONVERTED'

def test_the_rule_itself(tmp_path):
    "A made-up lesson: the good shape passes, and each way of breaking it is named."
    def cell(kind, src, hidden=False):
        return dict(cell_type=kind, id='x', metadata={'jupyter': {'source_hidden': True}} if hidden else {}, source=src)
    ex = lambda sol, hidden=True: [cell('markdown', 'stmt'), cell('code', 'def f(): return ...'),
                                   cell('code', 'check(lambda: f(), 1)'), cell('code', sol, hidden)]
    good = f'{FOLD}\ndef f(): return 1\ncheck(lambda: f(), 1, strict=True)'
    def nb(*cells, heading='## Exercises'):
        p = tmp_path/'nb.ipynb'; p.write_text(json.dumps(dict(cells=[cell('markdown', '# T'), cell('markdown', heading), *cells])))
        return problems(p)
    assert nb(*ex(good), *ex(good)) == []
    assert 'at least 2' in ' '.join(nb(*ex(good)))
    assert 'source_hidden' in ' '.join(nb(*ex(good), *ex(good, hidden=False)))
    assert 'strict=True' in ' '.join(nb(*ex(good), *ex(good.replace(', strict=True', ''))))
    assert 'first line' in ' '.join(nb(*ex(good), *ex('# the solution\n' + good)))
    assert nb(*ex(good), heading='## Exercises that check themselves') == []   # not the section: not held to the rule
    assert nb(*ex(good), *ex(good), cell('markdown', '## Next'), cell('code', 'check(1, 1)')) == []   # the section ends

def _printed(cell):
    "The text a code cell's committed outputs show (streams, results, errors)."
    out = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'error': out.append(f"{o.get('ename')}: {o.get('evalue')}")
        out.append(''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', '')))
    return ''.join(out)

def unanswered_problems(path):
    "Where the committed outputs of the exercises of `path` are not what a fresh, unanswered run prints ([] if none)."
    from unet_tutorial.core import _NO_ANSWER
    cells = exercise_cells(path) or []
    code = [c for c in cells if c['cell_type'] == 'code' and not _src(c).startswith(FOLD)]
    errs = []
    for c in code:
        s, shown = _src(c), _printed(c)
        if 'check(' in s:   # the learner's check of an untouched stub: only "no answer yet", no verdict, no error
            lines = shown.splitlines()
            verdicts = [l for l in lines if l == 'correct' or l.startswith('not yet')]
            if verdicts or any(o.get('output_type') == 'error' for o in c.get('outputs', [])):
                errs.append(f'check cell {c.get("id")} shows {verdicts or shown[:80]!r}, a stub prints {_NO_ANSWER!r}')
            elif _NO_ANSWER not in lines: errs.append(f'check cell {c.get("id")} does not show {_NO_ANSWER!r}: re-run the lesson')
        elif 'your code here' in s and shown:   # a stub only defines: a fresh run prints nothing
            errs.append(f'stub {c.get("id")} shows {shown[:80]!r}: a fresh run of the stub prints nothing')
    return errs

@pytest.mark.parametrize('path', _lessons(), ids=lambda p: p.name)
def test_committed_exercises_are_unanswered(path):
    "The saved outputs of the stubs and their checks are a fresh run's, not a run with the answers filled in."
    assert unanswered_problems(path) == [], f'{path.name}: ' + '; '.join(unanswered_problems(path))

def test_the_unanswered_rule_itself(tmp_path):
    "A made-up lesson: the unanswered outputs pass; an answer, a verdict, an error or no output at all are named."
    from unet_tutorial.core import _NO_ANSWER
    said = lambda text: [dict(output_type='stream', name='stdout', text=[text])]
    def nb(stub_out=(), check_out=None):
        cells = [dict(cell_type='markdown', id='h', metadata={}, source='## Exercises'),
                 dict(cell_type='code', id='stub', metadata={}, outputs=list(stub_out), source='def f(): return ...  # your code here'),
                 dict(cell_type='code', id='chk', metadata={}, source='check(lambda: f(), 1)',
                      outputs=said(_NO_ANSWER + '\n') if check_out is None else check_out),
                 dict(cell_type='code', id='sol', metadata={}, outputs=said('correct\n'), source=f'{FOLD}\ncheck(f(), 1, strict=True)')]
        p = tmp_path/'nb.ipynb'; p.write_text(json.dumps(dict(cells=cells)))
        return ' '.join(unanswered_problems(p))
    assert nb() == ''
    assert 'stub stub' in nb(stub_out=said('[10, 10, 13, 10, 16]\n'))
    assert "['correct']" in nb(check_out=said('correct\n'))
    assert 'not yet' in nb(check_out=said('not yet: ==: [Ellipsis] [2, 4, 4, 5]\n'))
    assert 'chk' in nb(check_out=[dict(output_type='error', ename='NameError', evalue='f', traceback=[])])
    assert 're-run' in nb(check_out=[])
