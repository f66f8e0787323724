"""Training throughput: our `Trainer` against the original project's training loop, same data, model and device, in one process.

    python bench/bench_train.py --data ../shared/data/pets128 --device cpu --size 64 --width 8 --limit 320
    python bench/bench_train.py --data ../shared/data/pets128 --device cuda --size 128 --width 64 --batch-size 64

Both train the same U-Net (experiment 1: max-pool + transposed convolution, weighted BCE; the same initial weights)
with Adam 1e-3 on the same training images, for the same number of epochs:

- baseline, the original project's way: torchvision's `OxfordIIITPet` decoding and resizing each JPEG and trimap with PIL on every
  item of every epoch (random crop + flip), through a `DataLoader` with `--workers` workers; fp16 autocast with a
  `GradScaler` on CUDA (plain fp32 on the CPU, as the original project's `autocast('cuda')` does nothing there); contiguous
  (NCHW) memory format; `loss.item()` on every step.
- ours: `Trainer` with the cached uint8 tensors held on the device (`load_cached` + `TensorLoader`, augmentation on
  the device), its AMP policy (bf16 on a GPU that has it, and on a CPU with native bf16 (AVX512-BF16 or AMX); fp32
  on other CPUs), channels_last (CUDA and CPU), cudnn.benchmark and fused Adam on CUDA, the loss kept on the
  device; `--compile` adds `torch.compile`.
- the same trainer in plain fp32 with the NCHW memory format, and in fp32 with channels_last, so that each part of
  the gain shows: data pipeline (fp32 vs baseline), memory format, then precision (default vs fp32 + channels_last).

Images/s counts training steps only (no validation), timed after the device has finished, averaged over the epochs
after the first (which pays for cuDNN's autotuning, compilation and worker start-up). The two loops alternate epoch
by epoch, so that a change in the machine's load affects both. The first line names the CPU kind (`cpu_kind()`: PyTorch's
vector instructions and whether bf16 is native), which decides the trainer's default on a CPU. The last line is
`speedup X`: ours (the default) over the baseline's images/s.
"""
import argparse, os, platform, random, time

import torch
from torch.utils.data import DataLoader, Subset

from unet_tutorial.data import check_pets_root, pets_dataset, read_split, split_trainval, trimap_to_mask
from unet_tutorial.loaders import DataLoaders, TensorLoader, load_cached
from unet_tutorial.losses import get_loss, pos_weight_from_masks
from unet_tutorial.model import build_model
from unet_tutorial.config import RunConfig
from unet_tutorial.core import set_seed
from unet_tutorial.core import cpu_kind
from unet_tutorial.trainer import Trainer


def baseline_epoch(model, dl, opt, scaler, loss_fn, device):
    "One epoch of the original project's loop; returns images/s (timed to the end of the last step)."
    model.train(); n, total, t0 = 0, 0., time.perf_counter()
    for x, y in dl:
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        with torch.autocast('cuda', dtype=torch.float16, enabled=device.type == 'cuda'):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
        total += loss.item(); n += len(x)  # the original project logs every step: a host sync per step
    if device.type == 'cuda': torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def baseline(a, root, train, pos_weight, device):
    "The original project's setup; returns a function that trains one epoch and gives its images/s."
    ds = pets_dataset(root, 'trainval', a.size, train=True)                # per-item PIL decode + v2 transforms
    order = {n: i for i, n in enumerate(read_split(root, 'trainval'))}     # the dataset's item order
    dl = DataLoader(Subset(ds, [order[n] for n in train]), batch_size=a.batch_size, shuffle=True,
                    num_workers=a.workers, drop_last=False)
    set_seed(0); model = build_model(1, width=a.width, depth=a.depth).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler('cuda', enabled=device.type == 'cuda')
    loss_fn = get_loss('bce', pos_weight=pos_weight)
    return lambda: baseline_epoch(model, dl, opt, scaler, loss_fn, device)


def ours(a, root, train, valid, pos_weight, device, amp='auto', channels_last=None):
    "Our `Trainer` on the cached tensors; returns (function that trains one more epoch and gives its images/s, trainer)."
    def loader(names, shuffle):
        ims, tris = load_cached(root, names, a.size)                         # uint8 tensors, decoded once
        masks = trimap_to_mask(tris)[:, None]                                # (N, 1, S, S)
        return TensorLoader(ims.to(device), masks.to(device), a.batch_size, shuffle, shuffle, device, seed=0)
    tl, vl = loader(train, True), loader(valid, False)
    dls = DataLoaders(tl, vl, vl, tl.masks)
    set_seed(0); model = build_model(1, width=a.width, depth=a.depth)
    cfg = RunConfig(device=str(device), amp=amp, channels_last=channels_last, batch_size=a.batch_size)
    t = Trainer(model, get_loss('bce', pos_weight=pos_weight), dls, cfg, compile=a.compile, cbs=())
    return (lambda: t.fit(t.epoch + 1)[-1]['images_per_s']), t   # `fit(n)` trains until n epochs are done


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', required=True, help='folder holding oxford-iiit-pet/')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda', 'mps'])
    p.add_argument('--size', type=int, default=128, help='image side')
    p.add_argument('--width', type=int, default=64, help="the U-Net's top-level channels")
    p.add_argument('--depth', type=int, default=4)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--epochs', type=int, default=3, help='epochs per loop; those after the first are reported')
    p.add_argument('--limit', type=int, default=None, help='train on this many images (default: the whole train split)')
    p.add_argument('--steps', type=int, default=None, help='steps per epoch (sets --limit to steps × batch size)')
    p.add_argument('--workers', type=int, default=min(4, os.cpu_count()), help="the baseline DataLoader's workers")
    p.add_argument('--threads', type=int, default=None, help="torch's CPU threads (default: torch's choice)")
    p.add_argument('--compile', action='store_true', help='torch.compile our model')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    if a.steps: a.limit = a.steps * a.batch_size
    if a.epochs < 1: p.error('--epochs must be at least 1')
    device, root = torch.device(a.device), check_pets_root(a.data)
    if device.type == 'cuda' and not torch.cuda.is_available(): p.error('--device cuda: no CUDA device here')

    train, valid = split_trainval(read_split(root, 'trainval'), 0.2, seed=42)
    if a.limit: train = sorted(random.Random(0).sample(train, min(a.limit, len(train))))
    valid = valid[:max(a.batch_size, len(train) // 8)]                      # ours validates each epoch: keep it short
    _, tris = load_cached(root, train, a.size)
    pos_weight = pos_weight_from_masks(trimap_to_mask(tris))
    cpu = f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {cpu_kind()}'
    hw = torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu
    print(f'device {device} ({hw}) | torch {torch.__version__} | threads {torch.get_num_threads()} | size {a.size} | '
          f'width {a.width} depth {a.depth} | batch {a.batch_size} | {len(train)} train images | {a.epochs} epochs')

    loops = {'baseline': baseline(a, root, train, pos_weight, device)}
    for name, amp, cl in (('trainer fp32', 'off', False), ('trainer fp32+cl', 'off', True), ('trainer ', 'auto', None)):
        loops[name], t = ours(a, root, train, valid, pos_weight, device, amp, cl)
    prec = str(t.amp_dtype or torch.float32).replace('torch.', '')
    print(f"trainer default here: {prec}{' + channels_last' if t.channels_last else ''}")
    speeds = {k: [] for k in loops}
    for _ in range(a.epochs):  # alternate epochs, so that a change in the machine's load hits every loop alike
        for k, run in loops.items(): speeds[k].append(run())
    for k, v in speeds.items(): print(f'{k:8s} images/s per epoch: ' + ', '.join(f'{x:,.1f}' for x in v))
    steady = lambda v: sum(v[1:]) / len(v[1:]) if len(v) > 1 else v[0]  # the first epoch warms up
    b, o = steady(speeds['baseline']), steady(speeds['trainer '])
    f32, f32cl = steady(speeds['trainer fp32']), steady(speeds['trainer fp32+cl'])
    which = 'epoch 1' if a.epochs == 1 else f'mean of epochs 2-{a.epochs}'
    print(f'baseline {b:,.1f} | trainer fp32 {f32:,.1f} ({f32 / b:.2f}x) | fp32 + channels_last {f32cl:,.1f} '
          f'({f32cl / b:.2f}x) | default ({prec}) {o:,.1f} images/s ({which})')
    print(f'speedup {o / b:.2f}')


if __name__ == '__main__': main()
