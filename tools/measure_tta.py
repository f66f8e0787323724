"""Test-time augmentation measured: a model (the reference model by default) on the validation and the official test
split, without TTA, with the mirror image (`tta='h'`, two passes) and with all four flips (`'hv'`, four passes): IoU,
pixel accuracy, Dice, the mean per-image IoU, the seconds each took, and how many images each flip choice helps or
hurts against no TTA (with the paired bootstrap interval of the mean per-image gain). The choice between the flips
is read on the validation split; the test split reports it. Each split is scored choice after choice, so on a shared
machine a load that comes and goes skews those seconds; the first test batches are then timed again with the choices
in turn, batch by batch (`timing_interleaved`), which a changing load hits alike. Writes results/tta/reference.json
(lesson 17 reads it):

    python tools/measure_tta.py --threads 1            # the committed figures (the file has the seconds of each)
    python tools/measure_tta.py --threads 1 --timing-only   # the timing in turn alone, added to that file

The data are read with the model's record's settings (size, border, `drop_bad_trimaps`), as lesson 17 and
tests/test_reference.py do, so the figure without TTA is the record's. `--overwrite` replaces the output file.
"""
import argparse, json, os, sys, time
from pathlib import Path

import torch
from unet_tutorial.checkpoints import atomic_save, load_model
from unet_tutorial.core import cpu_kind
from unet_tutorial.data import find_pets
from unet_tutorial.experiments import evaluate_model
from unet_tutorial.loaders import get_dls
from unet_tutorial.reference import reference_checkpoint
from unet_tutorial.stats import paired_bootstrap

root = Path(__file__).resolve().parent.parent
CHOICES = ('', 'h', 'hv')   # no TTA, the mirror image, all four flips
NAMES = {'': 'none', 'h': 'h', 'hv': 'hv'}


def measure(model, dl, flips:str) -> tuple:
    "Metrics and per-image IoUs of `model` on `dl` with `flips`, and the seconds it took (after a warm-up batch)."
    x, y = next(iter(dl)); evaluate_model(model, [(x[:2], y[:2])], tta=flips)   # warm-up: first-call costs not timed
    t = time.perf_counter(); metrics, ious = evaluate_model(model, dl, tta=flips)
    return metrics, ious, time.perf_counter() - t


def split_figures(model, dl) -> dict:
    "{'none'|'h'|'hv': figures} of one split; the TTA entries say how many images they help and hurt."
    out, base = {}, None
    for flips in CHOICES:
        metrics, ious, s = measure(model, dl, flips)
        fig = {**metrics, 'seconds': round(s, 2), 'images_per_s': round(dl.n / s, 2), 'passes': 2 ** len(flips)}
        if base is None: base = ious
        else:
            gain, ci = paired_bootstrap(base, ious)
            fig.update(helped=sum(b > a for a, b in zip(base, ious)), hurt=sum(b < a for a, b in zip(base, ious)),
                       same=sum(b == a for a, b in zip(base, ious)), mean_image_iou_gain=gain, gain_95ci=list(ci))
        out[NAMES[flips]] = fig
        print(f"  tta={NAMES[flips]:<5} IoU {metrics['iou']:.4f}  pixel accuracy {metrics['pixel_accuracy']:.4f}  "
              f"{s:7.1f} s ({dl.n} images)", flush=True)
    return out


def interleaved_seconds(model, dl, batches:int) -> dict:
    "Seconds of each choice over the first `batches` batches of `dl`, timed batch by batch in turn: a load that comes and goes hits each alike."
    secs, n, load = {NAMES[f]: 0. for f in CHOICES}, 0, os.getloadavg()
    x, y = next(iter(dl))
    for f in CHOICES: evaluate_model(model, [(x[:2], y[:2])], tta=f)   # warm-up: first-call costs not timed
    for i, (x, y) in enumerate(dl):
        if i == batches: break
        n += len(x)
        for f in CHOICES[i % 3:] + CHOICES[:i % 3]:   # the order turns from batch to batch
            t = time.perf_counter(); evaluate_model(model, [(x, y)], tta=f); secs[NAMES[f]] += time.perf_counter() - t
    return dict(images=n, seconds={k: round(s, 2) for k, s in secs.items()},
                ratio={k: round(s / secs['none'], 2) for k, s in secs.items()},
                load_average=dict(start=[round(v, 2) for v in load], end=[round(v, 2) for v in os.getloadavg()]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=None, help='a folder holding oxford-iiit-pet/ (default: find_pets())')
    p.add_argument('--checkpoint', default=None, help='a checkpoint with a record (default: the reference model)')
    p.add_argument('--out', default=str(root/'results'/'tta'/'reference.json'), help='the JSON file to write')
    p.add_argument('--threads', type=int, default=1, help='torch threads (1: the figures of the committed file)')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--per-split', type=int, default=None, help='at most this many images a split (for a quick try)')
    p.add_argument('--timing-batches', type=int, default=8, help='test batches timed in turn, each choice batch by batch')
    p.add_argument('--timing-only', action='store_true', help='time the choices in turn only, into the existing --out')
    p.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.timing_only and not out.is_file(): sys.exit(f"measure_tta.py: error: {out} is not there: run without --timing-only first")
    if out.exists() and not (a.overwrite or a.timing_only):
        sys.exit(f"measure_tta.py: error: {out} exists: pass --overwrite to replace it")
    data = find_pets(a.data)
    if data is None or not (data/'oxford-iiit-pet').is_dir():
        sys.exit(f"measure_tta.py: error: no oxford-iiit-pet/ in {a.data or 'the usual places'}: pass --data FOLDER")
    torch.set_num_threads(a.threads)
    model, ckpt = load_model(a.checkpoint or reference_checkpoint(), 'cpu')
    cfg = ckpt['record']['config'] if 'record' in ckpt else {}
    size, border, drop = cfg.get('size', ckpt.get('size') or 128), cfg.get('border', 'background'), cfg.get('drop_bad_trimaps', True)
    dls = get_dls(data, size=size, batch_size=a.batch_size, border=border, device='cpu', drop_bad=drop,
                  augment=False, per_split=a.per_split)
    command = 'python tools/measure_tta.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    timing = lambda: dict(timing_interleaved=interleaved_seconds(model, dls.test, a.timing_batches), timing_command=command.strip(),
                          timing_threads=a.threads)
    if a.timing_only:   # the figures stay; the timing in turn is added (or replaced)
        rec = {**json.loads(out.read_text()), **timing()}
        atomic_save(json.dumps(rec, indent=1) + '\n', out); print(f"wrote {out}: {rec['timing_interleaved']}"); return
    load = os.getloadavg()
    splits = {}
    for k in ('valid', 'test'):
        print(f"{k}: {getattr(dls, k).n} images", flush=True)
        splits[k] = split_figures(model, getattr(dls, k))
    chosen = max(('h', 'hv'), key=lambda f: splits['valid'][f]['iou'])   # read on validation, never on test
    rec = dict(command=command.strip(), checkpoint=a.checkpoint or 'the reference model (unet_tutorial/weights/pets_reference.pt)',
               model=ckpt.get('record', {}).get('label'), record_test=ckpt.get('record', {}).get('test'),
               data=dict(size=size, border=border, drop_bad_trimaps=drop, per_split=a.per_split,
                         n={k: getattr(dls, k).n for k in ('valid', 'test')}),
               hardware=f"CPU ({os.cpu_count()} cores, {a.threads} threads; {cpu_kind()})", threads=a.threads,
               load_average=dict(start=[round(v, 2) for v in load], end=[round(v, 2) for v in os.getloadavg()]),
               timing_note='one process, one model, the same threads for every choice, on a shared machine that was '
                           'busy with other work (the load averages): the seconds are rough',
               splits=splits, best_on_valid=chosen, **timing())
    atomic_save(json.dumps(rec, indent=1) + '\n', out)
    print(f"wrote {out}; best on validation: tta={chosen}")


if __name__ == '__main__': main()
