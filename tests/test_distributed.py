"""Issue 25, items 1, 2 and 4: data-parallel training (lesson 23, `unet_tutorial.distributed`) tested on a CPU with
gloo, in real torchrun launches of two processes (tests/ddp_worker.py) on a tiny model and 32 synthetic pets of 32×32:
(a) with synchronised BatchNorm, 2 processes × 4 images train the weights of 1 process × 8 images; (b) the metrics
summed over the processes are one process's on the same weights; (c) a run stopped after an epoch and resumed under
torchrun ends with the weights of one that was not stopped; (d) only process 0 writes files. Also: the synchronised
BatchNorm against one BatchNorm on the whole batch (forward, gradients, running statistics), the shards of a loader,
the messages, and TensorBoard's event files. And the command: `torchrun --nproc-per-node 2 -m unet_tutorial.cli train
--data FOLDER --preset quick --tensorboard DIR` on a folder written here, whose model `unet-predict` then uses."""
import json, os, socket, subprocess, sys
from importlib.util import find_spec

import pytest
import torch, torch.distributed as dist, torch.multiprocessing as mp, torch.nn as nn

from conftest import REPO
from unet_tutorial.checkpoints import load_model, read_checkpoint
from unet_tutorial.config import RunConfig, to_json
from unet_tutorial.core import BadInput
from unet_tutorial.distributed import SCALARS, ShardedLoader, SyncBatchNorm2d, TensorBoardCB, cbs_for_launch, setup, train_distributed
from unet_tutorial.loaders import TensorLoader, dls_for
from unet_tutorial.losses import get_loss, pos_weight_from_masks
from unet_tutorial.model import build_model
from unet_tutorial.synthetic import make_synthetic_folder, make_synthetic_pets
from unet_tutorial.trainer import Trainer

torch.set_num_threads(1)
CFG = RunConfig(size=32, width=4, depth=2, batch_size=8, epochs=3, lr=1e-2, amp='off', augment=False, device='cpu')
TORCHRUN_ENV = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'TORCHELASTIC_RUN_ID')
HAVE_TB = find_spec('tensorboard') is not None
# (a)'s tolerance: the two runs add the same numbers in another order (each process's partial sums, then the
# all-reduce), which changes fp32 results by ~1e-7 relative (the first epoch's losses agree to 1e-6). Adam then divides each gradient
# by its running RMS, so a weight whose gradient is near zero moves by up to lr a step whatever the gradient's size,
# and a rounding difference there shows at the scale of lr (1e-2): 1.2e-4 measured after 15 steps. TOL is lr / 10.
TOL = CFG.lr / 10


def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def launch(args:list, n=2, **env) -> subprocess.CompletedProcess:
    "A torchrun launch of `n` processes on this machine running `args` (a script and its arguments, or -m MODULE ...)."
    env = {**{k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}, 'OMP_NUM_THREADS': '1', **env,
           'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', str(n), '--master-addr', '127.0.0.1',
                           '--master-port', str(free_port()), *map(str, args)], env=env, capture_output=True, text=True, timeout=600)


def torchrun(d, out, tb=None, stop_after=None, n=2) -> dict:
    "A torchrun launch of `n` workers training CFG into `out`; {rank: the files it wrote}."
    report = d/f'wrote_{out.name}_{len(list(d.glob("wrote_*")))}'; report.mkdir()
    args = [to_json(CFG), d/'pets', out, tb or '-'] + ([stop_after] if stop_after else [])
    p = launch([REPO/'tests'/'ddp_worker.py', *args], n, UNET_TUTORIAL_CACHE=str(d/'cache'), DDP_WROTE=str(report))
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    wrote = {int(f.stem): json.loads(f.read_text()) for f in report.glob('*.json')}
    assert sorted(wrote) == list(range(n)), f'reports of ranks {sorted(wrote)} in {report}, expected 0..{n-1}'
    return wrote


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "One process in this one; two under torchrun; two stopped after an epoch, then resumed by the same launch."
    d = tmp_path_factory.mktemp('ddp')
    make_synthetic_pets(d/'pets', n_trainval=40, n_test=8, size=32)
    old = os.environ.get('UNET_TUTORIAL_CACHE'); os.environ['UNET_TUTORIAL_CACHE'] = str(d/'cache0')
    try: single = train_distributed(CFG, d/'pets', d/'single')
    finally: os.environ.pop('UNET_TUTORIAL_CACHE') if old is None else os.environ.update(UNET_TUTORIAL_CACHE=old)
    wrote = dict(ddp=torchrun(d, d/'ddp', d/'tb' if HAVE_TB else None), stopped=torchrun(d, d/'resumed', stop_after=1))
    stopped_at = read_checkpoint(d/'resumed'/'last.pt')['epoch']
    wrote['resumed'] = torchrun(d, d/'resumed')
    return dict(d=d, single=single, wrote=wrote, stopped_at=stopped_at)


def _weights(path): return read_checkpoint(path)['model']


def test_two_processes_train_the_weights_of_one(runs):
    "(a) 2 processes × 4 images with synchronised BatchNorm: the weights and BatchNorm statistics of 1 process × 8."
    two, one = _weights(runs['d']/'ddp'/'last.pt'), runs['single'].model.state_dict()
    assert read_checkpoint(runs['d']/'ddp'/'last.pt')['step'] == runs['single'].step > 0
    assert two.keys() == one.keys()
    for k in one:
        if one[k].is_floating_point(): torch.testing.assert_close(two[k], one[k], atol=TOL, rtol=0, msg=k)
        else: assert torch.equal(two[k], one[k]), k   # num_batches_tracked: one per step
    torch.manual_seed(CFG.seed); init = build_model(CFG.experiment, width=CFG.width, depth=CFG.depth).state_dict()
    moved = max((one[k] - init[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert moved > 20 * TOL   # the weights trained: the tolerance is far below what training moved them
    for a, b in zip(read_checkpoint(runs['d']/'ddp'/'last.pt')['history'], runs['single'].history):
        for k in ('train_loss', 'valid_loss', 'iou'): assert a[k] == pytest.approx(b[k], rel=1e-4), k
    print(f"largest difference, 2 processes vs 1: {max((two[k] - one[k]).abs().max().item() for k in one if one[k].is_floating_point()):.1e}")


def test_metrics_summed_over_processes_are_one_process_metrics(runs):
    "(b) the last epoch's validation scores of the 2-process run are those of one process scoring its weights."
    model, ckpt = load_model(runs['d']/'ddp'/'last.pt', 'cpu')
    dls = dls_for(CFG, runs['d']/'pets', 'cpu', cache=runs['d']/'cache')
    t = Trainer(model, get_loss('bce', pos_weight_from_masks(dls.train_masks)), dls, CFG, cbs=(), threads=1)
    one, row = t.evaluate(), ckpt['history'][-1]
    for k in ('iou', 'dice', 'pixel_accuracy', 'mean_image_iou'): assert row[k] == pytest.approx(one[k], abs=1e-6), k
    assert row['valid_loss'] == pytest.approx(one['loss'], rel=1e-5)


def test_a_stopped_run_resumes_under_torchrun(runs):
    "(c) stopped after epoch 1, the same launch again: the weights and history of the run that was not stopped."
    assert runs['stopped_at'] == 1
    a, b = read_checkpoint(runs['d']/'resumed'/'last.pt'), read_checkpoint(runs['d']/'ddp'/'last.pt')
    assert a['epoch'] == b['epoch'] == CFG.epochs and a['step'] == b['step']
    for k in b['model']: torch.testing.assert_close(a['model'][k], b['model'][k], atol=1e-6, rtol=0, msg=k)
    drop = lambda h: [{k: v for k, v in r.items() if k not in ('seconds', 'images_per_s')} for r in h]
    assert len(a['history']) == len(b['history']) == CFG.epochs
    for ra, rb in zip(drop(a['history']), drop(b['history'])):
        for k in ra: assert ra[k] == pytest.approx(rb[k], abs=1e-6), k


def test_only_process_0_writes(runs):
    "(d) process 1 wrote nothing under the run's folder, TensorBoard's or the tensor cache; process 0 wrote the run."
    for launch, wrote in runs['wrote'].items():
        assert sorted(wrote) == [0, 1], launch
        assert wrote[1] == [], (launch, wrote[1])
        assert any(p.endswith('last.pt') for p in wrote[0]), (launch, wrote[0])
    assert sorted(p.name for p in (runs['d']/'ddp').iterdir()) == ['best.pt', 'history.json', 'last.pt']
    assert any('cache' in p for p in runs['wrote']['ddp'][0])   # the tensor cache: process 0 wrote it, the other read it


@pytest.mark.skipif(not HAVE_TB, reason='tensorboard is not installed (pip install unet_tutorial[tensorboard])')
def test_tensorboard_event_files_hold_the_lessons_scalars(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(runs['d']/'tb')); ea.Reload()
    assert set(SCALARS) <= set(ea.Tags()['scalars']), ea.Tags()['scalars']
    hist = read_checkpoint(runs['d']/'ddp'/'last.pt')['history']
    assert [e.value for e in ea.Scalars('valid/iou')] == pytest.approx([h['iou'] for h in hist], abs=1e-6)
    assert [e.step for e in ea.Scalars('loss/train')] == [1, 2, 3] and ea.Tags()['images'] == ['valid/predicted']


def test_without_tensorboard_the_message_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'tensorboard', None); monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    with pytest.raises(BadInput, match='pip install tensorboard'): TensorBoardCB(tmp_path/'tb')
    assert not (tmp_path/'tb').exists()


def _bn_worker(r, port, x, w, out):
    "Process `r` of 2: a `SyncBatchNorm2d` on its half of `x`; saves its output, gradients and running statistics."
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=r, world_size=2)
    try:
        torch.manual_seed(0); bn = SyncBatchNorm2d(3); nn.init.uniform_(bn.weight, 0.5, 1.5); nn.init.uniform_(bn.bias, -1, 1)
        xi = x.chunk(2)[r].clone().requires_grad_()
        y = bn(xi); (y * w.chunk(2)[r]).sum().backward()
        torch.save(dict(y=y.detach(), gx=xi.grad, gw=bn.weight.grad, gb=bn.bias.grad, rm=bn.running_mean, rv=bn.running_var), out/f'{r}.pt')
    finally: dist.destroy_process_group()


def test_sync_batchnorm_is_one_batchnorm_on_the_whole_batch(tmp_path):
    torch.manual_seed(0); x, w = torch.randn(6, 3, 5, 4) * 3 + 1, torch.randn(6, 3, 5, 4)
    bn = nn.BatchNorm2d(3)
    mp.spawn(_bn_worker, (free_port(), x, w, tmp_path), nprocs=2)
    torch.manual_seed(0); nn.init.uniform_(bn.weight, 0.5, 1.5); nn.init.uniform_(bn.bias, -1, 1)
    xx = x.clone().requires_grad_(); y = bn(xx); (y * w).sum().backward()
    a, b = (torch.load(tmp_path/f'{r}.pt') for r in (0, 1))
    torch.testing.assert_close(torch.cat([a['y'], b['y']]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([a['gx'], b['gx']]), xx.grad, atol=1e-5, rtol=1e-5)      # the whole batch's gradient
    torch.testing.assert_close(a['gw'] + b['gw'], bn.weight.grad, atol=1e-4, rtol=1e-5)          # summed, as DDP then does
    torch.testing.assert_close(a['gb'] + b['gb'], bn.bias.grad, atol=1e-4, rtol=1e-5)
    for s in (a, b):   # both processes hold the whole batch's running statistics (the variance unbiased, as BatchNorm's)
        torch.testing.assert_close(s['rm'], bn.running_mean); torch.testing.assert_close(s['rv'], bn.running_var)


def test_shards_see_every_image_once_an_epoch():
    "18 images, batch 8, 4 processes: the last 2 images join the batch before them; every image once, on one process."
    make = lambda: TensorLoader(torch.zeros(18, 3, 2, 2, dtype=torch.uint8), torch.arange(18, dtype=torch.uint8).view(18, 1, 1, 1).expand(18, 1, 2, 2),
                                batch_size=8, shuffle=True, seed=3)
    parts = [ShardedLoader(make(), r, 4) for r in range(4)]
    for _ in range(2):   # two epochs: a new permutation, still alike on every process
        seen = [[y[:, 0, 0, 0].tolist() for _, y in p] for p in parts]
        assert [len(b) for b in seen[0]] == [2, 3] and [len(b) for b in seen[3]] == [2, 2]
        flat = sorted(i for s in seen for b in s for i in b)
        assert flat == list(range(18))


def test_the_messages(monkeypatch):
    for k in TORCHRUN_ENV: monkeypatch.delenv(k, raising=False)
    with pytest.raises(BadInput, match='torchrun --nproc-per-node N'): setup()
    monkeypatch.setenv('RANK', '0'); monkeypatch.setenv('LOCAL_RANK', '0'); monkeypatch.setenv('WORLD_SIZE', '3')
    with pytest.raises(BadInput, match='multiple of 3'): cbs_for_launch(CFG)
    with pytest.raises(BadInput, match='--minutes'): cbs_for_launch(CFG.replace(batch_size=6, minutes=1.))


@pytest.fixture(scope='module')
def command(tmp_path_factory):
    "`unet-train` launched by torchrun on 2 processes: a folder of 16 synthetic pets, the quick preset for 2 epochs."
    d = tmp_path_factory.mktemp('ddp_cli')
    pets = make_synthetic_folder(d/'my_pets', n=16, size=32)
    args = ['-m', 'unet_tutorial.cli', 'train', '--data', pets, '--out', d/'runs', '--preset', 'quick', '--epochs', '2',
            '--size', '32', '--width', '4'] + (['--tensorboard', d/'tb'] if HAVE_TB else [])
    return dict(d=d, pets=pets, p=launch(args), run=d/'runs'/'maxpool_transpose_bce'/'seed0')


def test_unet_train_under_torchrun_trains_one_run_that_unet_predict_uses(command, capsys):
    from PIL import Image
    from unet_tutorial.cli import unet_predict
    p, run = command['p'], command['run']
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert p.stdout.count('\nModel: ') == 1, p.stdout   # process 0 alone prints
    ck = read_checkpoint(run/'last.pt')
    assert ck['epoch'] == ck['epochs'] == len(ck['history']) == 2 and (run/'best.pt').is_file(), (ck['epoch'], ck['history'])
    assert json.loads((run/'metrics.json').read_text())['epochs'] == 2 and (command['d']/'runs'/'results.md').is_file()
    photo = sorted((command['pets']/'images').iterdir())[0]
    assert unet_predict([str(photo), '--checkpoint', str(run/'best.pt'), '--out', str(command['d']/'pred')]) == 0
    mask = Image.open(command['d']/'pred'/f'{photo.stem}_mask.png')
    assert mask.size == Image.open(photo).size


@pytest.mark.skipif(not HAVE_TB, reason='tensorboard is not installed (pip install unet_tutorial[tensorboard])')
def test_unet_train_tensorboard_writes_the_lessons_scalars_in_the_runs_folder(command):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert command['p'].returncode == 0, command['p'].stderr[-4000:]
    ea = EventAccumulator(str(command['d']/'tb'/'maxpool_transpose_bce'/'seed0')); ea.Reload()
    assert set(SCALARS) <= set(ea.Tags()['scalars']), ea.Tags()['scalars']
    assert [e.step for e in ea.Scalars('loss/train')] == [1, 2]
    hist = read_checkpoint(command['run']/'last.pt')['history']
    assert [e.value for e in ea.Scalars('valid/iou')] == pytest.approx([h['iou'] for h in hist], abs=1e-6)
