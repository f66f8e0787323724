"""How the CPU preset was chosen: a learning-rate finder on the real pets, then a small sweep of recipes.

    python tools/recipe_sweep.py lrfind --data ../shared/data/pets128 --out results/sweep
    python tools/recipe_sweep.py run NAME [NAME ...] --data ../shared/data/pets128 --out results/sweep [--threads 1]
    python tools/recipe_sweep.py timing --data ../shared/data/pets128 --out results/sweep   # on an otherwise idle machine
    python tools/recipe_sweep.py shapes --data ../shared/data/pets128 --out results/sweep --label amx   # idle, too
    python tools/recipe_sweep.py lrs --data ../shared/data/pets128 --out results/sweep --threads 1   # the comparison's rate
    python tools/recipe_sweep.py lrchoice --out results/sweep --fast results/fast   # the table of the lrs runs
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python tools/recipe_sweep.py timing --label avx2   # as an AVX2-only CPU

`timing` trains the CPU preset (Exp 1) for 2 epochs with every core and writes OUT/timing.json: the seconds of an
epoch (training and validation) once warm, to turn the sweep's images into minutes on this machine when it is idle.
`shapes` times training steps at each batch shape of the sweep (full and half size, batch 32 and 16) and one validation
pass, in one process, and writes OUT/shapes_LABEL.json: the seconds an image costs at each shape, to turn runs with
progressive resizing or smaller batches into idle minutes. `lrfind` writes OUT/lr_find.json (rates, smoothed losses, suggestion). `run` trains each named recipe of `RECIPES`
(Exp 1, every trimap kept, as in results/cpu) with `unet-compare` into OUT/<name>/: the same command again skips
finished runs and resumes unfinished ones. Lesson 07 reads the folder back with `unet_tutorial.report.sweep_table`.
"""
import argparse, json, subprocess, sys, time
from pathlib import Path

# name -> unet-compare options (Exp 1, width 16, 128 px, batch 32 throughout; the CPU preset is `onecycle3e-3_12ep`,
# whose three seeds are results/cpu's Exp 1 runs)
RECIPES = {
    'const1e-3_12ep':     '--epochs 12 --lr 1e-3 --schedule none',      # the original project's recipe (Adam 1e-3)
    'onecycle3e-3_6ep':   '--epochs 6 --lr 3e-3 --schedule onecycle',   # half the time
    'onecycle1e-2_12ep':  '--epochs 12 --lr 1e-2 --schedule onecycle',
    'onecycle3e-2_12ep':  '--epochs 12 --lr 3e-2 --schedule onecycle',  # the LR finder's suggestion
    'onecycle3e-3_30ep':  '--epochs 30 --lr 3e-3 --schedule onecycle',  # the preset, longer: the reference model
    # issue 23, time to accuracy: progressive resizing (the first epochs at 64 px cost about a quarter) and smaller batches
    'prog50_onecycle3e-3_24ep':  '--epochs 24 --lr 3e-3 --schedule onecycle --progressive 0.5',
    'prog67_onecycle3e-3_30ep':  '--epochs 30 --lr 3e-3 --schedule onecycle --progressive 0.67',
    'bs16_onecycle3e-3_16ep':    '--epochs 16 --lr 3e-3 --schedule onecycle --batch-size 16',
    'prog50_bs16_onecycle3e-3_20ep': '--epochs 20 --lr 3e-3 --schedule onecycle --batch-size 16 --progressive 0.5',
}

def lrfind(data, out, threads):
    import torch
    from unet_tutorial.callbacks import LRFinder
    from unet_tutorial.config import CPU
    from unet_tutorial.loaders import get_dls
    from unet_tutorial.losses import get_loss, pos_weight_from_masks
    from unet_tutorial.model import build_model
    from unet_tutorial.trainer import Trainer
    from unet_tutorial.core import cpu_kind
    from unet_tutorial.checkpoints import atomic_save
    if threads: torch.set_num_threads(threads)
    cfg = CPU.replace(drop_bad_trimaps=False)
    dls = get_dls(data, size=cfg.size, batch_size=cfg.batch_size, device='cpu', drop_bad=False)
    torch.manual_seed(0)
    model = build_model(1, width=cfg.width, depth=cfg.depth)
    finder = LRFinder(start=1e-5, end=1., steps=100)
    t = time.perf_counter()
    Trainer(model, get_loss('bce', pos_weight_from_masks(dls.train_masks)), dls, cfg.replace(epochs=2),
            cbs=[finder]).fit()
    rec = dict(lrs=finder.lrs, losses=finder.losses, suggestion=finder.suggestion(), seconds=time.perf_counter() - t,
               hardware=f'CPU ({torch.get_num_threads()} threads; {cpu_kind()})', model='Exp 1, width 16, 128 px, batch 32',
               command='python tools/recipe_sweep.py lrfind --data DATA --out OUT')
    atomic_save(rec, Path(out)/'lr_find.json')
    print(f"suggestion {rec['suggestion']:.2e} after {len(finder.lrs)} steps, {rec['seconds']:.0f} s")

def timing(data, out, threads, label=''):
    import tempfile
    from unet_tutorial.checkpoints import atomic_save
    with tempfile.TemporaryDirectory() as d:
        cmd = [str(Path(sys.executable).parent/'unet-compare'), '--data', str(data), '--preset', 'cpu', '--experiments', '1',
               '--epochs', '2', '--keep-bad-trimaps', '--out', d] + (['--threads', str(threads)] if threads else [])
        subprocess.run(cmd, check=True)
        h = json.loads((Path(d)/'maxpool_transpose_bce'/'seed0'/'history.json').read_text())
        m = json.loads((Path(d)/'maxpool_transpose_bce'/'seed0'/'metrics.json').read_text())
    rec = dict(epoch_s=h[-1]['seconds'], images_per_s=h[-1]['images_per_s'], n_train=m['timing']['n_train'],
               test_s=m['timing']['test_s'], hardware=m['timing']['hardware'], precision=m['timing']['precision'],
               command='python tools/recipe_sweep.py timing --data DATA --out OUT')
    atomic_save(rec, Path(out)/f"timing{'_' + label if label else ''}.json")
    print(f"{rec['hardware']}: {rec['epoch_s']:.1f} s an epoch (train + validation), {rec['images_per_s']:.1f} images/s")

def shapes(data, out, threads, label='', steps=12, rounds=3):
    """Idle seconds an image of training costs at each batch shape the sweep uses (full and half size; batch 32 and 16),
    and a validation pass's seconds, timed in this one process: `rounds` rounds of `steps` steps a shape, the shapes
    taking turns so that a change of the machine's load touches them all, after two warm-up steps a shape."""
    import os, torch
    from unet_tutorial.config import CPU
    from unet_tutorial.loaders import dls_for
    from unet_tutorial.losses import get_loss
    from unet_tutorial.model import build_model
    from unet_tutorial.trainer import Trainer
    from unet_tutorial.callbacks import halve
    from unet_tutorial.core import cpu_kind
    from unet_tutorial.checkpoints import atomic_save
    torch.set_num_threads(threads or os.cpu_count())
    cfg = CPU.replace(device='cpu', drop_bad_trimaps=False)
    dls = dls_for(cfg, data)
    torch.manual_seed(0)
    t = Trainer(build_model(1, width=cfg.width, depth=cfg.depth), get_loss('bce'), dls, cfg, cbs=())
    t.model.train()
    batches = [b for _, b in zip(range(steps), dls.train)]   # the same 12 batches of 32 for every shape
    def shape_batches(size, bs):
        for x, y in batches:
            if size < cfg.size: x, y = halve(x, y)           # as the trainer halves a progressive run's first epochs
            for i in range(0, len(x), bs): yield x[i:i + bs], y[i:i + bs]
    keys = [(s, b) for s in (cfg.size, cfg.size // 2) for b in (32, 16)]
    secs, imgs = {k: 0. for k in keys}, {k: 0 for k in keys}
    for k in keys:                                            # warm-up: oneDNN picks its kernels for each shape
        for x, y in list(shape_batches(*k))[:2]: t.train_step(x, y)
    for _ in range(rounds):
        for k in keys:
            t0 = time.perf_counter()
            for x, y in shape_batches(*k): loss = t.train_step(x, y); imgs[k] += len(x)
            float(loss); secs[k] += time.perf_counter() - t0   # float(): waits for the last step
    t.evaluate(); t0 = time.perf_counter(); t.evaluate(); valid_s = time.perf_counter() - t0
    rec = dict(train_s_per_image={f'{s}/{b}': secs[(s, b)] / imgs[(s, b)] for s, b in keys}, valid_s=valid_s,
               n_train=dls.train.n, n_valid=dls.valid.n, threads=torch.get_num_threads(),
               hardware=f'CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads; {cpu_kind()})',
               precision=str(t.amp_dtype or torch.float32).replace('torch.', ''),
               load_average=os.getloadavg()[0], command='python tools/recipe_sweep.py shapes --data DATA --out OUT')
    atomic_save(rec, Path(out)/f"shapes{'_' + label if label else ''}.json")
    for k, v in rec['train_s_per_image'].items(): print(f'{k}: {1 / v:.1f} training images/s')
    print(f"validation pass ({dls.valid.n} images): {valid_s:.1f} s | {rec['hardware']} | load average {rec['load_average']:.2f}")

LRS = ('1e-3', '1e-2')   # the FAST preset's peak rate is 3e-3: its arm is the comparison's seed-0 runs (results/fast)

def lrs(data, out, threads, experiments='1,2,3,4,5', rates=LRS):
    """The learning rate chosen on all the experiments (issue 22): the comparison's preset (FAST) at each other peak
    rate, every experiment, seed 0, into OUT/fast_lr<rate>/; `lrchoice` tabulates them."""
    for lr in rates:
        cmd = ['unet-compare', '--data', str(data), '--preset', 'fast', '--experiments', experiments, '--seeds', '0',
               '--lr', lr, '--out', str(Path(out)/f'fast_lr{lr}')] + (['--threads', str(threads)] if threads else [])
        print(' '.join(cmd), flush=True)
        subprocess.run([str(Path(sys.executable).parent/cmd[0]), *cmd[1:]], check=True)

def lrchoice(out, fast='results/fast', rates=('1e-3', '3e-3', '1e-2')):
    """OUT/lr_choice.md and .json: each experiment's best validation IoU (seed 0) at each peak rate (3e-3 is FAST's own:
    its runs are `fast`), the rate each experiment would choose on validation IoU, and the rate of the best mean over all."""
    folder = lambda lr: Path(fast) if lr == '3e-3' else Path(out)/f'fast_lr{lr}'
    found = {p.parent.parent.name: json.loads(p.read_text())['experiment'] for lr in rates for p in folder(lr).glob('*/seed0/metrics.json')}
    names = sorted(found, key=found.get)   # by experiment number
    rows = {}
    for n in names:
        ms = {lr: json.loads(f.read_text()) for lr in rates if (f := folder(lr)/n/'seed0'/'metrics.json').exists()}
        if len(ms) < len(rates): print(f'{n}: not every rate has finished ({", ".join(ms)}), left out'); continue
        rows[n] = {lr: dict(valid_iou=m['valid']['best_iou'], test_iou=m['test']['iou'], label=m['label']) for lr, m in ms.items()}
    mean = {lr: sum(r[lr]['valid_iou'] for r in rows.values()) / len(rows) for lr in rates}
    rec = dict(rates=list(rates), runs=rows, chosen={n: max(rates, key=lambda lr: r[lr]['valid_iou']) for n, r in rows.items()},
               mean_valid_iou=mean, chosen_for_all=max(rates, key=mean.get))
    (Path(out)/'lr_choice.json').write_text(json.dumps(rec, indent=1) + '\n')
    md = ['| experiment | ' + ' | '.join(f'lr {lr}: valid / test IoU' for lr in rates) + ' | chosen on valid |', '|---' * (len(rates) + 2) + '|']
    md += [f"| {r[rates[0]]['label']} | " + ' | '.join(f"{r[lr]['valid_iou']:.4f} / {r[lr]['test_iou']:.4f}" for lr in rates)
           + f" | {rec['chosen'][n]} |" for n, r in rows.items()]
    md += ['| mean validation IoU | ' + ' | '.join(f'{mean[lr]:.4f}' for lr in rates) + f" | {rec['chosen_for_all']} (for all) |"]
    (Path(out)/'lr_choice.md').write_text('\n'.join(md) + '\n'); print('\n'.join(md))

def run(names, data, out, threads):
    for name in names:
        opts = RECIPES[name].split()
        cmd = ['unet-compare', '--data', str(data), '--preset', 'cpu', '--experiments', '1', '--seeds', '0',
               '--keep-bad-trimaps', '--out', str(Path(out)/name), *opts] + (['--threads', str(threads)] if threads else [])
        print(' '.join(cmd), flush=True)
        subprocess.run([str(Path(sys.executable).parent/cmd[0]), *cmd[1:]], check=True)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('what', choices=['lrfind', 'run', 'timing', 'shapes', 'lrs', 'lrchoice'])
    p.add_argument('names', nargs='*', help=f'recipes to run: {", ".join(RECIPES)}')
    p.add_argument('--data', default='../shared/data/pets128')
    p.add_argument('--out', default='results/sweep')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--fast', default='results/fast', help='lrchoice: the folder of the FAST comparison (its rate, 3e-3)')
    p.add_argument('--label', default='', help='timing: written to OUT/timing_LABEL.json (e.g. avx2, for a run under\n'
                   '                   ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)')
    a = p.parse_args()
    if a.what == 'lrfind': lrfind(a.data, a.out, a.threads)
    elif a.what == 'timing': timing(a.data, a.out, a.threads, a.label)
    elif a.what == 'shapes': shapes(a.data, a.out, a.threads, a.label)
    elif a.what == 'lrs': lrs(a.data, a.out, a.threads)
    elif a.what == 'lrchoice': lrchoice(a.out, a.fast)
    else:
        if bad := [n for n in a.names if n not in RECIPES]: p.error(f'unknown recipes {bad}: use {", ".join(RECIPES)}')
        run(a.names, a.data, a.out, a.threads)
