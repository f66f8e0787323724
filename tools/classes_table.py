"""results/classes3/classes.md: the three-class runs' table (lesson 22's `class_results_table`) and, under it, the
binary comparison's pet IoU for the same experiment and preset (results/fast), which the landing page quotes.

    python tools/classes_table.py
"""
import json, sys
from pathlib import Path
from statistics import mean, stdev

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from unet_tutorial.classes import class_results_table  # noqa: E402

out = ROOT/'results'/'classes3'
table = class_results_table(out)
if table is None: sys.exit(f'{out}/results.json does not exist: run the three-class comparison first')
names = [r['name'] for r in json.loads((out/'results.json').read_text())['runs']]
lines = []
for n in dict.fromkeys(names):
    ious = {int(f.parent.name[4:]): json.loads(f.read_text())['test']['iou'] for f in sorted((ROOT/'results'/'fast'/n).glob('seed*/metrics.json'))}
    if ious:
        v = list(ious.values())
        lines.append(f"The binary model of the same experiment and preset (the border counted as background, `results/fast`), "
                     f"seed{'s' * (len(v) > 1)} {', '.join(map(str, ious))}: pet IoU "
                     + (f"{mean(v):.3f} ± {stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}") + '.')
text = '# Three classes on the pets (background, pet, border)\n\n' + table + '\n\n' + ' '.join(lines) + '\n'
(out/'classes.md').write_text(text)
print(text)
