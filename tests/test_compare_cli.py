"""End-to-end tests of the `unet-compare` command line on the CPU: quick mode, resume, interruption, bad input.

Each test runs the installed console script (or `unet_compare()` through `python -c` when the installed script is
not this package's `unet_tutorial.cli` one) in a subprocess, as a user would, with the tensor cache in the test's temporary folder.
"""
import json, os, re, signal, subprocess, sys, time
from importlib.util import find_spec
from pathlib import Path

import pytest

from unet_tutorial.cli import unet_compare
from unet_tutorial.config import QUICK

NAMES = ['maxpool_transpose_bce', 'maxpool_transpose_dice', 'strided_transpose_bce', 'strided_upsample_dice']
TINY = ['--size', '32', '--width', '4']  # a tiny model, for the tests that check behaviour rather than results
CONSTANT = ['--schedule', 'none']        # a constant lr: a finished run may be extended by more epochs (not with a schedule)


def _cmd():
    exe = Path(sys.executable).parent/'unet-compare'
    if exe.exists() and 'unet_tutorial.cli' in exe.read_text(errors='replace'): return [str(exe)]
    return [sys.executable, '-c', 'import sys; from unet_tutorial.cli import unet_compare; sys.exit(unet_compare())']


def _env(tmp):
    return {**os.environ, 'UNET_TUTORIAL_CACHE': str(tmp/'cache'), 'MPLBACKEND': 'Agg', 'IN_TEST': ''}


def compare(tmp, *args, timeout=300):
    "Run `unet-compare ARGS`; return the CompletedProcess (text stdout, stderr)."
    return subprocess.run(_cmd() + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=_env(tmp))


def history(out, name='maxpool_transpose_bce', seed=0):
    return json.loads((out/name/f'seed{seed}'/'history.json').read_text())


def test_quick_end_to_end(tmp_path):
    out = tmp_path/'quick'
    t = time.time()
    r = compare(tmp_path, '--quick', '--out', out)
    dt = time.time() - t
    print(f'unet-compare --quick: {dt:.1f}s on {os.cpu_count()} CPU cores')   # a figure, not a timed test
    assert r.returncode == 0, r.stderr
    assert '[4/4]' in r.stdout and 'Test IoU' in r.stdout  # progress, then the table
    res = json.loads((out/'results.json').read_text())
    assert [x['name'] for x in res['runs']] == NAMES
    for x in res['runs']:
        assert {'down', 'up', 'loss'} <= set(x['model']) and x['config']['width'] == 8 and x['config']['experiment'] == x['experiment']
        assert x['seed'] == x['config']['seed'] == 0 and x['epochs'] == QUICK.epochs
        for k in ('pixel_accuracy', 'iou', 'dice'): assert 0 <= x['test'][k] <= 1, (x['name'], k, x['test'][k])
        assert x['valid']['best_loss'] > 0 and x['params'] > 0
        assert x['timing']['train_s'] > 0 and x['timing']['images_per_s'] > 0
    best = max(x['test']['iou'] for x in res['runs'])
    assert best >= 0.8, f'quick mode should show segmentation working: best test IoU {best:.3f} < 0.8'   # issue 14
    md = (out/'results.md').read_text()
    assert 'not resolved with 1 seed' in md   # one seed: no difference is called real
    assert 'Exp 4: Strided + Upsample + Dice' in md and '93.45%' in md and 'not directly comparable' in md
    for f in ('curves.png', 'predictions.png', 'iou.png'): assert (out/f).stat().st_size > 5_000, f
    for name in NAMES:
        assert {'best.pt', 'last.pt', 'history.json', 'metrics.json'} <= {p.name for p in (out/name/'seed0').iterdir()}


def test_resume_continues(tmp_path):
    out = tmp_path/'resume'
    args = ['--quick', '--experiments', '1', '--out', out, *TINY, *CONSTANT]
    r = compare(tmp_path, *args, '--epochs', '1')
    assert r.returncode == 0, r.stderr
    h1 = history(out)
    assert len(h1) == 1
    r = compare(tmp_path, *args, '--epochs', '2')
    assert r.returncode == 0, r.stderr
    h2 = history(out)
    assert len(h2) == 2 and h2[0] == h1[0], 'epoch 1 should be kept, not trained again'
    assert json.loads((out/'results.json').read_text())['runs'][0]['epochs'] == 2
    last = out/'maxpool_transpose_bce'/'seed0'/'last.pt'
    mtime = last.stat().st_mtime_ns
    r = compare(tmp_path, *args, '--epochs', '2')  # finished: skipped
    assert r.returncode == 0, r.stderr
    assert last.stat().st_mtime_ns == mtime and history(out) == h2


def test_sigterm_stops_cleanly_and_resumes(tmp_path):
    out = tmp_path/'stop'
    cmd = _cmd() + ['--quick', '--experiments', '2', '--epochs', '30', '--out', str(out), *TINY, *CONSTANT]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    hist = out/'maxpool_transpose_dice'/'seed0'/'history.json'
    t = time.time()
    while not hist.exists() and time.time() - t < 120 and p.poll() is None: time.sleep(0.2)
    assert hist.exists(), 'no epoch finished in 2 minutes'
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert 'resume' in err and 'Traceback' not in err
    h1 = history(out, 'maxpool_transpose_dice')
    assert 1 <= len(h1) < 30
    r = compare(tmp_path, '--quick', '--experiments', '2', '--epochs', str(len(h1) + 1), '--out', out, *TINY, *CONSTANT)
    assert r.returncode == 0, r.stderr
    h2 = history(out, 'maxpool_transpose_dice')
    assert len(h2) == len(h1) + 1 and h2[:len(h1)] == h1


def _corrupt_copy(root):
    "A synthetic dataset with one corrupt image in trainval and one in test; returns their names."
    from unet_tutorial.data import read_split
    from unet_tutorial.synthetic import make_synthetic_pets
    make_synthetic_pets(root, n_trainval=16, n_test=8, size=32)
    bad = [read_split(root, 'trainval')[3], read_split(root, 'test')[2]]
    for n in bad: (root/'oxford-iiit-pet'/'images'/f'{n}.jpg').write_bytes(b'not a jpeg')
    return bad


@pytest.mark.parametrize('case', ['missing root', 'unknown experiment', 'corrupt data'])
def test_bad_input(tmp_path, case):
    "The console script in a subprocess: a message on stderr, status 2, no traceback, nothing written."
    out = tmp_path/'out'
    if case == 'missing root':
        r, want = compare(tmp_path, '--data', tmp_path/'nowhere', '--out', out), [str(tmp_path/'nowhere'), '--download']
    elif case == 'unknown experiment':
        r, want = compare(tmp_path, '--quick', '--experiments', '1,9', '--out', out), ['9', *NAMES]
    else:
        bad = _corrupt_copy(tmp_path/'pets')
        r, want = compare(tmp_path, '--data', tmp_path/'pets', '--out', out, *TINY), [f'{n}.jpg' for n in bad]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert 'Traceback' not in r.stderr and r.stderr.startswith('unet-compare: error:'), r.stderr
    for w in want: assert w in r.stderr, (w, r.stderr)
    assert not (out/'results.json').exists()


@pytest.mark.parametrize('args,want', [
    (['--epochs', '0'], ['--epochs', 'at least 1']),
    (['--batch-size', '0'], ['--batch-size', 'at least 1']),
    (['--batch_size', '0'], ['--batch-size', 'at least 1']),
    (['--size', '8'], ['--size', 'at least 16']),
    (['--limit', '0'], ['--limit', 'at least 1']),
    (['--seeds', '0,x'], ['--seeds', '0,1,2']),
    (['--seeds', '-1'], ['--seeds', '0 or more']),
    (['--size', '100000'], ['--size', 'at most 2048']),
    (['--data', '.'], ['--quick', '--data']),
    (['--device', 'gpu7'], ['--device', 'cpu']),
    (['--threads', '0'], ['--threads', 'at least 1'])])
def test_bad_options(tmp_path, capsys, args, want):
    "The same entry point in this process (faster): bad options are a message and status 2, checked before any work."
    from unet_tutorial.cli import unet_compare
    assert unet_compare(['--quick', '--out', str(tmp_path/'out'), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith('unet-compare: error:') and 'Traceback' not in err, err
    for w in want: assert w in err, (w, err)
    assert not (tmp_path/'out').exists()


def test_bad_option_type(capsys):
    "A value of the wrong type is argparse's usage message and status 2."
    from unet_tutorial.cli import unet_compare
    with pytest.raises(SystemExit) as e: unet_compare(['--epochs', 'ten'])
    assert e.value.code == 2 and "invalid int value: 'ten'" in capsys.readouterr().err


def test_nan_loss_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    "The trainer's NaN guard reaches a CLI user as its message and exit status 1."
    from unet_tutorial import cli, experiments
    from unet_tutorial.options import command_parser
    def nan_fit(self, epochs=None, resume=False):
        raise FloatingPointError('Loss is nan at epoch 1, step 3 of 5: training stopped. Try a lower lr, clip=1.0, or amp="off".')
    monkeypatch.setattr(experiments.Trainer, 'fit', nan_fit)
    assert cli.unet_compare(['--quick', '--experiments', '1', '--out', str(tmp_path/'out')]) == 1
    err = capsys.readouterr().err
    assert 'epoch 1, step 3' in err and 'lower --lr' in err and 'Traceback' not in err
    options = set(command_parser(cli.compare, 'unet-compare', cli.COMPARE_FIELDS)._option_string_actions)
    named = set(re.findall(r'--[a-z][a-z_-]*', err))
    assert named and named <= options, named - options          # it only suggests options unet-compare has
    assert 'clip' not in err and 'amp=' not in err


def test_help_says_what_data_folder_is_meant(capsys):
    "--data's help describes the folder, not a Python function."
    from unet_tutorial import cli
    with pytest.raises(SystemExit): cli.unet_compare(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    text = text[text.index('options:'):]
    data_help = text[text.index('--data DATA'):text.index('--download')]
    assert 'oxford-iiit-pet/' in data_help and 'find_pets' not in data_help and '`' not in data_help, data_help


# --- issue 15: output-folder problems, another dataset, non-finite checkpoints, a damaged last.pt -------------------

def _pets(root, n_trainval=16):
    "A tiny synthetic dataset in the official layout at `root`."
    from unet_tutorial.synthetic import make_synthetic_pets
    return make_synthetic_pets(root, n_trainval=n_trainval, n_test=8, size=32)


def _no_traceback(r, code=2):
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr)
    assert 'Traceback' not in r.stderr and r.stderr.startswith('unet-compare: error:'), r.stderr


@pytest.mark.parametrize('case', ['out is a file', 'out under a file', 'out read-only', 'run folder is a file'])
def test_output_folder_problems(tmp_path, case):
    "An output folder that cannot be written: status 2 and a message naming it, before the data loads (item 9)."
    if case == 'out read-only' and os.geteuid() == 0: pytest.skip('root writes into read-only folders')
    pets, out = _pets(tmp_path/'pets'), tmp_path/'out'
    if case == 'out is a file': out.write_text('x'); want = f'{out}: cannot write into this'
    elif case == 'out under a file':
        (tmp_path/'f').write_text('x'); out = tmp_path/'f'/'out'; want = f'{out}: cannot write into this'
    elif case == 'out read-only': out.mkdir(); out.chmod(0o555); want = f'{out}: cannot write into this'
    else:   # the folder is fine (a run folder: an earlier settings.json, no finished epoch), a run's folder is not
        out.mkdir(); (out/'settings.json').write_text('{}'); (out/'maxpool_transpose_bce').write_text('x')
        want = f"{out/'maxpool_transpose_bce'/'seed0'/'last.pt'}: cannot write it"
    try: r = compare(tmp_path, '--data', pets, '--out', out, '--experiments', '1', '--epochs', '1', *TINY)
    finally:
        if case == 'out read-only': out.chmod(0o755)
    _no_traceback(r)
    assert want in r.stderr, r.stderr
    cached = [p for p in (tmp_path/'cache').rglob('*') if p.is_file()] if (tmp_path/'cache').exists() else []
    if case != 'run folder is a file': assert cached == [], f'the data was loaded before the folder was checked: {cached}'


def test_same_out_other_data(tmp_path):
    "The same --out with another --data: status 2 naming 'another dataset', the first runs untouched (item 1)."
    a, b, out = _pets(tmp_path/'a'), _pets(tmp_path/'b', n_trainval=24), tmp_path/'out'
    args = ['--out', out, '--experiments', '1', '--epochs', '1', *TINY]
    r = compare(tmp_path, '--data', a, *args)
    assert r.returncode == 0, r.stderr
    last = out/'maxpool_transpose_bce'/'seed0'/'last.pt'
    mtime = last.stat().st_mtime_ns
    r = compare(tmp_path, '--data', b, *args)
    _no_traceback(r)
    assert 'another dataset' in r.stderr and str(out) in r.stderr, r.stderr
    assert last.stat().st_mtime_ns == mtime


def test_diverging_lr_leaves_no_nonfinite_checkpoint(tmp_path):
    "--lr 1e6 diverges at once: status 1, the trainer's message, and no checkpoint on disk holds a NaN (item 2)."
    import torch
    out = tmp_path/'out'
    r = compare(tmp_path, '--data', _pets(tmp_path/'pets'), '--out', out, '--experiments', '1', '--epochs', '3',
                '--lr', '1e6', *TINY)
    _no_traceback(r, code=1)
    assert 'NaN or infinite' in r.stderr and 'lower --lr' in r.stderr, r.stderr
    run = out/'maxpool_transpose_bce'/'seed0'
    ckpts = [run/f for f in ('best.pt', 'last.pt') if (run/f).exists()]
    assert run/'last.pt' in ckpts   # the epoch-0 checkpoint the trainer writes before its first step
    for f in ckpts:
        model = torch.load(f, map_location='cpu', weights_only=True)['model']
        bad = [k for k, v in model.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        assert bad == [], (f, bad)
    assert not (run/'metrics.json').exists() and not (out/'results.json').exists()


def test_truncated_last_pt(tmp_path):
    "A truncated last.pt in an unfinished run: status 2 and a message naming the file, no traceback (item 4)."
    pets, out = _pets(tmp_path/'pets'), tmp_path/'out'
    args = ['--data', pets, '--out', out, '--experiments', '1', *TINY]
    r = compare(tmp_path, *args, '--epochs', '1')
    assert r.returncode == 0, r.stderr
    run = out/'maxpool_transpose_bce'/'seed0'; last = run/'last.pt'
    last.write_bytes(last.read_bytes()[:2000]); (run/'metrics.json').unlink()   # an unfinished run, cut off mid-write
    r = compare(tmp_path, *args, '--epochs', '1')   # unfinished: it resumes from last.pt
    _no_traceback(r)
    assert f'{last}: cannot read this checkpoint' in r.stderr and 'delete it and rerun' in r.stderr, r.stderr


def test_the_log_counts_epochs_in_words(tmp_path):
    "One run's two log lines say '1 epoch' (not '1 epochs') for one epoch, and '2 epochs' for two (issue 22)."
    import torch
    from unet_tutorial.experiments import run_comparison
    torch.set_num_threads(1)
    root = _pets(tmp_path/'pets')
    for epochs, said in ((1, '1 epoch'), (2, '2 epochs')):
        lines = []
        run_comparison(root, tmp_path/f'out{epochs}', QUICK.replace(size=32, width=4, batch_size=8, epochs=epochs, device='cpu'),
                       experiments=(1,), progress=False, log=lines.append)
        assert len(lines) == 2 and all(f', {said}' in l or f': {said} on ' in l for l in lines), lines   # the end line may go on (DEGENERATE)
        assert f'{said}s' not in ' '.join(lines), lines


@pytest.mark.skipif(find_spec('tensorboard') is None, reason='tensorboard is not installed (pip install unet_tutorial[tensorboard])')
def test_tensorboard_logs_each_run_in_its_own_folder(tmp_path):
    "Issue 25: `--tensorboard DIR` writes each run's events into DIR/<name>/seed<N>, the scalars of its history."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, tb = tmp_path/'out', tmp_path/'tb'
    r = compare(tmp_path, '--quick', '--experiments', '1,2', '--epochs', '1', '--out', out, '--tensorboard', tb, *TINY)
    assert r.returncode == 0, r.stderr
    assert sorted(p.relative_to(tb).as_posix() for p in tb.glob('*/*')) == ['maxpool_transpose_bce/seed0', 'maxpool_transpose_dice/seed0']
    for name in ('maxpool_transpose_bce', 'maxpool_transpose_dice'):
        ea = EventAccumulator(str(tb/name/'seed0')); ea.Reload()
        assert [(e.step, e.value) for e in ea.Scalars('valid/iou')] == [(1, pytest.approx(history(out, name)[0]['iou'], abs=1e-6))]


def test_tensorboard_without_the_package_is_a_message_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'tensorboard', None); monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    assert unet_compare(['--quick', '--out', str(tmp_path/'out'), '--tensorboard', str(tmp_path/'tb')]) == 2
    assert 'pip install tensorboard' in capsys.readouterr().err
    assert not (tmp_path/'out').exists() and not (tmp_path/'tb').exists()
