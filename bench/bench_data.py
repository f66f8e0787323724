"""Data loading throughput: per-item JPEG decode + resize (the original project's way) against the cached tensor loader.

    python bench/bench_data.py --data ../shared/data/pets128 [--size 128] [--split trainval] [--batch-size 64]
        [--device cpu|cuda] [--threads 1]

1. Builds the uint8 tensor cache of every image in `images/` (7,390 for the real data) in a fresh temporary folder,
   and times it (target: under 30 s on 2 cores), then times reading it back from disk.
2. One epoch of the split through torchvision's `OxfordIIITPet` + v2 transforms + a `DataLoader` (PIL decode and
   resize of every item, no augmentation, num_workers=0).
3. One epoch of the same split from the cached tensors with `TensorLoader` (no augmentation; then with the
   per-sample flip + scale/crop, for information), on the CPU unless --device says otherwise.
The last line is `speedup X`: cached images/s over per-item images/s, both without augmentation.
"""
import argparse, os, shutil, tempfile, time

import torch

from unet_tutorial.data import check_pets_root, pets_dataset, read_split, trimap_to_mask
from unet_tutorial.loaders import TensorLoader, load_cached


def epoch(loader, sync=lambda: None):
    "Seconds and items of one pass over `loader`"
    t, n = time.perf_counter(), 0
    for x, y in loader: n += len(x)
    sync()
    return time.perf_counter() - t, n


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', required=True, help='folder holding oxford-iiit-pet/')
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--split', default='trainval', choices=['trainval', 'test'])
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--device', default='cpu', help="device the cached loader works on (e.g. 'cuda')")
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads (default 1: the machine is shared)')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    root = check_pets_root(a.data)
    print(f'data {root} | size {a.size} | split {a.split} | batch {a.batch_size} | torch threads {torch.get_num_threads()}'
          f' | cpus {os.cpu_count()}')

    names, tmp = read_split(root, 'all'), tempfile.mkdtemp(prefix='bench_cache_')
    try:
        t = time.perf_counter(); ims, tris = load_cached(root, names, a.size, cache=tmp); build = time.perf_counter() - t
        t = time.perf_counter(); load_cached(root, names, a.size, cache=tmp); reload = time.perf_counter() - t
        mb = sum(f.stat().st_size for f in os.scandir(tmp)) / 2**20
    finally: shutil.rmtree(tmp, ignore_errors=True)
    print(f'cache build, {len(names)} images: {build:.1f} s ({len(names)/build:,.0f} images/s, {mb:,.0f} MB) | '
          f'reload from disk: {reload:.2f} s')

    ds = pets_dataset(root, a.split, a.size, train=False)
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=False, num_workers=0)
    s_item, n_item = epoch(dl)
    ips_item = n_item / s_item
    print(f'per-item (PIL decode + resize, OxfordIIITPet + v2): {n_item} images in {s_item:.2f} s = {ips_item:,.0f} images/s')

    pos = {n: i for i, n in enumerate(names)}
    idx = torch.tensor([pos[n] for n in read_split(root, a.split)])
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == 'cuda' else (lambda: None)
    x, m = ims[idx].to(dev), trimap_to_mask(tris[idx])[:, None].to(dev)
    res = {}
    for aug in (False, True):
        tl = TensorLoader(x, m, a.batch_size, shuffle=aug, augment=aug, seed=0)
        epoch(tl, sync)                                              # warm-up
        s, n = min((epoch(tl, sync) for _ in range(3)), key=lambda r: r[0])
        res[aug] = n / s
        print(f'cached tensors on {dev}{" + shuffle + flip/scale/crop" if aug else ""}: {n} images in {s:.3f} s = {n/s:,.0f} images/s')
    print(f'speedup {res[False] / ips_item:.1f}')


if __name__ == '__main__': main()
