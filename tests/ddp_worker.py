"""One worker of the torchrun launches of tests/test_distributed.py:

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py CONFIG_JSON ROOT OUT TENSORBOARD_OR_- [STOP_AFTER]

trains with `train_distributed` (stopping after epoch STOP_AFTER when given) and writes `$DDP_WROTE/<rank>.json`, a list of
every file or folder this process created, renamed, linked or removed, or opened for writing, under OUT, TENSORBOARD and
the tensor cache ($UNET_TUTORIAL_CACHE), as Python's audit hooks see them (an `atomic_write` ends in a rename). A file
each, not a line of stdout: the workers share torchrun's stdout, and two prints can land on one line."""
import json, os, sys

import torch

from unet_tutorial.callbacks import Callback
from unet_tutorial.config import RunConfig
from unet_tutorial.distributed import rank, train_distributed

torch.set_num_threads(1)
cfg, root, out = RunConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], sys.argv[3]
tb = None if sys.argv[4] == '-' else sys.argv[4]
stop_after = int(sys.argv[5]) if len(sys.argv) > 5 else None
watched = tuple(os.path.abspath(p) for p in (out, tb, os.environ['UNET_TUTORIAL_CACHE']) if p)
wrote = set()

def _writes(mode, flags):
    if isinstance(mode, str) and any(c in mode for c in 'wax+'): return True
    return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))

def audit(event, args):
    if event == 'open': paths = [args[0]] if _writes(args[1], args[2]) else []
    elif event in ('os.rename', 'os.link'): paths = [args[1]]
    elif event in ('os.mkdir', 'os.remove', 'os.rmdir'): paths = [args[0]]
    else: return
    for p in paths:
        if isinstance(p, (str, bytes, os.PathLike)):
            p = os.path.abspath(os.fsdecode(p))
            if p.startswith(watched): wrote.add(p)

class StopAfter(Callback):
    "Ask for a stop after epoch `n` (on every process, as a signal would)."
    def __init__(self, n): self.n = n
    def after_epoch(self, t):
        if t.epoch == self.n: t.request_stop()

sys.addaudithook(audit)
train_distributed(cfg, root, out, tb, cbs=[StopAfter(stop_after)] if stop_after else ())
report = sorted(wrote)   # taken before the report itself is written (outside the watched folders anyway)
with open(os.path.join(os.environ['DDP_WROTE'], f'{rank()}.json'), 'w') as f: json.dump(report, f)
