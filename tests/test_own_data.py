"""Your own data (lesson 21, `unet_tutorial.folder`), `unet-train` and the ONNX export, on tiny folders written here.

Every accepted mask convention and image kind is read into the masks it stands for; every kind of bad input is
reported in one `FolderError` naming each file; `unet-train --preset quick` trains on a folder end to end and
`unet-predict` uses its checkpoint; a model exported to ONNX gives PyTorch's probabilities within 1e-3.
"""
import importlib, json, os, shlex, subprocess, sys, time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unet_tutorial.core import BadInput, IGNORE_INDEX
from unet_tutorial.folder import FolderError, folder_dls, read_folder, train_size
from unet_tutorial.synthetic import make_synthetic_folder
from unet_tutorial.config import QUICK
from unet_tutorial.experiments import train_one
from unet_tutorial import cli, export, inference
from unet_tutorial.model import UNet

from conftest import REPO as ROOT, images_by_name, masks_by_name
N, S = 10, 32   # pairs per folder and their side: tiny, so that every test reads in milliseconds


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "A folder of N synthetic pets with 0/1 masks: the truth the other conventions are checked against."
    return make_synthetic_folder(tmp_path_factory.mktemp('own')/'base', n=N, size=S, values=(0, 1))


def truth(base, name):
    "The true 0/1 mask of `name`, (S, S) uint8."
    return np.asarray(Image.open(base/'masks'/f'{name}.png'))


def copy_folder(base, dest, mask=None, image=None):
    "Copy `base` to `dest`, writing each mask with `mask(m01, path_stem)` and each image with `image(im, path_stem)` when given."
    (dest/'images').mkdir(parents=True); (dest/'masks').mkdir()
    for p in sorted((base/'images').iterdir()):
        im = Image.open(p)
        if image: image(im, dest/'images'/p.stem)
        else: im.save(dest/'images'/p.name)
        m = truth(base, p.stem)
        if mask: mask(m, dest/'masks'/p.stem)
        else: Image.fromarray(m).save(dest/'masks'/f'{p.stem}.png')
    return dest




def _palette(m, stem):
    im = Image.fromarray(m, 'P'); im.putpalette([0, 0, 0, 255, 0, 110]); im.save(f'{stem}.png')


def _colour(m, stem):
    rgb = np.full((*m.shape, 3), 255, np.uint8); rgb[m == 1] = (255, 0, 110); Image.fromarray(rgb).save(f'{stem}.png')


CONVENTIONS = {   # name: (write a 0/1 mask in this convention, what read_folder must say)
    '0/1': (lambda m, s: Image.fromarray(m).save(f'{s}.png'), 'masks use 0/1: treating 1 as foreground'),
    '0/255': (lambda m, s: Image.fromarray(m * 255).save(f'{s}.png'), 'masks use 0/255: treating 255 as foreground'),
    'palette': (_palette, 'masks use the colours #000000/#ff006e: treating #ff006e as foreground'),   # read by its colours
    'two other values': (lambda m, s: Image.fromarray(np.where(m == 1, 200, 40).astype(np.uint8)).save(f'{s}.png'),
                         'masks use 40/200: treating 200 as foreground'),
    '16-bit mask': (lambda m, s: Image.fromarray(m.astype(np.uint16) * 65535).save(f'{s}.png'),
                    'masks use 0/65535: treating 65535 as foreground'),
    'colour on white': (_colour, 'masks use the colours #ff006e/#ffffff: treating #ff006e as foreground'),
    '1-bit': (lambda m, s: Image.fromarray(m.astype(bool)).save(f'{s}.png'), 'masks use 0/1: treating 1 as foreground'),
    'transparent': (lambda m, s: Image.fromarray(np.dstack([m * 255] * 3 + [m * 255]).astype(np.uint8), 'RGBA').save(f'{s}.png'),
                    'masks use 0/255: treating 255 as foreground'),
}


@pytest.mark.parametrize('kind', CONVENTIONS)
def test_accepted_mask_conventions(base, tmp_path, kind):
    write, said = CONVENTIONS[kind]
    data = read_folder(copy_folder(base, tmp_path/'d', mask=write), size=S)
    assert data.convention == said
    got = masks_by_name(data)
    assert sorted(got) == sorted(p.stem for p in (base/'images').iterdir())
    for name, m in got.items(): np.testing.assert_array_equal(m, truth(base, name), err_msg=f'{kind}: {name}')
    assert data.pos_weight == pytest.approx((np.stack([truth(base, n) for n in data.names['train']]) == 0).sum()
                                            / (np.stack([truth(base, n) for n in data.names['train']]) == 1).sum())


def test_foreground_and_ignore_values(base, tmp_path):
    inverted = read_folder(copy_folder(base, tmp_path/'ink', mask=lambda m, s: Image.fromarray((1 - m) * 255).save(f'{s}.png')),
                           size=S, foreground=0)   # black objects on white
    assert inverted.convention == 'masks use 0/255: treating 0 as foreground'
    for n, m in masks_by_name(inverted).items(): np.testing.assert_array_equal(m, truth(base, n))
    def unsure(m, s):   # an "unsure" band of value 128 on the first two rows
        v = m * 255; v[:2] = 128; Image.fromarray(v).save(f'{s}.png')
    data = read_folder(copy_folder(base, tmp_path/'band', mask=unsure), size=S, ignore='128')
    assert data.convention.endswith('128 is ignored (left out of the loss and the scores)')
    for n, m in masks_by_name(data).items():
        assert (m[:2] == IGNORE_INDEX).all() and np.array_equal(m[2:], truth(base, n)[2:])
    with pytest.raises(FolderError, match='3 values'):    # without --ignore, the band is a third value
        read_folder(tmp_path/'band', size=S)


def test_image_kinds_are_converted(base, tmp_path):
    "Greyscale, RGBA, 16-bit and palette images are read as RGB, as `unet-predict` reads them (lesson 17's `load_image`)."
    kinds = {'pet_000': lambda im, s: im.convert('L').save(f'{s}.png'),
             'pet_002': lambda im, s: _transparent(im).save(f'{s}.png'),
             'pet_003': lambda im, s: Image.fromarray(np.asarray(im.convert('L'), np.uint16) * 257).save(f'{s}.png'),
             'pet_004': lambda im, s: im.convert('P').save(f'{s}.png')}
    write = lambda im, s: kinds.get(Path(s).name, lambda im, s: im.save(f'{s}.jpg'))(im, s)
    data = read_folder(copy_folder(base, tmp_path/'d', image=write), size=S)
    ims = images_by_name(data)
    assert all(x.shape == (3, S, S) and x.dtype == np.uint8 for x in ims.values())
    assert (ims['pet_000'] == ims['pet_000'][:1]).all()                       # greyscale: three equal channels
    assert (ims['pet_002'][:, :, :4] == 255).all()                            # transparent columns: laid on white
    assert ims['pet_003'].max() == 255 and (ims['pet_003'] == ims['pet_003'][:1]).all()   # 16-bit: stretched to 0-255
    for k in ('I;16 → RGB (1)', 'L → RGB (1)', 'RGBA → RGB (1)', 'P → RGB (1)'): assert k in data.notes[1], data.notes
    for n, m in masks_by_name(data).items(): np.testing.assert_array_equal(m, truth(base, n))


def _transparent(im):
    rgba = im.convert('RGBA'); a = np.full((S, S), 255, np.uint8); a[:, :4] = 0; rgba.putalpha(Image.fromarray(a)); return rgba


@pytest.mark.parametrize('mask_too', [False, True], ids=['mask drawn upright', 'mask sideways with EXIF too'])
def test_exif_rotated_pair(base, tmp_path, mask_too):
    "A photo stored sideways with an EXIF orientation tag is read upright, and so is its mask when it carries the tag."
    exif = Image.Exif(); exif[0x0112] = 6   # "turn 90° clockwise to view"
    def image(im, s):
        if Path(s).name == 'pet_005': im.transpose(Image.Transpose.ROTATE_90).save(f'{s}.png', exif=exif)
        else: im.save(f'{s}.png')
    def mask(m, s):
        im = Image.fromarray(m * 255)
        if mask_too and Path(s).name == 'pet_005': im.transpose(Image.Transpose.ROTATE_90).save(f'{s}.png', exif=exif)
        else: im.save(f'{s}.png')
    rect = base.parent/f'rect{mask_too}'   # not square, so that a sideways mask could not pass by chance
    if not rect.exists():
        make_synthetic_folder(rect, n=N, size=S, values=(0, 1))
        for p in (rect/'images').iterdir(): Image.open(p).resize((S, S + 16)).save(p)
        for p in (rect/'masks').iterdir(): Image.open(p).resize((S, S + 16), Image.NEAREST).save(p)
    data = read_folder(copy_folder(rect, tmp_path/'d', mask=mask, image=image), size=S)
    assert 'turned upright (EXIF) (1)' in data.notes[1]
    plain = read_folder(copy_folder(rect, tmp_path/'plain', image=lambda im, s: im.save(f'{s}.png')), size=S)
    np.testing.assert_array_equal(masks_by_name(data)['pet_005'], masks_by_name(plain)['pet_005'])
    np.testing.assert_array_equal(images_by_name(data)['pet_005'], images_by_name(plain)['pet_005'])   # PNG: lossless


def test_every_bad_input_in_one_message(tmp_path):
    more = make_synthetic_folder(tmp_path/'more', n=16, size=S, values=(0, 1))   # enough good masks for a clear convention
    d = copy_folder(more, tmp_path/'bad', mask=lambda m, s: Image.fromarray(m * 255).save(f'{s}.png'))
    m = np.asarray(Image.open(d/'masks'/'pet_000.png'))
    Image.fromarray((m // 255 * 128).astype(np.uint8)).save(d/'masks'/'pet_000.png')                # 0/128 among 0/255
    three = m.copy(); three[:3] = 77; Image.fromarray(three).save(d/'masks'/'pet_002.png')          # 3 values
    Image.fromarray(m).save(d/'masks'/'pet_003.jpg'); (d/'masks'/'pet_003.png').unlink()              # JPEG: many values
    Image.fromarray(m).resize((S, S + 8), Image.NEAREST).save(d/'masks'/'pet_004.png')                # another size
    (d/'images'/'pet_005.jpg').write_bytes((d/'images'/'pet_005.jpg').read_bytes()[:120])             # cut short
    (d/'masks'/'pet_006.png').write_bytes(b'not a picture')                                           # unreadable mask
    (d/'masks'/'pet_007.png').unlink()                                                                # image without mask
    Image.fromarray(m).save(d/'masks'/'stray.png')                                                    # mask without image
    (d/'images'/'.DS_Store').write_bytes(b'\0')                                                       # hidden: left out
    with pytest.raises(FolderError) as e: read_folder(d, size=S)
    named = ['masks/pet_000.png', 'masks/pet_002.png', 'masks/pet_003.jpg', 'masks/pet_004.png', 'images/pet_005.jpg',
             'masks/pet_006.png', 'images/pet_007.jpg', 'masks/stray.png']
    assert len(e.value.problems) == len(named), e.value.problems
    for f in named: assert sum(p.startswith(f + ':') for p in e.value.problems) == 1, (f, e.value.problems)
    msg = str(e.value)
    assert msg.startswith(f'8 problems in {d}') and all(f in msg for f in named) and '.DS_Store' not in msg
    for says in ('3 values (0, 77, 255)', 'JPEG compression', f'{S}×{S + 8} pixels, but its image', 'unreadable image',
                 'unreadable mask', 'no mask', 'a mask without an image', 'values 0/128, but the other masks use 0/255'):
        assert says in msg, (says, msg)
    r = run(tmp_path, 'unet-train', '--data', d, '--out', tmp_path/'run', '--preset', 'quick')   # nothing trains
    assert r.returncode == 2 and 'masks/stray.png' in r.stderr and 'Traceback' not in r.stderr
    assert not any((tmp_path/'run').rglob('*.pt'))


def test_folder_level_problems(base, tmp_path):
    empty = tmp_path/'empty'; (empty/'images').mkdir(parents=True); (empty/'masks').mkdir()
    with pytest.raises(FolderError, match='no image found'): read_folder(empty, size=S)
    with pytest.raises(BadInput, match='expected images/ and masks/'): read_folder(tmp_path, size=S)
    with pytest.raises(BadInput, match='no such folder'): read_folder(tmp_path/'nowhere', size=S)
    black = copy_folder(base, tmp_path/'black', mask=lambda m, s: Image.fromarray(m * 0).save(f'{s}.png'))
    with pytest.raises(FolderError, match='every mask holds the one value 0'): read_folder(black, size=S)
    nomasks = tmp_path/'nomasks'; (nomasks/'images').mkdir(parents=True)
    Image.open(base/'images'/'pet_000.jpg').save(nomasks/'images'/'a.jpg')
    with pytest.raises(FolderError, match='masks: no such folder'): read_folder(nomasks, size=S)


def test_size_must_divide_by_two_to_the_depth(base):
    assert train_size(96, 4) == 96 and train_size(24, 3) == 24
    for size, depth, says in ((100, 4, 'use 96 or 112'), (40, 4, 'use 32 or 48'), (8, 4, 'use 16 \\(got 8\\)'), (20, 3, 'use 16 or 24')):
        with pytest.raises(BadInput, match=says) as e: train_size(size, depth)
        assert f'size must be a multiple of {2**depth} (2**depth' in str(e.value)
    with pytest.raises(BadInput, match='use 96 or 112'): read_folder(base, size=100)
    with pytest.raises(BadInput, match='--size must be a multiple of 16 .*use 64 or 80 \\(got 72\\)'):
        cli.train(str(base), preset='quick', size=72, out=str(base.parent/'never'))


def test_seeded_split_is_reproducible(base):
    a, b = read_folder(base, size=S, seed=3), read_folder(base, size=S, seed=3)
    assert a.names == b.names and torch.equal(a.masks['valid'], b.masks['valid'])
    assert read_folder(base, size=S, seed=4).names['valid'] != a.names['valid']
    t = read_folder(base, size=S, valid_pct=0.2, test_pct=0.2, seed=3)
    assert [len(t.names[k]) for k in ('train', 'valid', 'test')] == [6, 2, 2]
    assert sorted(sum(t.names.values(), [])) == sorted(p.stem for p in (base/'images').iterdir())
    with pytest.raises(BadInput, match='too few'): read_folder(base, size=S, valid_pct=0.6, test_pct=0.35)


def test_existing_split_folders_and_csv(base, tmp_path):
    d = tmp_path/'split'
    for split, idx in (('train', range(0, 6)), ('val', range(6, 8)), ('test', range(8, 10))):
        for sub in ('images', 'masks'): (d/split/sub).mkdir(parents=True)
        for i in idx:
            Image.open(base/'images'/f'pet_{i:03d}.jpg').save(d/split/'images'/f'pet_{i:03d}.jpg')
            Image.fromarray(truth(base, f'pet_{i:03d}')).save(d/split/'masks'/f'pet_{i:03d}_mask.png')  # the _mask suffix
    data = read_folder(d, size=S, seed=0)
    assert data.names == dict(train=[f'train/pet_{i:03d}' for i in range(6)], valid=['val/pet_006', 'val/pet_007'],
                              test=['test/pet_008', 'test/pet_009'])
    assert read_folder(d, size=S, seed=1).names == data.names    # the folders' split, whatever the seed
    dls = folder_dls(data, batch_size=4, device='cpu')
    assert (dls.train.n, dls.valid.n, dls.test.n) == (6, 2, 2) and dls.test is not dls.valid
    rows = ['image,mask,split'] + [f'images/pet_{i:03d}.jpg,masks/pet_{i:03d}.png,{"valid" if i in (1, 4) else "train"}' for i in range(N)]
    (base/'pairs.csv').write_text('\n'.join(rows) + '\n')
    try:
        c = read_folder(base/'pairs.csv', size=S)
        assert c.names['valid'] == ['images/pet_001.jpg', 'images/pet_004.jpg'] and len(c.names['train']) == N - 2
        (base/'bad.csv').write_text('image,mask\nimages/pet_000.jpg,masks/nothing.png\n')
        with pytest.raises(FolderError, match='bad.csv line 2: masks/nothing.png: no such file'): read_folder(base/'bad.csv', size=S)
    finally:
        for f in ('pairs.csv', 'bad.csv'): (base/f).unlink(missing_ok=True)


def test_empty_training_split_is_named(base, tmp_path):
    "A CSV whose rows are all 'valid', or split folders with an empty train/: the message says the training split is empty."
    rows = ['image,mask,split'] + [f'images/pet_{i:03d}.jpg,masks/pet_{i:03d}.png,valid' for i in range(N)]
    (base/'all_valid.csv').write_text('\n'.join(rows) + '\n')
    try:
        with pytest.raises(FolderError, match=f'the training split is empty \\({N} valid and 0 train\\)') as e:
            read_folder(base/'all_valid.csv', size=S)
        assert "mark some rows of the CSV file 'train'" in str(e.value) and 'foreground' not in str(e.value)
    finally: (base/'all_valid.csv').unlink(missing_ok=True)
    d = tmp_path/'split'
    for split in ('train', 'valid'):
        for sub in ('images', 'masks'): (d/split/sub).mkdir(parents=True)
    for i in range(3):
        Image.open(base/'images'/f'pet_{i:03d}.jpg').save(d/'valid'/'images'/f'pet_{i:03d}.jpg')
        Image.fromarray(truth(base, f'pet_{i:03d}')).save(d/'valid'/'masks'/f'pet_{i:03d}.png')
    with pytest.raises(FolderError, match='the training split is empty .*train/images and train/masks'): read_folder(d, size=S)


def test_loaders_feed_the_trainer(base):
    dls = folder_dls(base, batch_size=4, device='cpu', size=S)
    x, y = next(iter(dls.train))
    assert (x.dtype, tuple(x.shape), y.dtype, tuple(y.shape)) == (torch.float32, (4, 3, S, S), torch.uint8, (4, 1, S, S))
    assert dls.test is dls.valid and set(dls.train_masks.unique().tolist()) <= {0, 1}


def test_train_one_starts_from_init(base, tmp_path):
    "With `init`, the run starts from the given weights: at a tiny learning rate, the trained weights are still those."
    from unet_tutorial.reference import reference_model
    ref, _ = reference_model('cpu')
    dls = folder_dls(base, batch_size=4, device='cpu', size=S)
    cfg = QUICK.replace(width=16, epochs=1, size=S, lr=1e-12, device='cpu')
    train_one(cfg, dls, tmp_path/'tuned', progress=False, init=ref.state_dict())
    tuned, _ = inference.load_model(tmp_path/'tuned'/'best.pt', 'cpu')
    params = lambda m: dict(m.named_parameters())
    for k, p in params(tuned).items(): torch.testing.assert_close(p, params(ref)[k], atol=1e-6, rtol=0, msg=k)
    train_one(cfg, dls, tmp_path/'scratch', progress=False)
    scratch, _ = inference.load_model(tmp_path/'scratch'/'best.pt', 'cpu')
    assert (params(scratch)['inc.0.0.weight'] - params(ref)['inc.0.0.weight']).abs().max() > 0.01


def test_finetune_checks_the_architecture(base, tmp_path):
    out = tmp_path/'never'
    with pytest.raises(BadInput, match='use --experiment 1 or 2'): cli.train(str(base), str(out), experiment='3', finetune=True)
    with pytest.raises(BadInput, match='whose width is 16: drop --width 8'): cli.train(str(base), str(out), width=8, finetune=True)
    with pytest.raises(BadInput, match='--data is required'): cli.train(None, str(out))


def _cmd(name):
    "The installed console script `name` when it is this package's, else `python -c` making the same call."
    exe, func = Path(sys.executable).parent/name, name.replace('-', '_')
    if exe.exists() and 'unet_tutorial.cli' in exe.read_text(errors='replace'): return [str(exe)]
    return [sys.executable, '-c', f'import sys; from unet_tutorial.cli import {func}; sys.exit({func}())']


def run(tmp, name, *args, timeout=600):
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'IN_TEST': '', 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
    return subprocess.run(_cmd(name) + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)


def test_unet_train_quick_end_to_end(tmp_path):
    "The acceptance command on a folder written here; its closing message's unet-predict command works as printed."
    make_synthetic_folder(tmp_path/'my_pets', n=20, size=64)
    t = time.time()
    r = run(tmp_path, 'unet-train', '--data', 'my_pets', '--out', 'runs/mine', '--preset', 'quick')
    dt = time.time() - t
    print(f'unet-train --preset quick: {dt:.1f}s on one thread')
    assert r.returncode == 0, r.stderr
    assert 'masks use 0/255: treating 255 as foreground' in r.stdout and dt < 180
    best = tmp_path/'runs/mine/maxpool_transpose_bce/seed0/best.pt'
    assert f'Model: {best.relative_to(tmp_path)}' in r.stdout
    rec = json.loads((best.parent/'metrics.json').read_text())
    assert rec['epochs'] == QUICK.epochs and rec['config']['size'] == QUICK.size and 0 <= rec['test']['iou'] <= 1
    for f in ('results.md', 'results.json', 'curves.png', 'settings.json'): assert (tmp_path/'runs/mine'/f).is_file(), f
    line = next(l.strip() for l in r.stdout.splitlines() if l.strip().startswith('unet-predict ') and '--out' in l)
    p = run(tmp_path, 'unet-predict', *shlex.split(line)[1:], '--device', 'cpu')   # the printed command, as printed
    assert p.returncode == 0, p.stderr
    mask = Image.open(tmp_path/'runs/mine/predictions'/f"{Path(shlex.split(line)[1]).stem}_mask.png")
    assert mask.size == (64, 64) and set(np.unique(np.asarray(mask))) <= {0, 255}
    mtime = best.stat().st_mtime_ns
    again = run(tmp_path, 'unet-train', '--data', 'my_pets', '--out', 'runs/mine', '--preset', 'quick')
    assert again.returncode == 0 and 'finished already' in again.stdout and best.stat().st_mtime_ns == mtime
    other = run(tmp_path, 'unet-train', '--data', 'my_pets', '--out', 'runs/mine', '--preset', 'quick', '--lr', '0.01')
    assert other.returncode == 2 and f'lr: {QUICK.lr} there, 0.01 now' in other.stderr


def test_unet_train_resumes_an_interrupted_run(base, tmp_path):
    "The same command again continues from last.pt: the finished epochs are kept, not retrained."
    args = [str(base), str(tmp_path/'out')]
    kw = dict(preset='quick', epochs=2, size=S, width=4, device='cpu', schedule='none')   # no schedule: epochs may grow
    with redirect_stdout(StringIO()): cli.train(*args, **{**kw, 'epochs': 1})
    run_dir = tmp_path/'out'/'maxpool_transpose_bce'/'seed0'
    first = json.loads((run_dir/'history.json').read_text())
    (run_dir/'metrics.json').unlink()   # as if stopped after epoch 1 of 2
    with redirect_stdout(StringIO()): rec = cli.train(*args, **kw)
    hist = json.loads((run_dir/'history.json').read_text())
    assert rec['epochs'] == 2 and hist[0] == first[0]


@pytest.fixture
def ort():
    return pytest.importorskip('onnxruntime', reason='the ONNX export needs the onnx extra: pip install unet_tutorial[onnx]')


def test_onnx_round_trip(ort, base, tmp_path):
    torch.manual_seed(0)
    m = UNet(width=4, depth=2).eval()
    with torch.no_grad():   # BatchNorm statistics that are not 0 and 1, so that eval mode matters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d): mod.running_mean.uniform_(-.5, .5); mod.running_var.uniform_(.5, 2)
    ckpt = tmp_path/'tiny.pt'
    torch.save(dict(model=m.state_dict(), model_config=m.config, size=S), ckpt)
    diff = export.export_onnx(ckpt, tmp_path/'tiny.onnx')
    print(f'ONNX round trip: max abs difference of the probabilities {diff:.2e}')
    assert 0 <= diff <= 1e-3
    sess = ort.InferenceSession(str(tmp_path/'tiny.onnx'), providers=['CPUExecutionProvider'])
    data = read_folder(base, size=S)
    x = inference.normalize(data.images['train'])                              # real images, (N, 3, S, S)
    for batch in (x[:1], x, torch.nn.functional.interpolate(x, size=(S + 4, S + 8))):   # any batch, any size /4
        p_onnx = torch.from_numpy(sess.run(None, {'image': batch.numpy()})[0]).sigmoid()
        with torch.no_grad(): p_torch = m(batch).sigmoid()
        assert p_onnx.shape == p_torch.shape and (p_onnx - p_torch).abs().max() <= 1e-3
        assert ((p_onnx > .5) == (p_torch > .5)).float().mean() > 0.999       # the same masks
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta['training_size'] == str(S) and 'multiples of 4' in meta['input']
    assert not list(tmp_path.glob('.*.tmp'))


def test_onnx_mismatch_writes_nothing(ort, tmp_path, monkeypatch):
    monkeypatch.setattr(export, 'onnx_difference', lambda *a, **k: 0.5)
    with pytest.raises(ValueError, match='not written: .* differ from PyTorch.s by up to 0.5, more than atol=0.001'):
        export.export_onnx(UNet(width=4, depth=2), tmp_path/'bad.onnx', size=S)
    assert list(tmp_path.iterdir()) == []


def test_onnx_extra_missing_says_how_to_install(tmp_path, monkeypatch, capsys):
    real = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, 'find_spec', lambda m, *a: None if m == 'onnxruntime' else real(m, *a))
    with pytest.raises(ImportError, match=r'needs onnxruntime: pip install unet_tutorial\[onnx\]'):
        export.export_onnx(UNet(width=4, depth=2), tmp_path/'x.onnx')
    torch.save(dict(model=UNet(width=4, depth=2).state_dict(), model_config=UNet(width=4, depth=2).config), tmp_path/'t.pt')
    assert cli.unet_predict(['--checkpoint', str(tmp_path/'t.pt'), '--onnx', str(tmp_path/'x.onnx')]) == 2
    assert 'pip install unet_tutorial[onnx]' in capsys.readouterr().err and not (tmp_path/'x.onnx').exists()


def test_unet_predict_onnx_from_the_shell(ort, tmp_path):
    m = UNet(width=4, depth=2)
    torch.save(dict(model=m.state_dict(), model_config=m.config, size=S), tmp_path/'t.pt')
    r = run(tmp_path, 'unet-predict', '--checkpoint', 't.pt', '--onnx', 'model.onnx')
    assert r.returncode == 0, r.stderr
    assert 'wrote model.onnx: checked with onnxruntime' in r.stdout and (tmp_path/'model.onnx').stat().st_size > 1000


@pytest.mark.parametrize('lesson, module', [('21_own_data', 'folder'), ('20_pairs', 'pairs'), ('19_masks', 'masks')])
def test_lesson_exercise_solutions(tmp_path, monkeypatch, lesson, module):
    "The lessons' exercises (two each): with the solutions, every check prints 'correct' (and with the stubs, it does not)."
    cells = [c for c in json.loads((ROOT/'nbs'/f'{lesson}.ipynb').read_text())['cells']]
    start = next(i for i, c in enumerate(cells) if c['cell_type'] == 'markdown' and ''.join(c['source']).startswith('## Exercises'))
    src = lambda c: ''.join(c['source'])
    imports = [src(c) for c in cells[:start] if c['cell_type'] == 'code' and src(c).strip()
               and all(l.startswith(('import ', 'from ', '#')) or not l.strip() for l in src(c).splitlines())]
    exercises = [src(c) for c in cells[start:-1] if c['cell_type'] == 'code']
    monkeypatch.chdir(tmp_path)
    lesson_module = importlib.import_module(f'unet_tutorial.{module}')   # what the lesson's exported cells define
    ns, out = {k: v for k, v in vars(lesson_module).items() if not k.startswith('__')}, StringIO()
    with redirect_stdout(out):
        for code in imports + exercises: exec(compile(code, f'{lesson}.ipynb', 'exec'), ns)
    lines = out.getvalue().splitlines()
    assert lines.count('correct') == 2, out.getvalue()
    assert sum(l.startswith('no answer yet') for l in lines) == 2, out.getvalue()    # the stubs, checked before the solutions
    assert not any(l.startswith('not yet') for l in lines), out.getvalue()
