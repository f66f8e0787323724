"""Package a finished run's best model as the course's reference model (fp16, with its record).

    python tools/make_reference.py RUN_DIR --command "unet-compare ..."

RUN_DIR is a finished run's folder (best.pt and metrics.json), e.g. results/cpu/maxpool_transpose_bce/seed0.
Writes unet_tutorial/weights/pets_reference.pt (refused above 4 MiB) and a readable copy of its record,
unet_tutorial/weights/pets_reference.json. Then run `pytest tests/test_reference.py`: it checks that the packaged
model scores its recorded test IoU (within 0.01) on the real test split.
"""
import argparse, json, sys
from pathlib import Path

import torch
from unet_tutorial.checkpoints import atomic_save
from unet_tutorial.reference import make_reference

root = Path(__file__).resolve().parent.parent
p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
p.add_argument('run_dir', help='a finished run: best.pt and metrics.json')
p.add_argument('--command', required=True, help='the command that trained the run, for the record')
p.add_argument('--out', default=str(root/'unet_tutorial'/'weights'/'pets_reference.pt'))
a = p.parse_args()
try: out = make_reference(a.run_dir, a.out, command=a.command)   # the old file is replaced only by a good one
except (ValueError, OSError) as e: sys.exit(f"make_reference.py: error: {e}")   # BadInput and CheckpointError too
rec = torch.load(out, weights_only=True)['record']
atomic_save(json.dumps(rec, indent=1) + '\n', Path(out).with_suffix('.json'))
print(f"{out}: {out.stat().st_size / 2**20:.2f} MiB, {rec['label']}, seed {rec['seed']}, test IoU {rec['test']['iou']:.4f}, "
      f"pixel accuracy {rec['test']['pixel_accuracy']:.4f}")
