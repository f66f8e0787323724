"""Run `nbdev_test` on each notebook in turn and print the counts (CI cannot read them from nbdev_test itself).

`python .ci/nbtest.py` runs them and exits non-zero if any fails; `--summary` prints the last run's counts again
together with pytest's, as CI's closing line.
"""
import json, subprocess, sys, time
from pathlib import Path

root = Path(__file__).resolve().parent.parent
record = root/'.ci'/'.last_nbtest.json'

if '--summary' in sys.argv:
    import xml.etree.ElementTree as ET
    r = json.loads(record.read_text()) if record.exists() else {'passed': 0, 'failed': 0}
    print(f"notebooks: {r['passed']} passed, {r['failed']} failed")
    p = f = s = 0
    junit = root/'.ci'/'.pytest.xml'
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
        tot, f, s = (int(suite.get(k, 0)) for k in ('tests', 'failures', 'skipped'))
        f += int(suite.get('errors', 0)); p = tot - f - s
    print(f"pytest: {p} passed, {f} failed, {s} skipped")
    print(f"total: {r['passed'] + p} passed, {r['failed'] + f} failed, {s} skipped")
    sys.exit(0)

nbs = sorted(p for p in (root/'nbs').glob('*.ipynb') if not p.name.startswith('_'))
passed, failed = [], []
for nb in nbs:
    t = time.time()
    res = subprocess.run(['nbdev_test', '--path', str(nb), '--do_print'], cwd=root, capture_output=True, text=True)
    dt = time.time() - t
    ok = res.returncode == 0
    (passed if ok else failed).append(nb.name)
    print(f"{'PASS' if ok else 'FAIL'}  {nb.name:28s} {dt:6.1f}s", flush=True)
    if not ok: print(res.stdout[-6000:], res.stderr[-6000:], sep='\n')
record.write_text(json.dumps({'passed': len(passed), 'failed': len(failed)}))
print(f"notebooks: {len(passed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
