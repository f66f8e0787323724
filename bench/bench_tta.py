"""Time to accuracy: how many minutes of training on this machine until the model is good.

    python bench/bench_tta.py --data ../shared/data/pets128                       # the CPU preset, every core
    python bench/bench_tta.py --data ../shared/data/pets128 --epochs 24 --progressive 0.5
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_tta.py ...  # as an AVX2-only CPU

It trains one run exactly as `unet-compare` does (`experiments.train_one`: experiment 1 with the CPU preset unless
options change it, the failed trimaps left out, the validation split of `get_dls`), then prints one line per epoch
with the minutes spent so far (training and validation, from the run's history; loading the data is not counted) and
the validation IoU, then `minutes to IoU 0.75 X` and `minutes to IoU 0.80 X` (the first epoch whose validation IoU
reaches it; `not reached` otherwise), and only then the test IoU, measured once on the official test split with the
best checkpoint. The first lines name the CPU, PyTorch's view of it (`cpu_kind`), the threads and the load average:
run it on an otherwise idle machine, and keep its output (e.g. `| tee results/bench/tta_KIND.txt`).
"""
import argparse, json, os, platform, shlex, sys, tempfile, time
from pathlib import Path

import torch

from unet_tutorial.config import CPU
from unet_tutorial.core import cpu_kind, get_device
from unet_tutorial.experiments import train_one
from unet_tutorial.loaders import dls_for

TARGETS = (0.75, 0.80)


def cpu_name() -> str:
    "The CPU's model name as the kernel reports it (platform.processor() is empty on Linux)."
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def minutes_to(history, target) -> float | None:
    "Minutes of training and validation until the first epoch whose validation IoU is at least `target` (None: never)."
    spent = 0.
    for row in history:
        spent += row['seconds']
        if row['iou'] >= target: return spent / 60
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', default='../shared/data/pets128', help='a folder holding oxford-iiit-pet/')
    p.add_argument('--threads', type=int, default=None, help='PyTorch CPU threads, fixed for the run (default: one per core)')
    p.add_argument('--experiment', type=int, default=1)
    for k in ('epochs', 'size', 'width', 'batch_size', 'limit', 'seed'):
        p.add_argument(f"--{k.replace('_', '-')}", dest=k, type=int, default=None, help="default: the CPU preset's")
    for k in ('lr', 'progressive'):
        p.add_argument(f'--{k}', type=float, default=None, help="default: the CPU preset's")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads or os.cpu_count())
    over = {k: getattr(a, k) for k in ('epochs', 'size', 'width', 'batch_size', 'limit', 'seed', 'lr', 'progressive')
            if getattr(a, k) is not None}
    cfg = CPU.replace(experiment=a.experiment, device='cpu', **over)
    print('$ python bench/bench_tta.py ' + shlex.join(sys.argv[1:] if argv is None else argv))
    print(f'cpu: {cpu_name()} | {os.cpu_count()} cores | {cpu_kind()} | torch {torch.__version__} | '
          f'threads {torch.get_num_threads()} | load average {os.getloadavg()[0]:.2f} at the start')
    small = round(cfg.progressive * cfg.epochs)
    print(f'run: experiment {cfg.experiment}, width {cfg.width}, {cfg.size} px, batch {cfg.batch_size}, {cfg.epochs} epochs'
          f"{f' ({small} at {cfg.size // 2} px)' if small else ''}, {cfg.schedule or 'constant'} lr {cfg.lr:g}, seed {cfg.seed}")
    dls = dls_for(cfg, a.data, get_device('cpu'))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        rec = train_one(cfg, dls, Path(d)/'run', progress=False, device=get_device('cpu'), threads=torch.get_num_threads())
        wall = time.perf_counter() - t0
        hist = json.loads((Path(d)/'run'/'history.json').read_text())
    print(f'{dls.train.n} training, {dls.valid.n} validation, {dls.test.n} test images')
    spent = 0.
    for row in hist:
        spent += row['seconds']
        print(f"epoch {row['epoch']:2d}  {spent / 60:5.2f} min  valid IoU {row['iou']:.4f}  "
              f"{row['images_per_s']:6.1f} training images/s")
    for t in TARGETS:
        m = minutes_to(hist, t)
        print(f'minutes to IoU {t:.2f} ' + ('not reached' if m is None else f'{m:.2f}'))
    print(f"test IoU {rec['test']['iou']:.4f} | pixel accuracy {rec['test']['pixel_accuracy']:.4f} "
          f"(best checkpoint by validation IoU, {dls.test.n} test images)")
    print(f'{wall / 60:.2f} min in all (training, validation, test) | load average {os.getloadavg()[0]:.2f} at the end')


if __name__ == '__main__':
    main()
