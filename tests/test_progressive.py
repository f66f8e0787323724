"""Issue 23: progressive resizing, `RunConfig.progressive`: the first share of the epochs trains at half the size.

The configuration refuses a share outside [0, 1) and a half size the U-Net cannot take; the trainer trains those first
epochs on images and masks halved (area-averaged images, nearest-neighbour masks), validates every epoch at full size,
and changes what a seed trains while two runs with one seed stay equal. Tiny synthetic pets on the CPU, in seconds.
"""
import pytest
import torch

from unet_tutorial.callbacks import Callback
from unet_tutorial.config import RunConfig, CPU, check_same, settings_of
from unet_tutorial.loaders import get_dls
from unet_tutorial.losses import get_loss
from unet_tutorial.model import ConfigError, build_model
from unet_tutorial.synthetic import make_synthetic_pets
from unet_tutorial.trainer import Trainer


@pytest.fixture(scope='module')
def pets(tmp_path_factory):
    d = tmp_path_factory.mktemp('prog')
    return make_synthetic_pets(d/'synth', n_trainval=40, n_test=8, size=32, seed=0), d/'cache'


@pytest.fixture(autouse=True)
def _cache(pets, monkeypatch):
    monkeypatch.setenv('UNET_TUTORIAL_CACHE', str(pets[1])); torch.set_num_threads(1)


@pytest.mark.parametrize('bad', [1.0, -0.1, True, '0.5', 2])
def test_progressive_must_be_a_share_below_one(bad):
    with pytest.raises(ConfigError, match='progressive'): RunConfig(progressive=bad)


def test_progressive_needs_a_half_size_the_unet_takes():
    with pytest.raises(ConfigError, match=r'half the size, 24.*multiple of 32'): RunConfig(size=48, depth=4, progressive=0.5)
    assert RunConfig(size=48, depth=4).progressive == 0   # without it 48 is fine (a multiple of 16)
    RunConfig(size=64, depth=4, progressive=0.5)          # 32 is a multiple of 16


def test_progressive_is_a_setting_runs_must_share():
    a, b = settings_of(CPU, 'fp'), settings_of(CPU.replace(progressive=0.5), 'fp')
    assert any(d.startswith('progressive: 0.0 there, 0.5 now') for d in check_same(a, b))
    assert check_same(a, settings_of(RunConfig.from_dict({k: v for k, v in vars(CPU).items() if k != 'progressive'}), 'fp')) == []


class _Sizes(Callback):
    "Records the side of every batch the model saw (a forward hook), training and validation, and `trainer.size` after each epoch."
    def __init__(self): self.train, self.valid, self.sizes = [], [], []
    def after_epoch(self, t): self.sizes.append(t.size)   # what `state_dict` (every checkpoint) records for `predict`
    def before_fit(self, t):
        def hook(m, inp, out): (self.train if m.training else self.valid).append(inp[0].shape[-1])
        t.model.register_forward_hook(hook)


def _fit(pets, progressive, epochs=4, seed=0):
    dls = get_dls(pets[0], size=32, batch_size=8, device='cpu')
    torch.manual_seed(seed)
    cfg = RunConfig(size=32, width=4, depth=2, batch_size=8, epochs=epochs, lr=3e-3, schedule='onecycle',
                    progressive=progressive, device='cpu', amp='off', seed=seed)
    cb = _Sizes()
    t = Trainer(build_model(1, width=4, depth=2), get_loss('bce'), dls, cfg, cbs=[cb])
    t.fit()
    return t, cb, len(dls.train)


def test_first_epochs_train_at_half_size_and_validation_at_full_size(pets):
    t, cb, n = _fit(pets, 0.5, epochs=4)
    assert cb.train == [16] * (2 * n) + [32] * (2 * n)     # round(0.5 * 4) = 2 epochs at 16 px, then 2 at 32 px
    assert set(cb.valid) == {32}                            # every validation pass at the full size
    assert cb.sizes == [32] * 4                             # every checkpoint records the full size, the half-size epochs' too
    t, cb, n = _fit(pets, 0.67, epochs=3)
    assert cb.train == [16] * (2 * n) + [32] * n            # round(0.67 * 3) = 2


def test_halved_masks_keep_their_labels(pets):
    "The loss sees 16-px masks in the first epoch holding only the labels the full-size masks hold (nearest, not averaged)."
    seen = []
    bce = get_loss('bce')
    def loss(logits, y): seen.append((y.shape[-1], set(y.unique().tolist()), logits.shape[-1])); return bce(logits, y)
    dls = get_dls(pets[0], size=32, batch_size=8, device='cpu')
    cfg = RunConfig(size=32, width=4, depth=2, batch_size=8, epochs=2, progressive=0.5, device='cpu', amp='off')
    t = Trainer(build_model(1, width=4, depth=2), loss, dls, cfg, cbs=())
    t.fit()
    train = seen[:len(dls.train)]   # the first epoch's steps
    assert all(s == 16 and l == 16 and v <= {0, 1} for s, v, l in train)
    assert set().union(*(v for _, v, _ in train)) == {0, 1}


def test_progressive_changes_the_weights_and_runs_repeat(pets):
    a, _, _ = _fit(pets, 0., epochs=2)
    b, _, _ = _fit(pets, 0., epochs=2)
    c, _, _ = _fit(pets, 0.5, epochs=2)
    wa, wb, wc = (torch.cat([p.flatten() for p in t.model.parameters()]) for t in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
