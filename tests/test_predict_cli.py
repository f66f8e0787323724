"""`unet-predict` end to end: photos of any format and size in, mask and overlay at the original size out, and a
one-line message (no traceback, non-zero exit) for an unreadable photo or an unusable checkpoint."""
import os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unet_tutorial.cli import unet_predict
from unet_tutorial.inference import load_model, predict, predict_files
from unet_tutorial.model import UNet

SIZES = {'odd.jpg': (333, 257), 'grey.png': (200, 150), 'rgba.png': (97, 61), 'palette.png': (64, 65),
         'phone.jpg': (120, 80)}  # (width, height) as the photo is seen, upright


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    "A folder with a tiny checkpoint, broken checkpoints, photos in several formats and a file that is no image."
    d = tmp_path_factory.mktemp('predict')
    torch.manual_seed(0)
    m = UNet(width=4, depth=2)
    torch.save({'model': m.state_dict(), 'model_config': m.config, 'epoch': 0, 'history': []}, d/'tiny.pt')
    wide = UNet(width=8, depth=2)
    torch.save({'model': wide.state_dict(), 'model_config': m.config}, d/'mismatch.pt')  # weights of another width
    torch.save({'model': m.state_dict()}, d/'no_config.pt')
    (d/'corrupt.pt').write_bytes((d/'tiny.pt').read_bytes()[:300])
    rng = np.random.default_rng(0)
    rgb = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    p = d/'photos'; p.mkdir()
    rgb(*SIZES['odd.jpg']).save(p/'odd.jpg')
    rgb(*SIZES['grey.png']).convert('L').save(p/'grey.png')
    rgb(*SIZES['rgba.png']).convert('RGBA').save(p/'rgba.png')
    rgb(*SIZES['palette.png']).convert('P').save(p/'palette.png')
    exif = Image.Exif(); exif[0x0112] = 6  # EXIF orientation: rotate 90° to view
    rgb(80, 120).save(p/'phone.jpg', exif=exif)  # stored 80×120, seen 120×80
    (p/'broken.jpg').write_bytes(b'\xff\xd8\xff not really a jpeg')
    return d


def run_cli(work, *args):
    "Run `unet-predict` (the installed one, else `python -c` making the same call) and return the CompletedProcess."
    exe = Path(sys.executable).parent/'unet-predict'
    if exe.exists() and 'unet_tutorial.cli' in exe.read_text(errors='replace'): cmd = [str(exe)]
    else: cmd = [sys.executable, '-c', 'import sys; from unet_tutorial.cli import unet_predict; sys.exit(unet_predict())']
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def test_every_format_at_its_own_size(work, tmp_path):
    photos = [work/'photos'/n for n in SIZES]
    r = run_cli(work, *photos, '--checkpoint', work/'tiny.pt', '--out', tmp_path/'out', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    assert f"to {tmp_path/'out'}" in r.stdout  # the --out folder, as given
    for name, size in SIZES.items():
        stem = Path(name).stem
        mask, over = Image.open(tmp_path/'out'/f'{stem}_mask.png'), Image.open(tmp_path/'out'/f'{stem}_overlay.png')
        assert (mask.mode, mask.size) == ('L', size), name
        assert (over.mode, over.size) == ('RGB', size), name
        assert set(np.unique(np.asarray(mask))) <= {0, 255}, name


def test_unreadable_photo_is_named_and_the_others_done(work, tmp_path):
    r = run_cli(work, work/'photos'/'broken.jpg', work/'photos'/'grey.png', '--checkpoint', work/'tiny.pt',
                '--out', tmp_path, '--device', 'cpu')
    assert r.returncode == 1
    assert 'broken.jpg' in r.stderr and 'Traceback' not in r.stderr
    assert Image.open(tmp_path/'grey_mask.png').size == SIZES['grey.png']
    assert not (tmp_path/'broken_mask.png').exists()


def test_checkpoint_of_another_configuration(work, tmp_path):
    r = run_cli(work, work/'photos'/'grey.png', '--checkpoint', work/'mismatch.pt', '--out', tmp_path/'out')
    assert r.returncode == 2
    assert 'mismatch.pt' in r.stderr and 'do not fit' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'out').exists()  # nothing done


@pytest.mark.parametrize('ckpt,says', [('missing.pt', 'no such file'), ('corrupt.pt', 'cannot read'),
                                       ('no_config.pt', 'model_config'), ('mismatch.pt', 'of another shape')])
def test_unusable_checkpoint_exit_code(work, tmp_path, capsys, ckpt, says):
    code = unet_predict([str(work/'photos'/'grey.png'), '--checkpoint', str(work/ckpt), '--out', str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and ckpt in err and says in err


@pytest.mark.parametrize('threshold', [0, 1.5])
def test_threshold_out_of_range(work, tmp_path, threshold):
    with pytest.raises(ValueError, match='threshold'):
        predict_files([work/'photos'/'grey.png'], work/'tiny.pt', tmp_path, threshold=threshold)


def test_threshold_moves_the_mask(work, tmp_path):
    "A lower threshold can only add pet pixels, and the threshold is really used: the masks follow it."
    photo = work/'photos'/'odd.jpg'
    model, _ = load_model(work/'tiny.pt', 'cpu')
    p = predict(model, photo, size=128).numpy()                      # what predict_files thresholds (no size saved: 128)
    t_lo, t_hi = np.quantile(p, 0.25), np.quantile(p, 0.75)          # thresholds with pixels on both sides
    low, _ = predict_files([photo], work/'tiny.pt', tmp_path/'low', threshold=t_lo, device='cpu', verbose=False)
    high, _ = predict_files([photo], work/'tiny.pt', tmp_path/'high', threshold=t_hi, device='cpu', verbose=False)
    lo, hi = (np.asarray(Image.open(w[photo][0])) > 0 for w in (low, high))
    assert (hi <= lo).all() and lo.sum() > hi.sum()
    assert abs(lo.mean() - (p > t_lo).mean()) < 0.05 and abs(hi.mean() - (p > t_hi).mean()) < 0.05


def test_same_name_in_two_folders_does_not_overwrite(work, tmp_path):
    other = tmp_path/'other'; other.mkdir()
    Image.open(work/'photos'/'grey.png').resize((31, 17)).save(other/'grey.png')
    written, failed = predict_files([work/'photos'/'grey.png', other/'grey.png'], work/'tiny.pt', tmp_path/'out',
                                    device='cpu', verbose=False)
    assert not failed and len({m for m, _ in written.values()}) == 2
    assert Image.open(written[other/'grey.png'][0]).size == (31, 17)


def test_option_spellings(work, tmp_path):
    "Every option of the old command still parses."
    photo = str(work/'photos'/'grey.png')
    assert unet_predict([photo, '--checkpoint', str(work/'tiny.pt'), '--out', str(tmp_path), '--device', 'cpu',
                         '--threshold', '0.4', '--size', '64']) == 0


# Issue 15: nothing lost, nothing silently wrong.

def test_existing_output_is_not_replaced(work, tmp_path):
    "A mask that was there before the run (maybe the user's ground truth) is kept unless --overwrite says otherwise."
    out = tmp_path/'photos'; out.mkdir()
    truth = out/'grey_mask.png'; Image.new('L', (5, 5), 255).save(truth); before = truth.read_bytes()
    r = run_cli(work, work/'photos'/'grey.png', work/'photos'/'odd.jpg', '--checkpoint', work/'tiny.pt',
                '--out', out, '--device', 'cpu')
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert str(truth) in r.stderr and '--overwrite' in r.stderr
    assert truth.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ['grey_mask.png']  # nothing written
    r = run_cli(work, work/'photos'/'grey.png', '--checkpoint', work/'tiny.pt', '--out', out, '--device', 'cpu',
                '--overwrite')
    assert r.returncode == 0, r.stderr
    assert Image.open(truth).size == SIZES['grey.png'] and not list(out.glob('.*.tmp'))


def test_an_input_is_never_an_output(work, tmp_path):
    (tmp_path/'x.png').write_bytes((work/'photos'/'grey.png').read_bytes())
    (tmp_path/'x_mask.png').write_bytes((work/'photos'/'grey.png').read_bytes())  # a photo named like an output
    before = (tmp_path/'x_mask.png').read_bytes()
    code = unet_predict([str(tmp_path/'x.png'), str(tmp_path/'x_mask.png'), '--checkpoint', str(work/'tiny.pt'),
                         '--out', str(tmp_path), '--device', 'cpu', '--overwrite'])
    assert code == 2 and (tmp_path/'x_mask.png').read_bytes() == before


def _peak_rise(photo, ckpt, out):
    "Run predict_files on `photo` in a fresh process; the rise of its peak RSS in MiB over a small photo's run."
    script = f'''
import resource, sys
from PIL import Image
from unet_tutorial.inference import predict_files
Image.new('RGB', (64, 48), 'white').save({str(out)!r} + '_small.png')
predict_files([{str(out)!r} + '_small.png'], {str(ckpt)!r}, {str(out)!r} + '_s', device='cpu', verbose=False)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
w, f = predict_files([{str(photo)!r}], {str(ckpt)!r}, {str(out)!r}, device='cpu', verbose=False)
assert not f, f
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) / 1024)'''
    r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return float(r.stdout.split()[-1])


@pytest.mark.skipif(sys.platform != 'linux', reason='ru_maxrss is in kB on Linux only')
def test_large_photo_memory(work, tmp_path):
    "A 6000×4000 photo: masks at its size, with the photo and the mask as the only full-size arrays (was 1.1 GiB)."
    big = tmp_path/'big.png'; Image.new('RGB', (6000, 4000), (120, 80, 40)).save(big)
    rise = _peak_rise(big, work/'tiny.pt', tmp_path/'out')
    print(f'peak RSS rise for a 6000×4000 photo: {rise:.0f} MiB')
    assert rise < 400, f'{rise:.0f} MiB for 24 megapixels (the photo as bytes is 69 MiB, its mask 23 MiB)'
    assert Image.open(tmp_path/'out'/'big_mask.png').size == (6000, 4000)
    assert Image.open(tmp_path/'out'/'big_overlay.png').size == (6000, 4000)


def test_over_the_pixel_cap_is_refused_by_name(work, tmp_path):
    Image.new('1', (12_000, 9_000)).save(tmp_path/'huge.png')    # 108 megapixels in a few kB
    r = run_cli(work, tmp_path/'huge.png', work/'photos'/'grey.png', '--checkpoint', work/'tiny.pt',
                '--out', tmp_path/'out', '--device', 'cpu')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert 'huge.png: 12000×9000 pixels is more than the 100 megapixels' in r.stderr
    assert sorted(p.name for p in (tmp_path/'out').iterdir()) == ['grey_mask.png', 'grey_overlay.png']


@pytest.mark.parametrize('size', ['7', '1', '-5', '0', '100000', '66'])
def test_bad_size(work, tmp_path, capsys, size):
    "tiny.pt has depth 2: --size must be a multiple of 4 up to 2048; 0 is not ignored."
    code = unet_predict([str(work/'photos'/'grey.png'), '--checkpoint', str(work/'tiny.pt'), '--out', str(tmp_path/'o'),
                         '--device', 'cpu', '--size', size])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('unet-predict: error: --size must be a multiple of 4'), err
    assert f'got {size}' in err and not (tmp_path/'o').exists()


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='no named pipes here')
def test_fifo_and_folder_are_not_images(work, tmp_path):
    "A named pipe used to block unet-predict forever; it and a folder are now skipped with a message."
    os.mkfifo(tmp_path/'pipe.jpg')
    r = run_cli(work, tmp_path/'pipe.jpg', work/'photos', work/'photos'/'grey.png', '--checkpoint', work/'tiny.pt',
                '--out', tmp_path/'out', '--device', 'cpu')  # run_cli's timeout: a hang fails the test
    assert r.returncode == 1, r.stderr
    assert 'pipe.jpg: it is a FIFO' in r.stderr and f"{work/'photos'}: it is a folder" in r.stderr
    assert (tmp_path/'out'/'grey_mask.png').exists()


class NotATensor: "An object a weights-only load refuses."


@pytest.mark.parametrize('how', ['object', 'legacy', 'folder'])
def test_checkpoint_messages_do_not_mislead(work, tmp_path, capsys, how):
    "Never torch's advice to load with weights_only=False, nor the trainer's 'delete it and rerun'."
    ckpt = tmp_path/'model.pt'
    if how == 'object': torch.save({'model': NotATensor()}, ckpt)
    elif how == 'legacy': torch.save({'model': NotATensor()}, ckpt, _use_new_zipfile_serialization=False)
    else: ckpt.mkdir()
    code = unet_predict([str(work/'photos'/'grey.png'), '--checkpoint', str(ckpt), '--out', str(tmp_path/'o')])
    err = capsys.readouterr().err
    assert code == 2 and 'model.pt' in err and 'Traceback' not in err, err
    assert 'weights_only' not in err and 'delete it' not in err, err
    assert ('is a folder' if how == 'folder' else 'checkpoint written by training') in err, err


def test_checkpoint_help_shows_what_unet_compare_writes(capsys):
    from unet_tutorial.model import get_experiment
    with pytest.raises(SystemExit): unet_predict(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert 'runs/compare/maxpool_transpose_bce/seed0/best.pt' in text and '--overwrite' in text
    get_experiment('maxpool_transpose_bce')  # a real experiment name (the layout itself: test_compare_cli)
