"""The trainer's edge cases, moved out of lesson 10 (`nbs/10_trainer.ipynb`) so that the lesson keeps to its ideas.

What the lesson shows once (a step, an epoch, a checkpoint's round trip, resume), these tests guard in the
corners: the order of the events, the AMP policy on CPUs we do not have, the U-Net and the losses under autocast, bad settings, damaged
or foreign checkpoints, settings that differ on resume, a stop from a callback or a real SIGINT, leftovers of a
killed save, the NaN guards, and what the LR finder gives back. Everything runs on the CPU, on one thread, on tiny
synthetic pets, in seconds.
"""
import contextlib, copy, json, os, signal, threading, warnings
from types import SimpleNamespace
from unittest import mock

import pytest
import torch, torch.nn as nn

from unet_tutorial.callbacks import Callback, LRFinder
from unet_tutorial.checkpoints import atomic_save, read_checkpoint
from unet_tutorial.config import RunConfig, sched_factor
from unet_tutorial.core import amp_policy
from unet_tutorial.loaders import get_dls
from unet_tutorial.losses import DiceLoss, WeightedBCE, get_loss, pos_weight_from_masks
from unet_tutorial.model import UNet, build_model, get_experiment
from unet_tutorial.synthetic import make_synthetic_pets
from unet_tutorial.trainer import Trainer

torch.set_num_threads(1)  # the models are tiny: more threads only add overhead
CPU = RunConfig(device='cpu')


@pytest.fixture(scope='module')
def dls(tmp_path_factory):
    "The lesson's data: 64 synthetic train+valid pets (and 16 test) at 48 px, loaded at 32 px in batches of 8."
    d = tmp_path_factory.mktemp('pets')
    synth = make_synthetic_pets(d/'synth', n_trainval=64, n_test=16, size=48, seed=0)
    return get_dls(synth, size=32, batch_size=8, device='cpu', seed=42, cache=d/'cache')


def tiny_model(seed=0):
    "The lesson's small U-Net (width 8, depth 2) built from a fixed seed."
    torch.manual_seed(seed)
    return build_model(get_experiment(1), width=8, depth=2)


def fails(f, contains):
    "Assert that `f()` raises, with `contains` in the message (fastcore's `test_fail`)."
    with pytest.raises(Exception) as e: f()
    assert contains in str(e.value), f'{contains!r} not in {str(e.value)!r}'


def finite_model(ck):
    return all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())


def same_state(a, b):
    "Two state_dicts hold the same tensors, bit for bit."
    assert a.keys() == b.keys()
    for k, v in a.items(): assert torch.equal(b[k], v), k


# --- mixed precision ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def cpu_with(avx512_bf16, amx, capability='AVX512'):
    "Pretend to be a CPU with (or without) AVX512-BF16 and AMX, with PyTorch using `capability` instructions."
    with mock.patch.multiple(torch.cpu, _is_avx512_bf16_supported=lambda: avx512_bf16, _is_amx_tile_supported=lambda: amx), \
         mock.patch.object(torch.backends.cpu, 'get_cpu_capability', lambda: capability): yield


def test_amp_policy_on_other_cpus():
    with cpu_with(True, False): assert amp_policy('cpu') == (torch.bfloat16, False)   # a Zen 4 CPU
    with cpu_with(False, True): assert amp_policy('cpu') == (torch.bfloat16, False)   # a Sapphire Rapids CPU (AMX)
    with cpu_with(False, False):                               # an AVX2-only CPU: fp32, and a warning if bf16 is forced
        assert amp_policy('cpu') == (None, False)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always'); assert amp_policy('cpu', 'bf16') == (torch.bfloat16, False)
        assert len(w) == 1 and 'slower than fp32' in str(w[0].message)
    with cpu_with(True, False, capability='AVX2'): assert amp_policy('cpu') == (None, False)  # capped: ATEN_CPU_CAPABILITY=avx2
    with cpu_with(True, False), mock.patch.dict(os.environ, ONEDNN_MAX_CPU_ISA='AVX2'): assert amp_policy('cpu') == (None, False)
    assert amp_policy('cpu', 'off') == (None, False)
    assert amp_policy('cpu', 'fp16') == (torch.float16, True)
    assert amp_policy('mps', 'auto') == (torch.float16, True)
    fails(lambda: amp_policy('cpu', 'fp8'), "amp='fp8'")


def test_unet_under_autocast_is_close_to_fp32():
    "bf16 and fp16, NCHW and channels-last: the right shape and dtype, finite, and close to the fp32 logits."
    torch.manual_seed(0)
    um = UNet(width=8, depth=3, down='strided', up='upsample').eval()        # every kind of block but the max pool
    ux = torch.randn(2, 3, 64, 48)                                            # (B, C, H, W)
    with torch.no_grad(): uref = um(ux)                                       # fp32: the reference
    um_cl, ux_cl = copy.deepcopy(um).to(memory_format=torch.channels_last), ux.to(memory_format=torch.channels_last)
    for dtype, tol in [(torch.bfloat16, 0.05), (torch.float16, 0.01)]:
        for net, inp in [(um, ux), (um_cl, ux_cl)]:
            with torch.no_grad(), torch.autocast('cpu', dtype=dtype): out = net(inp)
            assert out.shape == uref.shape and out.dtype == dtype
            assert out.isfinite().all()
            err = ((out.float() - uref).abs().max() / uref.abs().max()).item()
            assert err < tol, f'{dtype}, channels_last={net is um_cl}: relative error {err:.4f}'


def test_bf16_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    m_train, ux = UNet(width=4, depth=2).train(), torch.randn(2, 3, 64, 48)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = nn.functional.binary_cross_entropy_with_logits(m_train(ux).float(), torch.rand(2, 1, 64, 48).round())
    loss.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in m_train.parameters())


def test_losses_of_bf16_logits_are_the_fp32_computation(dls):
    torch.manual_seed(0)
    mb = dls.train_masks[:16]                                                 # (16, 1, S, S) uint8
    xb16 = (torch.randn(mb.shape) + 3 * (mb.float() * 2 - 1)).bfloat16()      # a decent noisy prediction, in bf16
    for loss_fn in (DiceLoss(), DiceLoss(per_image=False), WeightedBCE(2.3)):
        with torch.autocast('cpu', dtype=torch.bfloat16): l16 = loss_fn(xb16, mb)
        assert l16.dtype == torch.float32 and torch.equal(l16, loss_fn(xb16.float(), mb))


def test_unknown_schedule_is_named():
    fails(lambda: sched_factor('linear', 0.5), "schedule='linear'")


# --- checkpoints ------------------------------------------------------------------------------------------------------

def test_atomic_save_reads_back(tmp_path):
    atomic_save({'a': torch.ones(2)}, tmp_path/'atomic'/'x.pt')               # a checkpoint without a model
    assert torch.equal(read_checkpoint(tmp_path/'atomic'/'x.pt')['a'], torch.ones(2))


def test_bad_settings_are_named(dls):
    fails(lambda: Trainer(tiny_model(), get_loss('bce'), dls, RunConfig(amp='half')), "amp must be 'auto'")
    fails(lambda: Trainer(tiny_model(), get_loss('bce'), dls, monitor='IoU'), "monitor='IoU'")
    fails(lambda: Trainer(tiny_model(), get_loss('bce'), dls, RunConfig(schedule='step')), "schedule must be None, 'cosine' or 'onecycle' (got 'step')")


@pytest.fixture
def saved(dls, tmp_path):
    "A checkpoint of one epoch of the lesson's tiny model, as `Trainer.save` writes it: tmp_path/'rt'/'last.pt'."
    t = Trainer(tiny_model(), get_loss('bce'), dls, CPU, out_dir=tmp_path/'rt', cbs=())
    for x, y in dls.train: t.train_step(x, y)
    t.epoch = 1; t.save('last')
    return t, tmp_path/'rt'/'last.pt'


def test_resume_from_a_missing_file_names_it(dls, saved, tmp_path):
    t2 = Trainer(tiny_model(seed=1), get_loss('bce'), dls, CPU.replace(seed=5), out_dir=tmp_path/'rt', cbs=()).resume()
    assert (t2.epoch, t2.step) == (1, len(dls.train))
    fails(lambda: t2.resume(tmp_path/'nowhere.pt'), 'nowhere.pt')


def test_a_damaged_last_pt_is_named(dls, saved, tmp_path):
    (tmp_path/'cut').mkdir(); last = tmp_path/'cut'/'last.pt'
    last.write_bytes(saved[1].read_bytes()[:1000])                            # cut short, as by a full disk
    fails(lambda: Trainer(tiny_model(), get_loss('bce'), dls, CPU, out_dir=tmp_path/'cut', cbs=()).resume(),
          f'{last}: cannot read this checkpoint')


def test_files_that_are_no_training_checkpoint_are_refused(dls, saved, tmp_path):
    cut = tmp_path/'cut'; cut.mkdir()
    cases = {'bare.pt': tiny_model().state_dict(), 'list.pt': [1, 2], 'other.pt': {'weights': torch.ones(2), 'epoch': 3}}
    for name, obj in cases.items(): torch.save(obj, cut/name)
    t3 = Trainer(tiny_model(), get_loss('bce'), dls, CPU, out_dir=cut, cbs=())
    for name, want in [('bare.pt', 'bare model state_dict'), ('list.pt', 'holds a list'), ('other.pt', "lacks model, optimizer")]:
        fails(lambda: t3.resume(cut/name), f"{cut/name}: ")
        fails(lambda: t3.resume(cut/name), want)
    fails(lambda: t3.load_state_dict({'model': {}}), 'the checkpoint: not a training checkpoint: it lacks optimizer')
    (cut/'empty.pt').write_bytes(b'')
    fails(lambda: t3.resume(cut/'empty.pt'), 'empty (0 bytes)')
    rt = saved[1]
    fails(lambda: Trainer(tiny_model(), get_loss('bce'), dls, CPU, monitor='loss', cbs=()).resume(rt),
          f"{rt}: this run picks best.pt by monitor='iou', not 'loss'")
    wide = build_model(get_experiment(1), width=16, depth=2)
    fails(lambda: Trainer(wide, get_loss('bce'), dls, CPU, cbs=()).resume(rt), f"{rt}: its weights do not fit this model")


def test_resume_keeps_the_recorded_settings(dls, tmp_path):
    ct = Trainer(tiny_model(), get_loss('bce'), dls, CPU, out_dir=tmp_path/'clip', clip=1.0, cbs=())
    for x, y in dls.train: ct.train_step(x, y)
    ct.epoch = 1; ct.save('last')                                   # an epoch, trained with clipping
    ck = torch.load(tmp_path/'clip'/'last.pt', weights_only=True)
    assert ck['trainer'] == dict(monitor='iou', clip=1.0, deterministic=False) == ct.settings
    fails(lambda: Trainer(tiny_model(), get_loss('bce'), dls, CPU, cbs=()).resume(tmp_path/'clip'/'last.pt'),
          f"{tmp_path/'clip'/'last.pt'}: this run was trained with clip=1.0, not clip=None")
    old_ck = {k: v for k, v in ck.items() if k not in ('trainer', 'monitor')}   # a checkpoint of 0.1 recorded neither
    ot = Trainer(tiny_model(), get_loss('bce'), dls, CPU, cbs=()); ot.load_state_dict(old_ck)
    assert (ot.epoch, ot.clip) == (1, None)


def test_fit_deletes_leftovers_of_a_killed_save(dls, tmp_path):
    (tmp_path/'leftover').mkdir(); junk = tmp_path/'leftover'/'.best.pt.k1ll3d99.tmp'; junk.write_bytes(b'half a checkpoint')
    Trainer(tiny_model(), get_loss('bce'), dls, CPU, out_dir=tmp_path/'leftover', cbs=()).fit(1)
    assert not junk.exists()
    assert sorted(p.name for p in (tmp_path/'leftover').iterdir()) == ['best.pt', 'history.json', 'last.pt']
    assert torch.load(tmp_path/'leftover'/'best.pt', weights_only=True)['monitor'] == 'iou'   # checked when resuming


# --- stopping and resuming --------------------------------------------------------------------------------------------

class Recorder(Callback):
    "Write down every event, with the trainer's epoch (and batch) at that moment."
    def __init__(self): self.log = []
    def before_fit(self, t): self.log.append(('before_fit', t.epoch))
    def before_epoch(self, t): self.log.append(('before_epoch', t.epoch))
    def after_batch(self, t): self.log.append(('after_batch', t.epoch, t.batch))
    def after_epoch(self, t): self.log.append(('after_epoch', t.epoch))
    def after_fit(self, t): self.log.append(('after_fit', t.epoch))


def test_events_arrive_in_the_documented_order(dls):
    "Moved from lesson 10: before_fit, then per epoch before_epoch, every batch and after_epoch, and after_fit last."
    rec = Recorder()
    Trainer(tiny_model(), get_loss('bce'), dls, CPU.replace(epochs=2), cbs=[rec]).fit()
    nb_ = len(dls.train)
    assert rec.log == [('before_fit', 0)] + [e for ep in range(2) for e in
        [('before_epoch', ep)] + [('after_batch', ep, b) for b in range(nb_)] + [('after_epoch', ep + 1)]] + [('after_fit', 2)]


def test_a_callback_stops_the_run_and_after_fit_still_comes(dls):
    class StopNow(Callback):
        order = -1   # runs before the recorder
        def after_batch(self, t): t.request_stop()
    rec = Recorder()
    t = Trainer(tiny_model(), get_loss('bce'), dls, CPU, cbs=[rec, StopNow()])
    t.fit(2)
    assert [type(c).__name__ for c in t.cbs] == ['ThreadChoice', 'StopNow', 'Recorder']   # sorted by `order`; on a CPU
    # the trainer adds lesson 08's `ThreadChoice` (order -30), which keeps the count this file set
    assert rec.log == [('before_fit', 0), ('before_epoch', 0), ('after_batch', 0, 0), ('after_fit', 0)]
    assert t.stopped == 'callback'


class StopAfter(Callback):
    "Callback: ask for a stop after epoch `epoch`, or after batch `step` (counting from 1) of the run."
    def __init__(self, epoch=None, step=None): self.epoch, self.step = epoch, step
    def after_epoch(self, t):
        if t.epoch == self.epoch: t.request_stop()
    def after_batch(self, t):
        if t.step == self.step: t.request_stop()


def run(dls, out, epochs=2, seed=0, model_seed=0, resume=False, cbs=()):
    "The lesson's deterministic one-cycle run of the tiny model, into `out`."
    t = Trainer(tiny_model(model_seed), get_loss('bce'), dls, CPU.replace(seed=seed, schedule='onecycle'),
                out_dir=out, deterministic=True, cbs=cbs)
    t.fit(epochs, resume=resume); return t


def same_run(a, b):
    "Two trainers ran the same run: the same history (but for wall-clock times) and the same weights."
    timing = {'seconds', 'images_per_s'}
    assert ([{k: v for k, v in h.items() if k not in timing} for h in a.history] ==
            [{k: v for k, v in h.items() if k not in timing} for h in b.history])
    same_state(a.model.state_dict(), b.model.state_dict())


def test_sigint_mid_epoch_then_resume_is_the_straight_run(dls, tmp_path):
    "A real SIGINT to our own process (as Ctrl-C): the epoch in progress is lost and redone; the handlers come back."
    straight = run(dls, tmp_path/'straight')
    old = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is threading.main_thread():
        class Kill:
            def after_batch(self, t):
                if t.step == len(dls.train) + 2: os.kill(os.getpid(), signal.SIGINT)
        cbs = [Kill()]
    else: cbs = [StopAfter(step=len(dls.train) + 2)]  # no handlers off the main thread: ask directly
    first = run(dls, tmp_path/'sigint', cbs=cbs)
    assert (first.stopped, first.epoch) == ('SIGINT' if type(cbs[0]).__name__ == 'Kill' else 'callback', 1)
    ck = torch.load(tmp_path/'sigint'/'last.pt', weights_only=True)
    assert (ck['epoch'], ck['step'], len(ck['history'])) == (1, len(dls.train), 1)
    assert signal.getsignal(signal.SIGINT) is old
    same_run(straight, run(dls, tmp_path/'sigint', seed=9, model_seed=3, resume=True))


# --- the NaN guards ---------------------------------------------------------------------------------------------------

class PoisonEpoch:
    "Wrap a loader so that batch `at` of pass `epoch` (counting from 1) is NaN."
    def __init__(self, dl, epoch=2, at=1): self.dl, self.epoch, self.at, self.n, self.passes = dl, epoch, at, dl.n, 0
    def __len__(self): return len(self.dl)
    def __iter__(self):
        self.passes += 1
        for i, (x, y) in enumerate(self.dl):
            yield (torch.full_like(x, float('nan')) if (self.passes, i) == (self.epoch, self.at) else x), y


def test_nan_loss_keeps_the_last_good_checkpoint_and_the_folder(dls, tmp_path):
    pdls = SimpleNamespace(train=PoisonEpoch(dls.train), valid=dls.valid, train_masks=dls.train_masks)
    t = Trainer(tiny_model(), get_loss('bce'), pdls, CPU, out_dir=tmp_path/'nan', cbs=())
    fails(lambda: t.fit(3), f'at epoch 2, step 2 of {len(dls.train)}')
    for f in ('last.pt', 'best.pt'):
        ck = torch.load(tmp_path/'nan'/f, weights_only=True)
        assert ck['epoch'] == 1 and finite_model(ck)
    assert len(json.loads((tmp_path/'nan'/'history.json').read_text())) == 1
    # a new Trainer pointed at that folder refuses to start unless asked to resume: the good checkpoint survives a slip
    fresh = Trainer(tiny_model(), get_loss('bce'), dls, CPU, out_dir=tmp_path/'nan', cbs=())
    fails(lambda: fresh.fit(3), 'resume=True')
    assert torch.load(tmp_path/'nan'/'last.pt', weights_only=True)['epoch'] == 1  # the NaN run's last good epoch, intact


def test_a_non_finite_model_is_never_saved(dls, tmp_path):
    "A finite loss but an infinite BatchNorm statistic: the epoch is refused and best.pt, last.pt stay epoch 1's."
    class BreakWeights(Callback):
        "Callback: make one BatchNorm statistic infinite at the end of epoch `epoch` (counting from 1)."
        def __init__(self, epoch): self.epoch = epoch
        def after_batch(self, t):
            if t.epoch + 1 == self.epoch and t.batch + 1 == len(t.dls.train):
                next(m for m in t.model.modules() if isinstance(m, nn.BatchNorm2d)).running_var.fill_(float('inf'))
    t = Trainer(tiny_model(), get_loss('bce'), dls, CPU, out_dir=tmp_path/'inf', cbs=[BreakWeights(epoch=2)])
    fails(lambda: t.fit(3), 'Epoch 2 left')
    for f in ('last.pt', 'best.pt'):
        ck = torch.load(tmp_path/'inf'/f, weights_only=True)
        assert ck['epoch'] == 1 and finite_model(ck)


# --- the LR finder in the trainer -------------------------------------------------------------------------------------

def test_lr_finder_follows_its_schedule_and_gives_the_trainer_back(dls):
    loss_fn = get_loss('bce', pos_weight=pos_weight_from_masks(dls.train_masks))
    finder = LRFinder(end=100., steps=80)
    ft = Trainer(tiny_model(), loss_fn, dls, CPU.replace(epochs=100), cbs=[finder]); w0 = copy.deepcopy(ft.model.state_dict())
    ft.fit()
    assert 10 < len(finder.lrs) <= 80 and finder.losses[0] > min(finder.losses)
    assert all(abs(a - finder.lr(k)) < 1e-12 for k, a in enumerate(finder.lrs))   # the optimiser's rates: the schedule
    same_state(w0, ft.model.state_dict())                                             # the weights as they were
    assert (ft.step, ft.epoch, ft.history, ft.schedule_lr, ft.cfg.epochs) == (0, 0, [], True, 100)


# --- on a GPU ---------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (the lesson\'s "Speed on a GPU")')
def test_both_amp_paths_train_checkpoint_and_resume_on_a_gpu(tmp_path):
    d = tmp_path/'pets'
    gd = get_dls(make_synthetic_pets(d/'synth', n_trainval=64, n_test=16, size=48, seed=0), size=32, batch_size=8,
                 device='cuda', seed=42, cache=d/'cache')
    assert amp_policy('cuda') == ((torch.bfloat16, False) if torch.cuda.get_device_capability()[0] >= 8 else (torch.float16, True))
    for amp in ('bf16', 'fp16'):   # both AMP paths train, checkpoint and resume on the GPU
        g = Trainer(tiny_model(), get_loss('bce'), gd, RunConfig(device='cuda', amp=amp), out_dir=tmp_path/f'gpu_{amp}', cbs=())
        g.fit(2, resume=True)
        assert g.channels_last and g.opt.defaults['fused'] and torch.backends.cudnn.benchmark
        ck = torch.load(tmp_path/f'gpu_{amp}'/'last.pt', weights_only=True)
        assert (ck['epoch'], bool(ck['scaler'])) == (2, amp == 'fp16')
        assert finite_model(ck)
