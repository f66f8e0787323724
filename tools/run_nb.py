"""Execute notebooks in place so that their committed outputs come from a real run.

    python tools/run_nb.py nbs/01_data.ipynb [more.ipynb ...] [--skip cuda] [--timeout-cell]

Cells run in order with the notebook's folder as working directory and without IN_TEST (full settings, real data
where it is found). Cells whose flags are listed in --skip (default: `cuda` when no GPU is present) are not run and
keep the outputs they had, so a GPU result saved earlier is never replaced by a CPU one. Stops at the first error.
Run `nbdev_clean` afterwards (the hook and CI check that notebooks are clean).
"""
import os, sys, time
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory

def _directives(src):
    "The `#| name value` lines at the top of a cell, as {name: value}"
    out = {}
    for l in src.splitlines():
        if not l.startswith('#|'): break
        k, *v = l[2:].split(maxsplit=1)
        out[k] = v[0].strip() if v else ''
    return out

def run(fn, skip):
    fn = Path(fn).resolve()
    nb = read_nb(fn)
    def _skip(cell):
        if cell.cell_type != 'code': return True
        if 'nbdev_export' + '(' in cell.source: return True
        d = _directives(cell.source)
        if d.get('eval:', '').lower() == 'false': return True
        if set(skip) & set(d):
            print(f'  skipped (flag {sorted(set(skip) & set(d))}): {cell.source.splitlines()[0][:60]}')
            return True
        cell.outputs = []
        return False
    os.environ.pop('IN_TEST', None)
    sh = CaptureShell(fn)
    t = time.time()
    with working_directory(fn.parent):
        sh.run_all(nb, exc_stop=True, preproc=_skip)
    write_nb(nb, fn)
    print(f'{fn.name}: executed in {time.time() - t:.1f}s')

if __name__ == '__main__':
    args = sys.argv[1:]
    skip = []
    if '--skip' in args:
        i = args.index('--skip'); skip = args[i + 1].split(','); del args[i:i + 2]
    else:
        import torch
        if not torch.cuda.is_available(): skip = ['cuda']
    for f in args: run(f, skip)
