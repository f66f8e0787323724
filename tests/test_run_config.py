"""The run configuration travels whole (issue 21): data from a `RunConfig` (`loaders.dls_for`), one meaning of `limit`
(training images) on every path, the LR finder moving the optimiser's rate, the device resolved once per comparison,
and the trainer's own settings (`monitor`, `clip`, `deterministic`) written with the run and checked on resume.

Everything runs on the CPU on tiny synthetic pets, in seconds.
"""
import json
from types import SimpleNamespace

import pytest
import torch

from unet_tutorial import checkpoints, experiments, loaders, trainer as trainer_mod
from unet_tutorial.callbacks import Callback, LRFinder
from unet_tutorial.config import RunConfig
from unet_tutorial.core import BadInput
from unet_tutorial.experiments import run_comparison, train_one
from unet_tutorial.loaders import dls_for, get_dls, limit_train
from unet_tutorial.losses import get_loss
from unet_tutorial.model import build_model
from unet_tutorial.synthetic import make_synthetic_pets
from unet_tutorial.trainer import Trainer

CFG = RunConfig(size=32, width=4, depth=2, batch_size=4, epochs=1, lr=1e-2, device='cpu', amp='off')


@pytest.fixture(scope='module')
def pets(tmp_path_factory):
    "Tiny synthetic pets and a tensor cache of their own."
    d = tmp_path_factory.mktemp('pets')
    return make_synthetic_pets(d/'synth', n_trainval=40, n_test=10, size=32, seed=0), d/'cache'


@pytest.fixture(autouse=True)
def _cache(pets, monkeypatch):
    monkeypatch.setenv('UNET_TUTORIAL_CACHE', str(pets[1]))


def tiny(seed=0):
    torch.manual_seed(seed)
    return build_model(1, width=4, depth=2)


# --- 1. data loading takes the config -------------------------------------------------------------------------
def test_dls_for_reads_every_data_field(pets):
    root, cache = pets
    cfg = CFG.replace(border='ignore', augment=False, drop_bad_trimaps=False, batch_size=8)
    dls = dls_for(cfg, root, 'cpu')
    ref = get_dls(root, size=32, batch_size=8, border='ignore', augment=False, device='cpu', drop_bad=False)
    assert (dls.train.n, dls.valid.n, dls.test.n) == (ref.train.n, ref.valid.n, ref.test.n)
    assert dls.train.batch_size == 8 and not dls.train.augment and dls.dropped == ref.dropped
    assert torch.equal(dls.train.images, ref.train.images) and torch.equal(dls.valid.masks, ref.valid.masks)
    assert (dls.valid.masks == 255).any()                               # border='ignore' reached the masks
    kept = dls_for(CFG, root, 'cpu')                                    # drop_bad_trimaps=True: the empty trimaps go
    assert sum(map(len, kept.dropped.values())) > 0 and kept.test.n < dls.test.n
    duck = SimpleNamespace(**{k: getattr(cfg, k) for k in ('size', 'batch_size', 'border', 'augment', 'drop_bad_trimaps', 'limit', 'device')})
    assert torch.equal(dls_for(duck, root, 'cpu').train.images, dls.train.images)   # any object with those fields


def test_experiments_load_data_with_dls_for(pets, monkeypatch):
    root, _ = pets
    seen = []
    monkeypatch.setattr(experiments, 'dls_for', lambda cfg, root, device=None, **kw: seen.append(cfg) or loaders.dls_for(cfg, root, device, **kw))
    cfg = CFG.replace(limit=6)
    dls = experiments._load_data(root, cfg, torch.device('cpu'))
    assert seen == [cfg] and dls.train.n == 6


# --- 2. one meaning of limit: training images ---------------------------------------------------------------
def test_limit_is_training_images_and_keeps_the_old_subset(pets):
    root, _ = pets
    full, lim = dls_for(CFG, root, 'cpu'), dls_for(CFG.replace(limit=7), root, 'cpu')
    assert (lim.train.n, lim.valid.n, lim.test.n) == (7, full.valid.n, full.test.n)
    keep = torch.randperm(full.train.n, generator=torch.Generator().manual_seed(42))[:7]   # what 0.2's _load_data kept
    assert torch.equal(lim.train.images, full.train.images[keep]) and torch.equal(lim.train_masks, full.train.masks[keep])
    assert limit_train(full, None) is full and limit_train(full, full.train.n + 5) is full


def test_get_dls_per_split_and_old_limit_keyword(pets):
    root, _ = pets
    a = get_dls(root, size=32, device='cpu', per_split=5)
    b = get_dls(root, size=32, device='cpu', limit=5)                   # the old name, as lessons 03, 10 and 17 call it
    assert a.valid.n <= 5 and a.test.n <= 5 and torch.equal(a.train.images, b.train.images)
    with pytest.raises(ValueError, match='per_split'): get_dls(root, size=32, device='cpu', per_split=5, limit=6)


def test_train_one_honours_limit_with_loaders_given(pets, tmp_path):
    root, _ = pets
    dls = dls_for(CFG, root, 'cpu')                                      # every training image
    rec = train_one(CFG.replace(limit=6), dls, tmp_path/'run', progress=False)
    assert rec['timing']['n_train'] == 6 and dls.train.n > 6            # the caller's loaders are left whole


def test_trainer_honours_limit(pets):
    root, _ = pets
    dls = dls_for(CFG, root, 'cpu')
    t = Trainer(tiny(), get_loss('bce'), dls, CFG.replace(limit=5), cbs=())
    assert t.dls.train.n == 5 and dls.train.n > 5
    odd = SimpleNamespace(train=SimpleNamespace(n=30), valid=None)      # loaders it cannot take a subset of
    with pytest.raises(ValueError, match='limit=5'): limit_train(odd, 5)


# --- 3. the LR finder drives the optimiser ------------------------------------------------------------------
class Watch(Callback):
    "Record, after every batch, whether the trainer's config is still the one it started with."
    def before_fit(self, t): self.cfg, self.same = t.cfg, []
    def after_batch(self, t): self.same.append(t.cfg is self.cfg)


@pytest.mark.parametrize('schedule', [None, 'onecycle'])
def test_lr_finder_sets_the_optimiser_rate_and_restores(pets, schedule):
    root, _ = pets
    dls, cfg = dls_for(CFG, root, 'cpu'), CFG.replace(schedule=schedule, epochs=50)
    t = Trainer(tiny(), get_loss('bce'), dls, cfg, cbs=())
    used, step = [], t.opt.step
    def spy(*a, **kw): used.append(t.opt.param_groups[0]['lr']); return step(*a, **kw)
    t.opt.step = spy
    w0 = {k: v.clone() for k, v in t.model.state_dict().items()}
    finder, watch = LRFinder(start=1e-5, end=1e-1, steps=12), Watch()
    t.cbs = [finder, watch]
    t.fit()
    want = [1e-5 * (1e-1 / 1e-5) ** (k / 11) for k in range(len(finder.lrs))]
    assert len(used) == len(finder.lrs) >= 10
    assert used == pytest.approx(want, rel=1e-9) and finder.lrs == pytest.approx(want, rel=1e-9)
    assert all(watch.same) and t.cfg is cfg                              # the config is never swapped
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in w0.items())   # the weights are given back
    assert t.opt.param_groups[0]['lr'] == cfg.lr and not t.opt.state_dict()['state']
    assert (t.epoch, t.step, t.history, t.schedule_lr) == (0, 0, [], True)


# --- 4. the device resolved once --------------------------------------------------------------------------
def test_comparison_resolves_the_device_once(pets, tmp_path, monkeypatch):
    root, _ = pets
    calls = []
    for m in (experiments, trainer_mod, loaders, checkpoints):   # every module that resolves a device
        real = m.get_device
        def counted(name=None, _real=real):
            if not isinstance(name, torch.device): calls.append(name)   # a torch.device is resolved already
            return _real(name)
        monkeypatch.setattr(m, 'get_device', counted)
    run_comparison(root, tmp_path/'cmp', CFG.replace(limit=8), experiments=(1, 2), progress=False, log=lambda s: None)
    assert calls == ['cpu']


def test_trainer_takes_a_resolved_device(pets):
    root, _ = pets
    t = Trainer(tiny(), get_loss('bce'), dls_for(CFG, root, 'cpu'), CFG.replace(device=None), device=torch.device('cpu'), cbs=())
    assert t.device == torch.device('cpu')
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cpu'"):
            Trainer(tiny(), get_loss('bce'), dls_for(CFG, root, 'cpu'), CFG, device=torch.device('cuda'), cbs=())


# --- 5. the trainer's own settings written with the run ---------------------------------------------------
def test_trainer_settings_in_checkpoint_and_metrics(pets, tmp_path):
    root, _ = pets
    dls = dls_for(CFG, root, 'cpu')
    t = Trainer(tiny(), get_loss('bce'), dls, CFG, out_dir=tmp_path/'a', monitor='dice', clip=0.5, cbs=())
    t.fit(1)
    for f in ('last.pt', 'best.pt'):
        ck = torch.load(tmp_path/'a'/f, weights_only=True)
        assert ck['trainer'] == dict(monitor='dice', clip=0.5, deterministic=False) and ck['monitor'] == 'dice'
    rec = train_one(CFG, dls, tmp_path/'b', progress=False)
    assert rec['trainer'] == dict(monitor='iou', clip=None, deterministic=False)
    assert json.loads((tmp_path/'b'/'metrics.json').read_text())['trainer'] == rec['trainer']


def test_resume_checks_the_recorded_settings(pets, tmp_path):
    root, _ = pets
    dls = dls_for(CFG, root, 'cpu')
    Trainer(tiny(), get_loss('bce'), dls, CFG, out_dir=tmp_path/'r', clip=0.5, cbs=()).fit(1)
    last = tmp_path/'r'/'last.pt'
    with pytest.raises(BadInput, match=rf"{last}: this run was trained with clip=0.5, not clip=None"):
        Trainer(tiny(), get_loss('bce'), dls, CFG, out_dir=tmp_path/'r', cbs=()).fit(2, resume=True)
    t = Trainer(tiny(), get_loss('bce'), dls, CFG, out_dir=tmp_path/'r', clip=0.5, cbs=())
    assert len(t.fit(2, resume=True)) == 2                               # the same settings resume


def test_old_checkpoint_without_settings_resumes(pets, tmp_path):
    root, _ = pets
    dls = dls_for(CFG, root, 'cpu')
    Trainer(tiny(), get_loss('bce'), dls, CFG, out_dir=tmp_path/'old', clip=0.5, cbs=()).fit(1)
    last = tmp_path/'old'/'last.pt'
    ck = torch.load(last, weights_only=True)
    for k in ('trainer', 'monitor'): ck.pop(k)                           # as a checkpoint of 0.1 was written
    torch.save(ck, last)
    t = Trainer(tiny(), get_loss('bce'), dls, CFG, out_dir=tmp_path/'old', cbs=())   # its settings are unknown: not checked
    assert len(t.fit(2, resume=True)) == 2 and t.clip is None
    assert torch.load(last, weights_only=True)['trainer']['clip'] is None   # recorded from now on
