"""Issue 23, items 3 and 4: a time budget (`RunConfig.minutes`, `--minutes`) and a thread count that is chosen, not assumed.

The budget's tests run the real `Trainer` on tiny synthetic pets with a fake clock that the steps advance by a made-up
cost (a step at each size, a validation batch), so the epochs planned are known in advance and nothing is timed: the
plan, progressive resizing counted, one-cycle reaching its final rate at the last step, a re-plan that keeps the rate
continuous, a resume that keeps the plan, the record's fields, and `--minutes` on both commands. The thread choice is
tested the same way: a fake cost per thread count picks the faster; a fixed count is left alone.
"""
import json, math

import pytest
import torch

from unet_tutorial import callbacks, cli
from unet_tutorial.callbacks import Callback, ThreadChoice, TimeBudget, budget_seconds, plan_epochs
from unet_tutorial.config import RunConfig, check_same, settings_of, sched_factor
from unet_tutorial.experiments import finished, train_one
from unet_tutorial.loaders import get_dls
from unet_tutorial.losses import get_loss
from unet_tutorial.model import ConfigError, build_model
from unet_tutorial.synthetic import make_synthetic_folder, make_synthetic_pets
from unet_tutorial.trainer import Trainer


@pytest.fixture(scope='module')
def pets(tmp_path_factory):
    d = tmp_path_factory.mktemp('budget')
    return make_synthetic_pets(d/'synth', n_trainval=40, n_test=8, size=32, seed=0), d/'cache'


@pytest.fixture(autouse=True)
def _env(pets, monkeypatch):
    monkeypatch.setenv('UNET_TUTORIAL_CACHE', str(pets[1])); monkeypatch.setenv('MPLBACKEND', 'Agg')
    old = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class Clock:
    "A fake clock that the trainer's steps and validation batches advance: `cost[side]` a step, `valid` a batch, times `slow`."
    def __init__(self, cost, valid=0.25): self.now, self.cost, self.valid, self.slow = 0., cost, valid, 1.
    def __call__(self): return self.now


def clocked(t, clock):
    "Make trainer `t`'s steps and validation batches advance `clock` (instance attributes over the methods)."
    step, evaluate = t.train_step, t.evaluate
    def train_step(x, y): clock.now += clock.cost[x.shape[-1]] * clock.slow; return step(x, y)
    def ev(dl=None):
        dl = t.dls.valid if dl is None else dl
        clock.now += clock.valid * clock.slow * len(dl); return evaluate(dl)
    t.train_step, t.evaluate = train_step, ev
    return t


class LRs(Callback):
    "The learning rate of every step, as the optimiser had it."
    def before_fit(self, t): self.lrs = []
    def after_batch(self, t): self.lrs.append(t.opt.param_groups[0]['lr'])


class Slower(Callback):
    "After the budget planned (its order is later), every cost is `factor` times the trial's: a neighbour started."
    order = -15
    def __init__(self, factor): self.factor, self.clock = factor, None   # the clock: set by `budgeted`
    def before_fit(self, t): self.clock.slow = self.factor


class Threads(Callback):
    "The thread count of every step."
    def __init__(self): self.seen = []
    def after_batch(self, t): self.seen.append(torch.get_num_threads())


class StopAfter(Callback):
    def __init__(self, epoch): self.epoch = epoch
    def after_epoch(self, t):
        if t.epoch == self.epoch: t.request_stop()


CFG = RunConfig(size=32, width=4, depth=2, batch_size=8, lr=3e-3, schedule='onecycle', device='cpu', amp='off')


def budgeted(pets, minutes=0.25, progressive=0., cbs=(), cost=None, out_dir=None, **kw):
    "A trainer of a tiny U-Net with a `TimeBudget` on a fake clock (a 32-px step 0.25 s, 16-px 0.125 s, a validation batch 0.25 s)."
    dls = get_dls(pets[0], size=32, batch_size=8, device='cpu')
    clock = Clock(cost or {32: 0.25, 16: 0.125})
    for c in cbs:
        if isinstance(c, Slower): c.clock = clock
    cfg = CFG.replace(minutes=minutes, progressive=progressive)
    t = Trainer(build_model(1, width=4, depth=2), get_loss('bce'), dls, cfg, out_dir=out_dir,
                cbs=[TimeBudget(minutes, clock=clock), *cbs], **kw)
    return clocked(t, clock), clock


# --- the configuration and the plan -------------------------------------------------------------------------------

@pytest.mark.parametrize('bad', [0, -2, float('inf'), float('nan'), True, '5'])
def test_minutes_must_be_a_positive_number(bad):
    with pytest.raises(ConfigError, match='minutes must be a positive number') as e: RunConfig(minutes=bad)
    assert e.value.field == 'minutes'


def test_a_budget_is_a_setting_runs_must_share_and_it_frees_epochs():
    a = settings_of(CFG.replace(minutes=2), 'fp')
    assert check_same(a, settings_of(CFG.replace(minutes=2, epochs=3), 'fp')) == []      # the plan decides the epochs
    assert check_same(a, settings_of(CFG, 'fp')) == ['minutes: 2 there, None now']        # never with an unbudgeted run
    assert check_same(settings_of(CFG, 'fp'), a) == ['minutes: None there, 2 now']


def test_plan_epochs_for_given_step_costs():
    # 10 steps of 0.5 s and a validation pass of 1 s: 6 s an epoch
    assert [plan_epochs(s, step=0.5, valid=1., batches=10) for s in (5, 6, 59.9, 60, 61)] == [1, 1, 9, 10, 10]
    # progressive 0.5 with 0.125-s half-size steps: round(0.5 * e) cheap epochs of 2.25 s, the rest 6 s
    assert budget_seconds(8, 0.5, 1., 10, half=0.125, progressive=0.5) == 4 * 2.25 + 4 * 6
    e = plan_epochs(60, 0.5, 1., 10, half=0.125, progressive=0.5)
    assert budget_seconds(e, 0.5, 1., 10, 0.125, 0.5) <= 60 < budget_seconds(e + 1, 0.5, 1., 10, 0.125, 0.5) and e > 10
    assert plan_epochs(10, 0.5, 1., 10, done=3) == 4                  # at least one more than done
    with pytest.raises(ValueError, match='a step must take some time'): plan_epochs(10, 0., 1., 10)


# --- the budget in the real trainer, on a fake clock -----------------------------------------------------------------

def test_the_plan_follows_the_costs_and_one_cycle_ends_at_the_last_step(pets, capsys):
    t, clock = budgeted(pets, cbs=[LRs()])
    hist = t.fit()
    nb, lrs = len(t.dls.train), t.cbs[[type(c) for c in t.cbs].index(LRs)].lrs
    spent = 3 * 0.25 + 2 * 0.25                    # the trial: a warm-up step and 2 timed ones; a validation batch twice
    assert t.plan['measure_s'] == spent and t.plan['cost'] == dict(step=0.25, valid=0.25 * len(t.dls.valid))
    epoch = nb * 0.25 + t.plan['cost']['valid']
    assert t.plan['epochs'] == plan_epochs(15 - spent, 0.25, t.plan['cost']['valid'], nb) == int((15 - spent) // epoch)
    assert len(hist) == t.epochs == t.plan['epochs'] and t.step == t.total_steps == len(lrs) == t.epochs * nb
    assert clock.now <= 15 and t.plan['planned_minutes'] <= 0.25
    T = t.total_steps                                # one-cycle completed: the last step used its final rate
    assert lrs[-1] == pytest.approx(CFG.lr * sched_factor('onecycle', (T - 1) / T)) and lrs[-1] < CFG.lr / 100
    assert abs(max(range(T), key=lrs.__getitem__) - 0.3 * T) <= 1     # the peak 30% of the way
    out = capsys.readouterr().out
    assert f"time budget 0.25 min: 0.25 s a step, {t.plan['cost']['valid']:.3g} s a validation pass -> {t.epochs} epochs planned" in out
    assert "min used" in out and t.plan['actual_minutes'] == pytest.approx((spent + sum(h['seconds'] for h in hist)) / 60)


def test_progressive_is_planned_with_the_half_size_cost(pets):
    t, clock = budgeted(pets, progressive=0.5)
    t.fit()
    nb, c = len(t.dls.train), t.plan['cost']
    assert c['half'] == 0.125 and c['step'] == 0.25
    assert t.plan['epochs'] == plan_epochs(15 - t.plan['measure_s'], 0.25, c['valid'], nb, half=0.125, progressive=0.5)
    plain, _ = budgeted(pets)
    plain.fit()
    assert t.plan['epochs'] > plain.plan['epochs'] and clock.now <= 15   # the cheaper first epochs buy more of them


def test_a_slower_run_is_replanned_once_with_the_rate_continuous(pets, capsys):
    t, clock = budgeted(pets, cbs=[LRs(), Slower(1.5)])
    t.fit()
    lrs, nb, first = t.cbs[[type(c) for c in t.cbs].index(LRs)].lrs, len(t.dls.train), t.plan['first_plan']['epochs']
    assert t.plan['epochs'] < first and t.plan['start'][0] == nb                      # cut after the first epoch
    assert clock.now <= 15 and len(t.history) == t.epochs and t.step == t.total_steps == len(lrs)
    assert lrs[nb] == pytest.approx(CFG.lr * sched_factor('onecycle', nb / (first * nb)))   # the rate the first plan gave: no jump
    assert lrs[-1] == pytest.approx(CFG.lr * sched_factor('onecycle', 1 - (1 - t.plan['start'][1]) / (t.total_steps - nb)))
    assert lrs[-1] < CFG.lr / 100                                                      # the schedule still ends
    assert 'epochs in all, not' in capsys.readouterr().out


def test_a_resumed_run_keeps_its_plan(pets, tmp_path, capsys):
    t, _ = budgeted(pets, cbs=[StopAfter(1)], out_dir=tmp_path/'run')
    t.fit()
    planned = dict(t.plan)
    assert t.stopped == 'callback' and t.epoch == 1
    assert torch.load(tmp_path/'run'/'last.pt', weights_only=True)['plan']['epochs'] == planned['epochs']
    again, clock = budgeted(pets, cost={32: 5., 16: 5.}, out_dir=tmp_path/'run')   # 20 times slower now
    hist = again.fit(resume=True)
    assert 'resumed, %d epochs as planned' % planned['epochs'] in capsys.readouterr().out
    assert again.plan['epochs'] == planned['epochs'] == len(hist) and again.plan['cost'] == planned['cost']


def test_the_record_holds_planned_and_actual_minutes_and_finished_reads_the_plan(pets, tmp_path):
    dls = get_dls(pets[0], size=32, batch_size=8, device='cpu')
    cfg = CFG.replace(minutes=0.05, epochs=100)   # 3 s of the real clock: a few epochs of a tiny model
    rec = train_one(cfg, dls, tmp_path/'run', progress=False, threads=1)
    b = rec['timing']['budget']
    assert {'minutes', 'epochs', 'planned_minutes', 'actual_minutes', 'first_plan', 'cost', 'measure_s'} <= set(b)
    assert b['minutes'] == 0.05 and b['epochs'] == rec['epochs'] and b['actual_minutes'] > 0
    assert b['actual_minutes'] == pytest.approx((b['measure_s'] + rec['timing']['train_s']) / 60)
    assert rec['timing']['threads'] == dict(threads=1, how='given') and ' 1 threads' in rec['timing']['hardware']
    assert finished(tmp_path/'run', cfg.epochs)['epochs'] == rec['epochs'] < 100   # finished: the plan's epochs, not cfg.epochs
    assert json.loads((tmp_path/'run'/'metrics.json').read_text())['timing']['budget']['epochs'] == rec['epochs']


# --- the commands ----------------------------------------------------------------------------------------------------

TINY = ['--size', '32', '--width', '4', '--batch-size', '8', '--threads', '1', '--device', 'cpu']


def test_minutes_on_unet_train_and_a_folder_never_mixes_budgets(tmp_path, capsys):
    data = make_synthetic_folder(tmp_path/'data', n=24, size=32)
    out = tmp_path/'mine'
    assert cli.unet_train(['--data', str(data), '--out', str(out), *TINY, '--minutes', '0.05']) == 0
    o = capsys.readouterr().out
    assert 'a time budget of 0.05 min on' in o and 'time budget 0.05 min:' in o and 'epochs planned' in o
    rec = json.loads(next(out.glob('*/seed0/metrics.json')).read_text())
    assert rec['config']['minutes'] == 0.05 and rec['timing']['budget']['epochs'] == rec['epochs']
    assert cli.unet_train(['--data', str(data), '--out', str(out), *TINY]) == 2             # without the budget: refused
    assert 'minutes: 0.05 there, None now' in capsys.readouterr().err
    assert cli.unet_train(['--data', str(data), '--out', str(out), *TINY, '--minutes', '0.05']) == 0   # the same: finished
    assert 'finished already' in capsys.readouterr().out


def test_minutes_on_unet_compare(pets, tmp_path, capsys):
    out = tmp_path/'cmp'
    assert cli.unet_compare(['--data', str(pets[0]), '--out', str(out), '--experiments', '1', *TINY, '--minutes', '0.05']) == 0
    o = capsys.readouterr().out
    assert 'a time budget of 0.05 min on' in o and 'epochs planned' in o
    res = json.loads((out/'results.json').read_text())
    assert res['runs'][0]['timing']['budget']['minutes'] == 0.05


@pytest.mark.parametrize('bad', ['0', '-1', 'inf', 'soon'])
def test_bad_minutes_are_named(bad, tmp_path, capsys):
    data = make_synthetic_folder(tmp_path/'data', n=8, size=32)
    for run in (lambda: cli.unet_train(['--data', str(data), '--out', str(tmp_path/'o'), *TINY, '--minutes', bad]),
                lambda: cli.unet_compare(['--quick', '--out', str(tmp_path/'c'), '--minutes', bad])):
        if bad == 'soon':   # not a number: argparse's own message and status
            with pytest.raises(SystemExit) as e: run()
            assert e.value.code == 2
        else: assert run() == 2
        err = capsys.readouterr().err
        assert '--minutes' in err and 'Traceback' not in err, err
        if bad != 'soon': assert 'must be a positive number of minutes' in err, err
    assert not (tmp_path/'o').exists() and not (tmp_path/'c').exists()     # refused before anything is written


# --- threads ---------------------------------------------------------------------------------------------------------

def threaded(pets, cost, **kw):
    "A tiny trainer whose steps cost `cost[threads]` on a fake clock (and change nothing), with a `ThreadChoice` on that clock."
    dls = get_dls(pets[0], size=32, batch_size=8, device='cpu')
    clock = Clock({})
    t = Trainer(build_model(1, width=4, depth=2), get_loss('bce'), dls, CFG.replace(epochs=1, limit=8),   # one batch an epoch
                cbs=[ThreadChoice(kw.pop('threads', None), clock=clock, **kw)])
    def train_step(x, y):   # no real step: with 2 threads on a busy 2-core machine a real one can take seconds
        clock.now += cost[torch.get_num_threads()]; t.step += 1; return torch.tensor(0.5)
    t.train_step = train_step
    return t


@pytest.mark.parametrize('fast', [1, 2])
def test_the_faster_thread_count_is_chosen_and_said(pets, monkeypatch, capsys, fast):
    monkeypatch.setattr(callbacks, 'PYTORCH_THREADS', 2); torch.set_num_threads(2)   # as PyTorch starts on 2 cores
    t, seen = threaded(pets, {fast: 0.25, 3 - fast: 0.75}), Threads()
    t.cbs.append(seen)
    t.fit()
    assert t.thread_choice['threads'] == fast and t.thread_choice['how'] == 'timed'
    assert t.thread_choice['step_s'] == {fast: 0.25, 3 - fast: 0.75} and set(seen.seen) == {fast}   # the run trained with it
    assert f"threads: {fast} (0.25 s a step vs 0.75 s with {3 - fast})" in capsys.readouterr().out
    assert torch.get_num_threads() == 2 and t.step == len(t.dls.train)   # the count given back; the trial's steps not counted


def test_a_fixed_thread_count_is_left_alone(pets, monkeypatch, capsys):
    monkeypatch.setattr(callbacks, 'PYTORCH_THREADS', 2)
    torch.set_num_threads(2)
    seen = Threads()
    t = threaded(pets, {1: 0.75, 2: 0.25}, threads=1); t.cbs.append(seen)      # the trainer's `threads` (--threads)
    t.fit(); assert t.thread_choice == dict(threads=1, how='given') and set(seen.seen) == {1}
    torch.set_num_threads(1)                                                  # torch.set_num_threads, as the lessons do
    t = threaded(pets, {1: 0.75, 2: 0.25}); t.fit()
    assert t.thread_choice == dict(threads=1, how='kept') and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    t = threaded(pets, {1: 0.25, 2: 0.75}, keep=True); t.fit()               # deterministic runs keep theirs
    assert t.thread_choice == dict(threads=2, how='kept')
    assert 'threads:' not in capsys.readouterr().out                         # nothing timed, nothing said
    d = Trainer(build_model(1, width=4, depth=2), get_loss('bce'), get_dls(pets[0], size=32, batch_size=8, device='cpu'),
                CFG, deterministic=True, cbs=())
    assert [c.keep for c in d.cbs if isinstance(c, ThreadChoice)] == [True]
    assert math.isfinite(t.history[-1]['valid_loss'])
