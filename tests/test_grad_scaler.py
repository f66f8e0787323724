"""Issue 25, item 3: the GPU's precision path (fp16 autocast with a `GradScaler`) run on the CPU, where recent PyTorch
has both, so the code a Colab learner's T4 runs is tested without a GPU: a step whose scaled gradients overflow is
skipped and the scale halved; the scale grows after `growth_interval` good steps; the gradients are unscaled before
they are clipped; the scaler's state is in the checkpoint and restored on resume."""
from unittest import mock

import pytest
import torch, torch.nn as nn

from unet_tutorial.config import RunConfig
from unet_tutorial.loaders import get_dls
from unet_tutorial.losses import get_loss
from unet_tutorial.model import build_model
from unet_tutorial.synthetic import make_synthetic_pets
from unet_tutorial.trainer import Trainer

torch.set_num_threads(1)
FP16 = RunConfig(device='cpu', amp='fp16', channels_last=False)


@pytest.fixture(scope='module')
def dls(tmp_path_factory):
    d = tmp_path_factory.mktemp('pets')
    return get_dls(make_synthetic_pets(d/'synth', n_trainval=24, n_test=8, size=32, seed=0), size=32, batch_size=8,
                   device='cpu', seed=0, cache=d/'cache')


def trainer(dls, cfg=FP16, **kw):
    torch.manual_seed(0)
    return Trainer(build_model(1, width=4, depth=2), get_loss('bce'), dls, cfg, cbs=(), **kw)


def params(t): return [p.detach().clone() for p in t.model.parameters()]


def test_fp16_on_the_cpu_uses_an_enabled_scaler_and_fp16_logits(dls):
    t = trainer(dls)
    assert t.amp_dtype == torch.float16 and t.scaler.is_enabled()
    x, _ = next(iter(dls.train))
    with t.autocast(): assert t.model(x).dtype == torch.float16


def test_an_overflowing_step_is_skipped_and_the_scale_halved(dls):
    t = trainer(dls)
    t.scaler = torch.amp.GradScaler('cpu', init_scale=2.**60)   # fp16 gradients of a loss this large are inf
    before = params(t)
    t.train_step(*next(iter(dls.train)))
    assert t.scaler.get_scale() == 2.**59                     # halved (backoff_factor 0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, params(t)))   # the optimizer step was skipped
    t.scaler.update(2.**8)                                    # a scale that fits: the next step is a real one
    t.train_step(*next(iter(dls.train)))
    assert t.scaler.get_scale() == 2.**8 and not all(torch.equal(a, b) for a, b in zip(before, params(t)))


def test_the_scale_grows_after_growth_interval_good_steps(dls):
    t = trainer(dls)
    t.scaler = torch.amp.GradScaler('cpu', init_scale=256., growth_interval=2)
    batches = iter(dls.train)
    t.train_step(*next(batches)); assert t.scaler.get_scale() == 256.
    t.train_step(*next(batches)); assert t.scaler.get_scale() == 512.   # doubled after 2 steps without inf/NaN


def test_gradients_are_unscaled_before_clipping(dls):
    x, y = next(iter(dls.train))
    ref = trainer(dls, RunConfig(device='cpu', amp='off', channels_last=False))   # the true gradients, in fp32
    with ref.autocast(): loss = ref.loss_fn(ref.model(x).float(), y)
    loss.backward()
    true_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.model.parameters()])).item()
    t = trainer(dls, clip=1e-3)
    t.scaler = torch.amp.GradScaler('cpu', init_scale=2.**12)
    seen, clip = [], nn.utils.clip_grad_norm_
    def spy(ps, max_norm, *a, **k):
        ps = list(ps); seen.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ps])).item())
        return clip(ps, max_norm, *a, **k)
    with mock.patch.object(nn.utils, 'clip_grad_norm_', spy): t.train_step(x, y)
    assert len(seen) == 1
    assert seen[0] == pytest.approx(true_norm, rel=0.05)      # scaled, it would be 4096 times larger


def test_the_scaler_state_is_checkpointed_and_restored_on_resume(dls, tmp_path):
    t = trainer(dls, cfg=FP16.replace(epochs=1), out_dir=tmp_path/'run')
    t.scaler = torch.amp.GradScaler('cpu', init_scale=2.**10, growth_interval=1)   # grows every good step: a state to keep
    t.fit()
    saved = torch.load(tmp_path/'run'/'last.pt', weights_only=True)['scaler']
    assert saved['scale'] == t.scaler.get_scale() != 2.**10
    r = trainer(dls, cfg=FP16.replace(epochs=1), out_dir=tmp_path/'run')
    assert r.scaler.get_scale() == 2.**16                      # a fresh scaler's default
    r.resume()                                                 # out_dir/last.pt
    assert r.scaler.get_scale() == saved['scale'] and r.scaler.state_dict()['_growth_tracker'] == saved['_growth_tracker']
