"""Issue 20 (training side): `unet-train` and `unet-compare` refuse what they cannot do before writing anything.

An --out folder holding a user's files, a batch of one image at a 1×1 bottleneck, seeds past numpy's limit, widths and
depths no machine holds, a read-only tensor cache, --schedule spelt in capitals, and Python calls in shell messages.
Every test runs the commands in this process on tiny data (a 24-image folder at 32 pixels, width 4, one epoch).
"""
import json, os, re, time

import pytest
import torch

from unet_tutorial import cli, model as model_mod
from unet_tutorial.core import BadInput
from unet_tutorial.synthetic import make_synthetic_folder

T = ['--size', '32', '--width', '4', '--batch-size', '8', '--threads', '1', '--device', 'cpu', '--epochs', '1']


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv('UNET_TUTORIAL_CACHE', str(tmp_path/'cache'))
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    torch.set_num_threads(1)


@pytest.fixture
def folder(tmp_path):
    return make_synthetic_folder(tmp_path/'data', n=24, size=32)


def train(capsys, *args):
    "Run `unet-train ARGS` here; return (status, stdout, stderr)."
    r = cli.unet_train([str(a) for a in args]); o = capsys.readouterr()
    return r, o.out, o.err


def compare(capsys, *args):
    r = cli.unet_compare([str(a) for a in args]); o = capsys.readouterr()
    return r, o.out, o.err


def refused(r, err, prog='unet-train'):
    assert r == 2, err
    assert err.startswith(f'{prog}: error:') and 'Traceback' not in err, err


# --- item 2: an --out folder that holds files but no run --------------------------------------------------------

def test_train_refuses_out_with_user_files(tmp_path, capsys, folder):
    out = tmp_path/'mine'; out.mkdir(); (out/'results.md').write_text('my notes'); (out/'curves.png').write_bytes(b'png')
    r, _, err = train(capsys, '--data', folder, '--out', out, *T)
    refused(r, err)
    assert str(out) in err and 'empty or new folder' in err and '--out' in err, err
    assert (out/'results.md').read_text() == 'my notes' and (out/'curves.png').read_bytes() == b'png'
    assert sorted(p.name for p in out.iterdir()) == ['curves.png', 'results.md']   # nothing written
    # hidden files do not count, and a run folder (settings.json) is ours: the same command then runs, and again
    for p in out.iterdir(): p.unlink()
    (out/'.DS_Store').write_bytes(b'')
    assert train(capsys, '--data', folder, '--out', out, *T)[0] == 0
    assert train(capsys, '--data', folder, '--out', out, *T)[0] == 0


def test_compare_refuses_out_with_user_files(tmp_path, capsys):
    out = tmp_path/'cmp'; out.mkdir(); (out/'iou.png').write_bytes(b'mine')
    args = ['--quick', '--experiments', '1', '--out', out, '--size', '32', '--width', '4', '--epochs', '1']
    r, _, err = compare(capsys, *args)
    refused(r, err, 'unet-compare')
    assert str(out) in err and 'empty or new folder' in err, err
    assert sorted(p.name for p in out.iterdir()) == ['iou.png']   # not even the synthetic data of --quick
    # the synthetic pets a previous --quick made there are ours
    (out/'iou.png').unlink()
    from unet_tutorial.synthetic import make_synthetic_pets
    make_synthetic_pets(out/'synthetic-pets')
    r, _, err = compare(capsys, *args)
    assert r == 0, err


# --- item 12: BatchNorm and a batch of one image at a 1×1 bottleneck --------------------------------------------

def test_batch_size_one_at_1x1_bottleneck(tmp_path, capsys, folder):
    out = tmp_path/'out'
    r, _, err = train(capsys, '--data', folder, '--out', out, *T, '--size', '16', '--batch-size', '1')
    refused(r, err)
    assert '1×1' in err and '--batch-size' in err and '--size' in err, err
    assert 'Expected more than 1 value' not in err and not out.exists()


def test_one_training_image_at_1x1_bottleneck(tmp_path, capsys):
    data, out = make_synthetic_folder(tmp_path/'two', n=2, size=16), tmp_path/'out'
    r, _, err = train(capsys, '--data', data, '--out', out, *T, '--size', '16')
    refused(r, err)
    assert '1×1' in err and '--size' in err, err
    assert not (out/'settings.json').exists()


def test_run_that_never_finished_an_epoch_does_not_lock_out(tmp_path, capsys, folder, monkeypatch):
    out = tmp_path/'out'
    from unet_tutorial import experiments
    real_fit = experiments.Trainer.fit
    def dies(self, epochs=None, resume=False):   # a run killed in its first epoch: settings.json and an epoch-0 last.pt
        self.save('last'); raise FloatingPointError('Epoch 1 left the validation loss (nan) NaN or infinite: nothing was saved.')
    monkeypatch.setattr(experiments.Trainer, 'fit', dies)
    r, _, err = train(capsys, '--data', folder, '--out', out, *T, '--lr', '10')
    assert r == 1 and (out/'settings.json').exists(), err
    monkeypatch.setattr(experiments.Trainer, 'fit', real_fit)
    r, _, err = train(capsys, '--data', folder, '--out', out, *T, '--width', '8')   # other settings: accepted
    assert r == 0, err
    assert json.loads((out/'settings.json').read_text())['config']['width'] == 8
    # a folder with a finished epoch is locked
    r, _, err = train(capsys, '--data', folder, '--out', out, *T, '--width', '4')
    refused(r, err)
    assert 'other settings' in err and 'width' in err, err


# --- item 15: seeds past numpy's limit ---------------------------------------------------------------------------

@pytest.mark.parametrize('opt', ['--seed', '--split-seed', '--seeds'])
def test_seed_limit(tmp_path, capsys, folder, opt):
    out = tmp_path/'out'
    if opt == '--seeds': r, _, err = compare(capsys, '--quick', '--out', out, '--seeds', f'0,{2**32}'); prog = 'unet-compare'
    else: r, _, err = train(capsys, '--data', folder, '--out', out, *T, opt, 2**32); prog = 'unet-train'
    refused(r, err, prog)
    assert opt in err and '4294967295' in err, err
    assert not out.exists()


# --- item 16: widths and depths no machine holds -----------------------------------------------------------------

@pytest.mark.parametrize('opt,v,want', [('--width', 100000, '1024'), ('--depth', 20, '8')])
def test_width_depth_bounds(tmp_path, capsys, folder, opt, v, want):
    out = tmp_path/'out'
    r, _, err = train(capsys, '--data', folder, '--out', out, *T, opt, v)
    refused(r, err)
    assert opt in err and f'at most {want}' in err and '1048576' not in err, err
    assert not out.exists()


def test_memory_needed_is_checked_before_building(tmp_path, capsys, folder, monkeypatch):
    monkeypatch.setattr(model_mod, 'memory_bytes', lambda device=None: 2**20)   # a machine with 1 MiB
    t = time.perf_counter()
    with pytest.raises(ValueError, match='GB'): model_mod.UNet(width=64, depth=4)
    r, _, err = train(capsys, '--data', folder, '--out', tmp_path/'out', *T)
    refused(r, err)
    assert 'GB' in err and '--width' in err and not (tmp_path/'out').exists(), err
    assert time.perf_counter() - t < 30


def test_unet_bounds_and_huge_checkpoint(tmp_path):
    from unet_tutorial.inference import CheckpointError, load_model
    with pytest.raises(ValueError, match='at most 1024'): model_mod.UNet(width=200000)
    with pytest.raises(ValueError, match='at most 8'): model_mod.UNet(width=4, depth=20)
    ckpt = tmp_path/'best.pt'
    torch.save(dict(model={}, epoch=3, size=128, model_config=dict(in_channels=3, out_channels=1, width=200000, depth=4,
                                                                   down='maxpool', up='transpose', up_mode='nearest', skips=True)), ckpt)
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match='at most 1024'): load_model(ckpt, 'cpu')
    assert time.perf_counter() - t < 10


# --- item 21: a read-only tensor cache -----------------------------------------------------------------------------

def test_read_only_cache_falls_back_to_memory(tmp_path, monkeypatch, capsys):
    from unet_tutorial.loaders import load_cached
    from unet_tutorial.data import read_split
    from unet_tutorial.synthetic import make_synthetic_pets
    pets = make_synthetic_pets(tmp_path/'pets', n_trainval=16, n_test=4, size=32)
    if os.geteuid() == 0:   # root writes into read-only folders: a path under a file fails for root too
        (tmp_path/'afile').write_text('x'); cache = tmp_path/'afile'/'sub'
    else: cache = tmp_path/'ro'; cache.mkdir(); cache.chmod(0o500)
    monkeypatch.setenv('UNET_TUTORIAL_CACHE', str(cache))
    names = read_split(pets, 'trainval')
    try: ims, tris = load_cached(pets, names, 32)
    finally:
        if cache.name == 'ro': cache.chmod(0o700)
    assert ims.shape == (16, 3, 32, 32) and tris.shape == (16, 32, 32)
    err = capsys.readouterr().err
    assert str(cache) in err and 'UNET_TUTORIAL_CACHE' in err and len(err.strip().splitlines()) == 1, err
    r, _, err = compare(capsys, '--data', pets, '--out', tmp_path/'out', '--experiments', '1', '--size', '32',
                        '--width', '4', '--epochs', '1', '--threads', '1', '--device', 'cpu')
    assert r == 0 and 'Read-only' not in err and 'Traceback' not in err, err


# --- item 23: --schedule in any case, messages in options ----------------------------------------------------------

def test_schedule_any_case(tmp_path, capsys, folder, monkeypatch):
    seen = []
    def fake(cfg, *a, **k): seen.append(cfg.schedule); raise BadInput('stop here')
    def fake_cmp(root, out, cfg, *a, **k): seen.append(cfg.schedule); raise BadInput('stop here')
    monkeypatch.setattr(cli, '_train_folder', fake); monkeypatch.setattr(cli, 'run_comparison', fake_cmp)
    for spelling, want in [('Cosine', 'cosine'), ('ONECYCLE', 'onecycle'), ('NONE', None)]:
        seen.clear()
        r, _, err = train(capsys, '--data', folder, '--out', tmp_path/'a', *T, '--schedule', spelling)
        assert 'stop here' in err, err
        r, _, err = compare(capsys, '--quick', '--out', tmp_path/'b', '--schedule', spelling)
        assert 'stop here' in err, err
        assert seen == [want, want], (spelling, seen)


PY_CALL = re.compile(r'\w\([^)]*=')   # e.g. fit(3, resume=True), get_pets(root, download=True)


def test_stop_message_in_options(tmp_path, capsys, folder, monkeypatch):
    from unet_tutorial import trainer
    def interrupted(self): raise KeyboardInterrupt
    monkeypatch.setattr(trainer.Trainer, 'one_epoch', interrupted)
    r, out, err = train(capsys, '--data', folder, '--out', tmp_path/'out', *T)
    assert r == 130, err
    assert not PY_CALL.search(out + err) and 'resume=True' not in out, out
    assert 'same command' in out, out


def test_missing_data_message_in_options(tmp_path, capsys):
    r, _, err = compare(capsys, '--data', tmp_path/'nowhere', '--out', tmp_path/'out')
    refused(r, err, 'unet-compare')
    assert not PY_CALL.search(err) and 'get_pets' not in err and 'make_synthetic_pets' not in err, err
    assert '--download' in err and '--quick' in err, err


def test_failed_trimaps_message_in_options(tmp_path, capsys):
    from PIL import Image
    from unet_tutorial.data import read_split
    from unet_tutorial.synthetic import make_synthetic_pets
    pets = make_synthetic_pets(tmp_path/'pets', n_trainval=16, n_test=4, size=32)
    for n in read_split(pets, 'test'):   # every test trimap all background: failed annotations
        p = pets/'oxford-iiit-pet'/'annotations'/'trimaps'/f'{n}.png'
        Image.new('L', Image.open(p).size, 2).save(p)
    r, _, err = compare(capsys, '--data', pets, '--out', tmp_path/'out', '--size', '32', '--width', '4', '--epochs', '1',
                        '--device', 'cpu', '--threads', '1')
    refused(r, err, 'unet-compare')
    assert 'drop_bad' not in err and '--keep-bad-trimaps' in err, err


def test_amp_warning_in_options(tmp_path, capsys, folder, monkeypatch):
    from unet_tutorial import core
    monkeypatch.setattr(core, 'cpu_bf16_native', lambda: False)   # a CPU without native bf16 (`amp_policy` asks core)
    r, _, err = train(capsys, '--data', folder, '--out', tmp_path/'out', *T, '--amp', 'BF16')
    assert r == 0, err
    assert 'unet-train: warning: --amp bf16 on a CPU' in err and '--amp auto or --amp off' in err, err
    assert "amp='auto'" not in err and 'UserWarning' not in err, err
