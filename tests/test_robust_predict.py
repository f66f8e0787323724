"""Issue 20: `unet-predict`, checkpoints and the ONNX export refuse bad input by name and never lose a file."""
import errno, os, subprocess, sys
from importlib.util import find_spec
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from unet_tutorial.cli import unet_predict
from unet_tutorial.core import BadInput
from unet_tutorial.checkpoints import read_checkpoint
from unet_tutorial.inference import CheckpointError, load_model, predict_files
from unet_tutorial.export import ONNX_PACKAGES, export_onnx
from unet_tutorial.model import UNet
from unet_tutorial.reference import make_reference

HAVE_ONNX = all(find_spec(m) for m in ONNX_PACKAGES)
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason='the onnx extra (pip install unet_tutorial[onnx]) is not installed')


def save_ckpt(path, size=32, **extra):
    "A tiny U-Net (width 4, depth 2) saved as training would after an epoch."
    torch.manual_seed(0)
    m = UNet(width=4, depth=2)
    torch.save({'model': m.state_dict(), 'model_config': m.config, 'size': size, 'epoch': 1, **extra}, path)
    return path


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp('robust')
    save_ckpt(d/'tiny.pt')
    p = d/'photos'; p.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(p/'cat.png')
    return d


def cli(*args):
    "unet-predict in a fresh process: (exit status, stdout, stderr)."
    cmd = [sys.executable, '-c', 'import sys; from unet_tutorial.cli import unet_predict; sys.exit(unet_predict())']
    r = subprocess.run(cmd + [str(a) for a in args] + ['--device', 'cpu'], capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def test_01_onnx_never_replaces_an_input(work, tmp_path, capsys):
    ckpt = tmp_path/'best.pt'; ckpt.write_bytes((work/'tiny.pt').read_bytes()); before = ckpt.read_bytes()
    photo = tmp_path/'cat.png'; photo.write_bytes((work/'photos'/'cat.png').read_bytes())
    for extra in ([], ['--overwrite']):
        assert unet_predict(['--checkpoint', str(ckpt), '--onnx', str(ckpt), *extra]) == 2
        assert 'is the checkpoint being exported' in capsys.readouterr().err
        assert unet_predict([str(photo), '--checkpoint', str(ckpt), '--out', str(tmp_path/'o'), '--onnx', str(photo), *extra]) == 2
        assert 'is one of the photos to segment' in capsys.readouterr().err
    assert ckpt.read_bytes() == before and photo.read_bytes() == (work/'photos'/'cat.png').read_bytes()
    assert not (tmp_path/'o').exists()   # refused before any work


def test_01_onnx_refuses_an_existing_file(work, tmp_path, capsys):
    old = tmp_path/'model.onnx'; old.write_bytes(b'mine')
    assert unet_predict(['--checkpoint', str(work/'tiny.pt'), '--onnx', str(old)]) == 2
    err = capsys.readouterr().err
    assert str(old) in err and '--overwrite' in err and old.read_bytes() == b'mine'
    assert 'overwrite=True' not in err   # a shell message names options, not Python arguments
    if HAVE_ONNX:
        assert unet_predict(['--checkpoint', str(work/'tiny.pt'), '--onnx', str(old), '--overwrite']) == 0
        assert old.stat().st_size > 1000


def test_03_make_reference_keeps_the_file_it_would_replace(tmp_path):
    run = tmp_path/'run'; run.mkdir(); save_ckpt(run/'best.pt')
    (run/'metrics.json').write_text('{"test": {"iou": 0.5}}')
    out = make_reference(run, tmp_path/'weights'/'ref.pt', command='unet-compare ...'); before = out.read_bytes()
    with pytest.raises(ValueError, match='MiB'): make_reference(run, out, max_mib=1e-4)
    assert out.read_bytes() == before and not list(out.parent.glob('.*.tmp'))   # the shipped model is still there
    with pytest.raises(BadInput, match='of the run it packages'): make_reference(run, run/'best.pt')


def test_08_empty_checkpoint_or_onnx_is_refused(work, tmp_path, capsys):
    photo = str(work/'photos'/'cat.png')
    assert unet_predict([photo, '--checkpoint', '', '--out', str(tmp_path/'o')]) == 2
    err = capsys.readouterr().err
    assert '--checkpoint is empty' in err and 'reference model' in err and not (tmp_path/'o').exists()
    assert unet_predict([photo, '--checkpoint', str(work/'tiny.pt'), '--onnx', '', '--out', str(tmp_path/'o')]) == 2
    assert '--onnx is empty' in capsys.readouterr().err and not (tmp_path/'o').exists()
    with pytest.raises(CheckpointError, match='no file named'): predict_files([photo], '', tmp_path/'o')


def test_09_untrained_or_mistyped_checkpoints_are_refused(tmp_path):
    m = UNet(width=4, depth=2)
    torch.save({'model': m.state_dict(), 'model_config': m.config, 'size': None, 'epoch': 0, 'step': 0,
                'optimizer': {}, 'history': []}, tmp_path/'last.pt')     # the trainer's last.pt before epoch 1
    with pytest.raises(CheckpointError, match=r'last\.pt was written before the first epoch'): load_model(tmp_path/'last.pt')
    for dtype, says in [(torch.int64, 'int64'), (torch.complex64, 'complex64')]:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in m.state_dict().items()}
        torch.save({'model': sd, 'model_config': m.config}, tmp_path/'typed.pt')
        with pytest.raises(CheckpointError, match=f'typed.pt.*{says}'): load_model(tmp_path/'typed.pt')
    save_ckpt(tmp_path/'half.pt'); sd = read_checkpoint(tmp_path/'half.pt')
    torch.save({**sd, 'model': {k: v.half() if v.is_floating_point() else v for k, v in sd['model'].items()}}, tmp_path/'half.pt')
    load_model(tmp_path/'half.pt', 'cpu')   # fp16 weights (the reference model's) are fine



def test_09_nan_weights_are_refused(tmp_path):
    "Weights holding NaN (a diverged run's) are refused by name, the tensor named."
    m = UNet(width=4, depth=2); sd = m.state_dict()
    k = next(k for k, v in sd.items() if v.is_floating_point())
    torch.save({'model': {**sd, k: torch.full_like(sd[k], float('nan'))}, 'model_config': m.config}, tmp_path/'nan.pt')
    with pytest.raises(CheckpointError, match=rf'nan\.pt: 1 weight tensor\(s\) hold NaN or infinity \(e\.g\. {k}\)'):
        load_model(tmp_path/'nan.pt', 'cpu')


def test_17_lesson_broken_checkpoints_each_named(tmp_path):
    "Lesson 17's broken checkpoints (it keeps three of them): each refused with its own reason and its file's name."
    def save_tiny(path, **kw):
        m = UNet(**{'width': 4, 'depth': 2, **kw})
        torch.save({'model': m.state_dict(), 'model_config': m.config, 'epoch': 0, 'history': []}, path)
        return path
    bad = tmp_path/'bad'; bad.mkdir()
    tiny = save_tiny(tmp_path/'tiny.pt')
    other = torch.load(save_tiny(bad/'wide.pt', width=8), weights_only=True)
    torch.save({**other, 'model_config': {**other['model_config'], 'width': 4}}, bad/'mismatch.pt')  # wider weights
    torch.save({'model': other['model']}, bad/'no_config.pt')
    torch.save({**other, 'model': {k: v.fill_(float('nan')) if k.endswith('running_var') else v for k, v in other['model'].items()}}, bad/'nan.pt')
    (bad/'corrupt.pt').write_bytes(tiny.read_bytes()[:500])  # a download cut short
    m0 = UNet(width=4, depth=2)
    torch.save({'model': m0.state_dict(), 'model_config': m0.config, 'epoch': 0, 'step': 0, 'optimizer': {}}, bad/'last.pt')  # before epoch 1
    torch.save({**other, 'model': {k: v.long() for k, v in other['model'].items()}}, bad/'int64.pt')
    torch.save({**other, 'model': {k: 'w' for k in other['model']}}, bad/'strings.pt')
    for f, msg in [('last.pt', 'before the first epoch'), ('int64.pt', 'is int64, not float32'), ('strings.pt', 'not a tensor'),
                   ('missing.pt', 'no such file'), ('corrupt.pt', 'truncated or corrupt'), ('no_config.pt', 'model_config'),
                   ('mismatch.pt', 'of another shape'), ('nan.pt', 'NaN or infinity')]:
        with pytest.raises(CheckpointError) as e: load_model(bad/f)
        assert msg in str(e.value) and f in str(e.value), (f, str(e.value))


@needs_onnx
def test_09_onnx_metadata_records_the_training_size(tmp_path, capsys):
    import onnx
    save_ckpt(tmp_path/'m48.pt', size=48)
    assert unet_predict(['--checkpoint', str(tmp_path/'m48.pt'), '--onnx', str(tmp_path/'m.onnx'), '--size', '64']) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path/'m.onnx')).metadata_props}
    assert (meta['training_size'], meta['checked_size']) == ('48', '64')
    assert 'training size 48' in capsys.readouterr().out


# 10, a full disk keeps the last good checkpoint: tests/test_atomic_write.py::test_a_full_disk_in_torch_save_keeps_the_old_file


@needs_onnx
def test_17_onnx_export_at_the_smallest_size(work, tmp_path):
    "depth 2: size 4 = 2**depth, which the exporter used to refuse with 'Constraints violated'."
    assert export_onnx(work/'tiny.pt', tmp_path/'m.onnx', size=4) < 1e-3


def test_18_symlink_loop_among_photos_and_as_out(work, tmp_path):
    (tmp_path/'loop.jpg').symlink_to('loop.jpg')
    code, _, err = cli(tmp_path/'loop.jpg', work/'photos'/'cat.png', '--checkpoint', work/'tiny.pt', '--out', tmp_path/'o')
    assert code == 1 and 'Traceback' not in err, err
    assert f"{tmp_path/'loop.jpg'}: it is a symbolic link to loop.jpg, a loop of links" in err
    assert (tmp_path/'o'/'cat_mask.png').exists()
    (tmp_path/'out').symlink_to('out')
    code, _, err = cli(work/'photos'/'cat.png', '--checkpoint', work/'tiny.pt', '--out', tmp_path/'out')
    assert code == 2 and 'Traceback' not in err and f"{tmp_path/'out'}: cannot write into this --out" in err and 'loop' in err, err


def test_19_truncated_checkpoint_is_named_as_such(work, tmp_path):
    data = (work/'tiny.pt').read_bytes()
    for n in sorted({*range(1, len(data), 97), len(data) - 1}):
        (tmp_path/'cut.pt').write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=r'cut\.pt: cannot read this checkpoint: it is truncated or corrupt'):
            load_model(tmp_path/'cut.pt', 'cpu')
    with mock.patch.object(torch, 'load', side_effect=OSError(errno.EINVAL, 'Invalid argument')):  # what some lengths give
        with pytest.raises(BadInput, match=r'cut\.pt: cannot read this checkpoint: it is truncated or corrupt'):
            read_checkpoint(tmp_path/'cut.pt')


def test_20_hostile_checkpoints(tmp_path):
    m = UNet(width=4, depth=2); sd = m.state_dict()
    k = next(k for k, v in sd.items() if v.ndim == 4)
    cases = {'strings.pt': {n: 'x' for n in sd}, 'list.pt': list(sd),
             'sparse.pt': {**sd, k: sd[k].to_sparse()}}
    for name, model in cases.items():
        torch.save({'model': model, 'model_config': m.config}, tmp_path/name)
        with pytest.raises(CheckpointError, match=name): load_model(tmp_path/name, 'cpu')
    torch.save({'model': sd, 'model_config': ['width', 4]}, tmp_path/'cfg.pt')
    with pytest.raises(CheckpointError, match=r'cfg\.pt: its model_config is a list'): load_model(tmp_path/'cfg.pt')
    torch.save({'model': sd, 'model_config': {**m.config, 'width': -3}}, tmp_path/'neg.pt')  # the constructor's error
    with pytest.raises(CheckpointError, match=r'neg\.pt: bad model_config'): load_model(tmp_path/'neg.pt')


def test_22_write_errors_name_the_users_file(work, tmp_path, capsys):
    photo = str(work/'photos'/'cat.png')
    (tmp_path/'afile').write_text('x')
    assert unet_predict([photo, '--checkpoint', str(work/'tiny.pt'), '--out', str(tmp_path/'afile')]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path/'afile'}: cannot write into this --out (it is a file" in err
    def full(self, fp, *a, **k): raise OSError(errno.ENOSPC, 'No space left on device')
    with mock.patch.object(Image.Image, 'save', full):
        assert unet_predict([photo, '--checkpoint', str(work/'tiny.pt'), '--out', str(tmp_path/'o')]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path/'o'/'cat_mask.png'}: cannot write it (No space left on device)" in err and '.tmp' not in err, err
    assert list((tmp_path/'o').iterdir()) == []
    (tmp_path/'folder.onnx').mkdir()
    assert unet_predict([photo, '--checkpoint', str(work/'tiny.pt'), '--out', str(tmp_path/'o2'), '--onnx', str(tmp_path/'folder.onnx')]) == 2
    assert 'folder.onnx: it is a folder' in capsys.readouterr().err and not (tmp_path/'o2').exists()   # before any work
    if HAVE_ONNX:
        with mock.patch.object(torch.onnx, 'export', side_effect=OSError(errno.ENOSPC, 'No space left on device')):
            assert unet_predict(['--checkpoint', str(work/'tiny.pt'), '--onnx', str(tmp_path/'new'/'m.onnx')]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path/'new'/'m.onnx'}: cannot write it (No space left" in err and '.tmp' not in err, err
        assert list((tmp_path/'new').iterdir()) == []


def test_23_what_each_bad_photo_is(work, tmp_path):
    (tmp_path/'gone.jpg').symlink_to(tmp_path/'nowhere.jpg')
    ph = tmp_path/'holiday'; ph.mkdir(); Image.open(work/'photos'/'cat.png').save(ph/'dog.jfif', format='JPEG')
    code, _, err = cli(tmp_path/'gone.jpg', ph, ph/'dog.jfif', '--checkpoint', work/'tiny.pt', '--out', tmp_path/'o')
    assert code == 1, err
    assert f"gone.jpg: it is a symbolic link to {tmp_path/'nowhere.jpg'}, which does not exist" in err
    assert f"{ph}: it is a folder (of 1 image(s), e.g. dog.jfif); pass the files in it instead, e.g. {ph/'*'}" in err
    assert Image.open(tmp_path/'o'/'dog_mask.png').size == (40, 30)   # a .jfif photo is segmented


def test_23_rerun_cleans_temporary_files_of_a_killed_run(work, tmp_path):
    out = tmp_path/'o'; out.mkdir()
    dead = subprocess.Popen([sys.executable, '-c', '']); dead.wait()   # a process id that no longer runs
    stale, live = out/f'.cat_mask.png.{dead.pid}.tmp', out/f'.x_mask.png.{os.getppid()}.tmp'
    stale.write_bytes(b'half a png'); live.write_bytes(b'another run, still going')
    code, _, err = cli(work/'photos'/'cat.png', '--checkpoint', work/'tiny.pt', '--out', out)
    assert code == 0, err
    assert not stale.exists() and live.exists()


def test_23_shell_messages_are_sentences_in_options(work, tmp_path, capsys):
    "An existing mask is refused in options ('already exists', no 'overwrite=True'); a checkpoint's problem and the advice are two sentences."
    out = tmp_path/'o'; out.mkdir(); (out/'cat_mask.png').write_bytes(b'mine')
    assert unet_predict([str(work/'photos'/'cat.png'), '--checkpoint', str(work/'tiny.pt'), '--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert 'cat_mask.png already exists and would be replaced' in err and 'overwrite=True' not in err, err
    torch.save({'model': torch.load(work/'tiny.pt', weights_only=True)['model']}, tmp_path/'bare.pt')   # no model_config
    assert unet_predict([str(work/'photos'/'cat.png'), '--checkpoint', str(tmp_path/'bare.pt'), '--out', str(tmp_path/'p')]) == 2
    err = capsys.readouterr().err
    assert '. Pass a checkpoint written by training' in err, err


def test_23_onnx_in_a_file_names_the_option(work, tmp_path, capsys):
    "An --onnx path under a regular file: the message names --onnx's folder, as the option, not 'this folder of the ONNX file'."
    (tmp_path/'afile').write_text('mine')
    assert unet_predict(['--checkpoint', str(work/'tiny.pt'), '--onnx', str(tmp_path/'afile'/'m.onnx')]) == 2
    err = capsys.readouterr().err
    assert 'cannot write into this --onnx folder' in err and 'it is a file, not a folder' in err, err
    assert (tmp_path/'afile').read_text() == 'mine'
