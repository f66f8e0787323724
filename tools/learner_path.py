"""Run the lessons the way a learner does: `pip install unet_tutorial` in a fresh environment, lessons in any folder.

    python tools/learner_path.py [--wheel dist/x.whl] [--venv DIR] [--full 01,02,03,07] [--only 01,07]

1. builds the wheel (or takes --wheel), 2. makes a fresh virtual environment OUTSIDE the checkout (default: a new
temporary folder; --venv DIR reuses DIR if it has a python, for repeated local runs) holding only that wheel and the
notebook runner `nbclient` with the `ipykernel` kernel, 3. copies the lessons `nbs/NN*_*.ipynb` (00a, 03b, ... too) into an empty temporary folder outside the checkout,
4. executes every lesson there exactly as Jupyter's Run All does: `nbclient` with a real `ipykernel` kernel, a fresh
kernel per lesson, every code cell in order and no `#|` directive honoured (a GPU-only cell must skip itself on a
CPU, and a cell of more than a few minutes runs only when its lesson's `RUN_LONG` switch is turned on), first with
the test settings (IN_TEST=1), then the --full lessons (default 01, 02, 03, 07) with IN_TEST unset, the settings a
learner gets.
`UNET_TUTORIAL_DATA` points at `../shared/data/pets128` beside the checkout when it exists; elsewhere the lessons use
their synthetic fallbacks. 5. checks what a user of the package gets: the wheel holds the reference model, and the
venv's `unet-predict --help`, `unet-train --help` and `unet-compare --quick` work (`--cli-only`: only steps 1, 2 and 5).
Prints a PASS/FAIL line per run with its time and the cells that said they skipped their work, and the counts; a failure names the lesson and the cell (its first lines and the
error). Exit status 1 if any run fails.
"""
import argparse, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

RUNNER = r'''
import json, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

# Jupyter's Run All: a real ipykernel kernel, every code cell in order, `#|` directives not read (they are comments)
fn = Path(sys.argv[1]).resolve()
import unet_tutorial
where = Path(unet_tutorial.__file__).resolve()
if 'site-packages' not in where.parts: sys.exit(f'unet_tutorial imported from {where}, not from the installed wheel')
nb = nbformat.read(fn, as_version=4)
client = NotebookClient(nb, kernel_name='python3', timeout=1800, resources={'metadata': {'path': str(fn.parent)}})
try: client.execute()
except CellExecutionError as e:
    i, c = next(((i, c) for i, c in enumerate(nb.cells) if c.cell_type == 'code'
                 and any(o.get('output_type') == 'error' for o in c.get('outputs', []))), (None, None))
    if c is None: print(f'{fn.name}: failed outside a cell: {str(e)[-3000:]}'); sys.exit(1)
    err = next(o for o in c.outputs if o.get('output_type') == 'error')
    head = '\n'.join('    | ' + l for l in c.source.splitlines()[:6])
    print(f"{fn.name}: cell {i} (0-based, markdown cells counted) failed: {err['ename']}: {err['evalue']}\n"
          f"  cell {i} source (head):\n{head}\n  error (tail):\n{str(e)[-3000:]}")
    sys.exit(1)
def said(c): return ''.join(o.get('text', '') for o in c.get('outputs', []) if o.get('output_type') == 'stream')
skips = [(i, said(c).strip().splitlines()[0]) for i, c in enumerate(nb.cells) if c.cell_type == 'code'
         and any(k in said(c) for k in ('No GPU here', 'RUN_LONG is False'))]
print(f"ran all {sum(c.cell_type == 'code' for c in nb.cells)} code cells; cells that skipped their work: "
      + ('; '.join(f'{i}: {l[:100]}' for i, l in skips) or 'none'))
'''

def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, **kw)

REFERENCE = 'unet_tutorial/weights/pets_reference.pt'

def package_checks(wheel, venv, work, env):
    "The checks of what a user of the wheel gets: [(label, ok, output)] for the reference model and the console scripts."
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    res = [(f'wheel holds {REFERENCE}', REFERENCE in names, '' if REFERENCE in names else
            f'{Path(wheel).name} lacks {REFERENCE}: check package_data in settings.ini and MANIFEST.in')]
    bin_, out = Path(venv)/'bin', Path(work)/'quick'
    for label, cmd in (('unet-predict --help', [bin_/'unet-predict', '--help']),
                       ('unet-train --help', [bin_/'unet-train', '--help']),
                       ('unet-compare --quick', [bin_/'unet-compare', '--quick', '--out', out])):
        try: r = subprocess.run([str(c) for c in cmd], env=env, cwd=work, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e: res.append((label, False, f'{type(e).__name__}: {e}')); continue
        ok = r.returncode == 0 and (label != 'unet-compare --quick' or (out/'results.json').is_file())
        res.append((label, ok, '' if ok else f'exit status {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}'))
    return res

def main():
    root = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--wheel', help='the wheel to install (default: build one)')
    p.add_argument('--venv', help='virtual environment folder outside the checkout (default: a new temporary one)')
    p.add_argument('--full', default='01,02,03,07', help='lessons also run with IN_TEST unset')
    p.add_argument('--only', default='', help='run only these lessons (default: all)')
    p.add_argument('--cli-only', action='store_true', help='no lessons: only the wheel and console-script checks')
    a = p.parse_args()
    t0, work = time.time(), Path(tempfile.mkdtemp(prefix='unet_learner_'))
    print(f'learner path: work folder {work}')
    if a.wheel: wheel = Path(a.wheel).resolve()
    else:
        sh(sys.executable, '-m', 'build', '--wheel', '--no-isolation', '-o', work/'dist', root,
           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wheel = next((work/'dist').glob('unet_tutorial-*.whl'))
    venv = Path(a.venv).resolve() if a.venv else work/'venv'
    for d in (venv, work):
        if d == root or root in d.parents: sys.exit(f'{d} is inside the checkout {root}: use a folder outside it')
    py = venv/'bin'/'python'
    if not py.exists(): sh(sys.executable, '-m', 'venv', venv)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'IN_TEST', 'VIRTUAL_ENV', 'UNET_TUTORIAL_DATA')}
    env['PIP_DISABLE_PIP_VERSION_CHECK'] = '1'
    t = time.time()
    # the wheel alone (its own requirements come from the registry) and Jupyter's runner and kernel; nothing from the repo
    for args in (['--force-reinstall', '--no-deps', wheel], [wheel, 'nbclient', 'ipykernel']):
        r = subprocess.run([py, '-m', 'pip', 'install', '-q', *args], env=env, cwd=work, capture_output=True, text=True)
        if r.returncode: print(r.stdout[-4000:], r.stderr[-4000:], sep='\n'); sys.exit('pip install failed')
    print(f'installed {wheel.name}, nbclient and ipykernel into {venv} in {time.time() - t:.0f}s')
    gpu = subprocess.run([py, '-c', 'import torch; print(torch.cuda.is_available())'], env=env, cwd=work,
                         capture_output=True, text=True, check=True).stdout.strip() == 'True'

    lessons_dir = work/'lessons'; lessons_dir.mkdir()
    only = set(filter(None, a.only.split(',')))
    lessons = [nb for nb in [root/'nbs'/'tour.ipynb', *sorted((root/'nbs').glob('[0-9A-Z][0-9]*_*.ipynb'))]
               if not only or nb.name[:2] in only]   # the tour first, then 00_core ... A2_cli
    if a.cli_only: lessons = []
    for nb in lessons: shutil.copy(nb, lessons_dir/nb.name)
    (work/'runner.py').write_text(RUNNER)
    data = (root.parent/'shared'/'data'/'pets128').resolve()
    if data.is_dir(): env['UNET_TUTORIAL_DATA'] = str(data); print('data: the real Oxford-IIIT Pet copy beside the checkout')
    else: print("data: none beside the checkout, the lessons use their synthetic fallbacks")
    print("lessons run as Jupyter's Run All does: nbclient, a real ipykernel kernel, no `#|` directive skipped"
          f"{' (a GPU is present)' if gpu else ' (no GPU here: the GPU cells must skip themselves)'}")

    full = set(filter(None, a.full.split(',')))
    runs = [(nb, True) for nb in lessons] + [(nb, False) for nb in lessons if nb.name[:2] in full]
    passed, failed = [], []
    for nb, in_test in runs:
        e = dict(env, IN_TEST='1') if in_test else env
        label = f"{nb.name} ({'IN_TEST=1' if in_test else 'learner settings'})"
        t = time.time()
        r = subprocess.run([py, work/'runner.py', lessons_dir/nb.name], env=e, cwd=lessons_dir,
                           capture_output=True, text=True)
        ok = r.returncode == 0
        (passed if ok else failed).append(label)
        print(f"{'PASS' if ok else 'FAIL'}  {label:48s} {time.time() - t:6.1f}s", flush=True)
        if ok: print('      ' + (r.stdout.strip().splitlines() or [''])[-1][:400], flush=True)
        else: print(r.stdout[-8000:], r.stderr[-4000:], sep='\n', flush=True)
    for label, ok, why in package_checks(wheel, venv, work, env):   # after the lessons: what `pip install` gives
        (passed if ok else failed).append(label)
        print(f"{'PASS' if ok else 'FAIL'}  {label}", flush=True)
        if not ok: print(why, flush=True)
    print(f'learner path: {len(passed)} passed, {len(failed)} failed in {time.time() - t0:.0f}s')
    for f in failed: print(f'  FAILED {f}')
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)

if __name__ == '__main__': main()
