"""Issue 24 (training side): the number of classes is a run setting, and the training path takes a multi-class run's
loss and metrics by injection (`parts`), binary staying as it was.

The trimap's border as a class of its own (`border='class'`), `RunConfig.classes` and its checks, the Trainer's
`metrics=`, `tta_logits` and `evaluate_model` for C channels, `one_class` on a multi-class record, and `train_one` /
`run_comparison` with `parts` on tiny synthetic pets (16 pixels, width 4). The multi-class loss and metrics here are
a small stand-in written for these tests (cross-entropy and a confusion count), so that the injection is tested
whatever lesson 22 provides; `tests/test_classes.py` tests lesson 22's own.
"""
import contextlib, json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unet_tutorial.checkpoints import load_model
from unet_tutorial.config import ADDED_FIELDS, CPU, MAX_CLASSES, RunConfig, check_pets_classes, check_same, settings_of, to_json
from unet_tutorial.core import IGNORE_INDEX, BadInput
from unet_tutorial.data import BORDERS, trimap_to_mask
from unet_tutorial.experiments import evaluate_model, one_class, run_comparison, train_one, tta_logits
from unet_tutorial.loaders import get_dls
from unet_tutorial.losses import SegMetrics, get_loss
from unet_tutorial.model import ConfigError, build_model
from unet_tutorial.synthetic import make_synthetic_pets
from unet_tutorial.trainer import Trainer

TINY = RunConfig(size=16, width=4, depth=2, batch_size=8, epochs=1, device='cpu', schedule='onecycle', lr=5e-3)
THREE = TINY.replace(classes=3, border='class')


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv('UNET_TUTORIAL_CACHE', str(tmp_path/'cache'))
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    torch.set_num_threads(1)


@pytest.fixture(scope='module')
def pets(tmp_path_factory):
    return make_synthetic_pets(tmp_path_factory.mktemp('pets'), n_trainval=24, n_test=8, size=16)


class StandInLoss(torch.nn.Module):
    "Cross-entropy of logits (B, C, H, W) and uint8 masks (B, 1, H, W) of class indices, 255 ignored."
    def forward(self, logits, mask): return F.cross_entropy(logits, mask[:, 0].long(), ignore_index=IGNORE_INDEX)


class StandInMetrics:
    "`ClassMetrics`' interface, from a confusion count (rows true, columns predicted); `calls` counts what was called."
    def __init__(self, classes): self.classes, self.calls = classes, dict(reset=0, update=0); self.reset()
    def reset(self): self.confusion = torch.zeros(self.classes, self.classes, dtype=torch.int64); self.calls['reset'] += 1
    def update(self, logits, mask):
        assert logits.shape[1] == self.classes, logits.shape
        self.calls['update'] += 1
        p, t = logits.argmax(1).flatten(1), mask[:, 0].long().flatten(1); keep = t != IGNORE_INDEX
        self.confusion += torch.bincount(t[keep] * self.classes + p[keep], minlength=self.classes**2).view(self.classes, -1).cpu()
        return ((p == t) & keep).float().sum(1) / keep.sum(1).clamp(min=1)   # (B,): per-image accuracy, a stand-in
    def compute(self):
        cm = self.confusion.double(); tp = cm.diag(); iou = tp / (cm.sum(0) + cm.sum(1) - tp).clamp(min=1)
        return dict(pixel_accuracy=(tp.sum() / cm.sum().clamp(min=1)).item(), iou=iou.mean().item(), dice=0.5,
                    mean_image_iou=0.5, class_iou=iou.tolist())


def stand_in_parts(classes):
    made = []
    def parts(exp, dls):
        made.append((exp.key, dls.train.n)); return StandInLoss(), StandInMetrics(classes)
    parts.made = made
    return parts


# --- data: the border as a class of its own ------------------------------------------------------------------

def test_border_class_gives_three_classes():
    t = torch.tensor([[1, 2, 3, 3], [2, 2, 1, 3]], dtype=torch.uint8)
    m = trimap_to_mask(t, 'class')
    assert m.dtype == torch.uint8 and m.tolist() == [[1, 0, 2, 2], [0, 0, 1, 2]]
    assert 'class' in BORDERS and BORDERS[:3] == ('background', 'pet', 'ignore')   # the binary choices, as they were
    for b in BORDERS[:3]: assert 2 not in trimap_to_mask(t, b).unique().tolist()


def test_loaders_of_two_borders_share_the_trimap_cache(pets, tmp_path):
    "The cache holds trimaps, not masks: loaders of two borders from one cache folder each get their own masks."
    cache = tmp_path/'one_cache'
    three = get_dls(pets, size=16, batch_size=8, border='class', cache=cache, device='cpu')
    files = sorted(p.name for p in cache.rglob('*') if p.is_file())
    two = get_dls(pets, size=16, batch_size=8, border='background', cache=cache, device='cpu')
    assert sorted(p.name for p in cache.rglob('*') if p.is_file()) == files   # no other cache file
    assert set(three.test.masks.unique().tolist()) == {0, 1, 2} and set(two.test.masks.unique().tolist()) <= {0, 1}
    assert torch.equal(torch.where(three.test.masks == 2, 0, three.test.masks), two.test.masks)   # only the border differs
    assert (three.train_masks == 2).any()


# --- the configuration -----------------------------------------------------------------------------------------

def test_classes_is_a_checked_field():
    assert RunConfig().classes == 2 and THREE.classes == 3 and MAX_CLASSES == IGNORE_INDEX == 255
    assert RunConfig(classes=MAX_CLASSES).classes == 255 and RunConfig(classes=4).border == 'background'   # a folder's classes
    for bad in (1, 0, -3, 256, 2.0, 2.5, True, '3', None):
        with pytest.raises(ConfigError, match='classes must be an integer from 2') as e: RunConfig(classes=bad)
        assert e.value.field == 'classes'
    for k in (2, 4):   # the border as a class of its own is the pets' third class
        with pytest.raises(ConfigError, match="border 'class' makes the trimap border a class of its own") as e:
            RunConfig(classes=k, border='class')
        assert e.value.field == 'border' and e.value.said(lambda n: f'--{n}').startswith("--border 'class'")
        assert '--classes 3' in e.value.said(lambda n: f'--{n}')


def test_classes_is_saved_and_older_runs_were_binary():
    assert json.loads(to_json(THREE))['classes'] == 3 and RunConfig.from_dict(json.loads(to_json(THREE))) == THREE
    assert ADDED_FIELDS['classes'] == 2 and RunConfig.from_dict(dict(size=64)).classes == 2
    old = settings_of(CPU, 'f'); del old['config']['classes']                 # a folder written before the field
    assert check_same(old, settings_of(CPU, 'f')) == []                        # binary: the same runs
    assert check_same(old, settings_of(CPU.replace(classes=3, border='class'), 'f')) == [
        "border: 'background' there, 'class' now", 'classes: 2 there, 3 now']


def test_the_pets_have_two_or_three_classes():
    assert check_pets_classes(CPU) is CPU and check_pets_classes(THREE) is THREE
    for b in ('pet', 'ignore'): assert check_pets_classes(CPU.replace(border=b)).classes == 2
    with pytest.raises(ConfigError, match="add border='class'"): check_pets_classes(CPU.replace(classes=3))
    with pytest.raises(ConfigError) as e: check_pets_classes(CPU.replace(classes=5))
    assert e.value.field == 'classes' and e.value.said(lambda n: f'--{n}').startswith('--classes 5: the pets have 2 classes')
    assert 'use --classes 2 or 3' in e.value.said(lambda n: f'--{n}')


# --- trainer, TTA, scoring ----------------------------------------------------------------------------------------

def test_trainer_takes_its_metrics(pets):
    dls = get_dls(pets, size=16, batch_size=8, border='class', device='cpu')
    assert isinstance(Trainer(build_model(1, width=4, depth=2), get_loss('bce'), dls, TINY, cbs=()).metrics, SegMetrics)
    m = StandInMetrics(3)
    t = Trainer(build_model(1, width=4, depth=2, out_channels=3), StandInLoss(), dls, THREE, cbs=(), metrics=m)
    assert t.metrics is m
    v = t.evaluate()
    assert m.calls['update'] == len(dls.valid) and len(v['class_iou']) == 3 and {'loss', 'iou'} <= set(v)
    assert t.state_dict()['config'] == json.loads(to_json(THREE))   # the run's configuration, in every checkpoint


def test_tta_for_classes_averages_the_softmax_probabilities():
    torch.manual_seed(0)
    x, three = torch.randn(2, 3, 8, 12), torch.nn.Conv2d(3, 3, 3, padding=1).eval()
    with torch.no_grad():
        p = [three(x).softmax(1), three(x.flip(-1)).flip(-1).softmax(1), three(x.flip(-2)).flip(-2).softmax(1),
             three(x.flip(-1, -2)).flip(-1, -2).softmax(1)]
        for flips, want in (('h', (p[0] + p[1]) / 2), ('v', (p[0] + p[2]) / 2), ('hv', sum(p) / 4)):
            z = tta_logits(three, x, flips)
            assert z.shape == (2, 3, 8, 12) and z.dtype == torch.float32
            assert torch.allclose(z.softmax(1), want, atol=1e-6) and torch.allclose(z.exp(), want, atol=1e-6)
        assert torch.equal(tta_logits(three, x, False), three(x))
        # binary: the logit of the mean probability, exactly as before (sigmoid, not a one-channel softmax)
        one = torch.nn.Conv2d(3, 1, 3, padding=1).eval()
        z = torch.stack([one(x), one(x.flip(-1)).flip(-1)])
        assert torch.equal(tta_logits(one, x, 'h'), F.logsigmoid(z).logsumexp(0) - F.logsigmoid(-z).logsumexp(0))


def test_evaluate_model_with_class_metrics(pets):
    dls = get_dls(pets, size=16, batch_size=8, border='class', device='cpu')
    model = build_model(1, width=4, depth=2, out_channels=3)
    m = StandInMetrics(3); m.confusion += 1000                                # left over from validation: reset first
    out, ious = evaluate_model(model, dls.test, metrics=m)
    assert m.calls['reset'] == 2 and m.confusion.sum() <= dls.test.n * 16 * 16
    assert len(ious) == dls.test.n and 'predicted_pet' not in out and len(out['class_iou']) == 3
    share = out['predicted_share']
    assert len(share) == 3 and abs(sum(share) - 1) < 1e-9
    assert share == (m.confusion.sum(0).double() / m.confusion.sum()).tolist()
    assert evaluate_model(model, dls.test, metrics=StandInMetrics(3), tta=True)[0].keys() == out.keys()
    binary, _ = evaluate_model(build_model(1, width=4, depth=2), get_dls(pets, size=16, batch_size=8, device='cpu').test)
    assert 'predicted_pet' in binary and 'predicted_share' not in binary   # binary: as before


def test_one_class_of_a_multi_class_run():
    assert one_class(dict(predicted_share=[0.9995, 0.0005, 0.])) == 'class 0'
    assert one_class(dict(predicted_share=[0., 0., 1.])) == 'class 2'
    assert one_class(dict(predicted_share=[0.6, 0.3, 0.1])) is None and one_class(dict(predicted_share=[])) is None
    assert (one_class(dict(predicted_pet=1.)), one_class(dict(predicted_pet=0.)), one_class({})) == ('pet', 'background', None)


# --- train_one and run_comparison --------------------------------------------------------------------------------

def test_train_one_with_three_classes(pets, tmp_path):
    dls = get_dls(pets, size=16, batch_size=8, border='class', device='cpu')
    parts, run = stand_in_parts(3), tmp_path/'three'
    rec = train_one(THREE, dls, run, progress=False, parts=parts)
    assert parts.made == [(1, dls.train.n)]
    saved = json.loads((run/'metrics.json').read_text())
    assert saved['config']['classes'] == 3 and len(saved['test']['class_iou']) == 3 and len(saved['test']['predicted_share']) == 3
    assert rec['test'] == saved['test'] and 'predicted_pet' not in saved['test']
    ious = json.loads((run/'per_image_iou.json').read_text())
    assert len(ious) == dls.test.n and all(0 <= v <= 1 for v in ious)
    hist = json.loads((run/'history.json').read_text())
    assert len(hist) == 1 and len(hist[0]['class_iou']) == 3   # the validation metrics are the injected ones
    model, ckpt = load_model(run/'best.pt', 'cpu')
    assert ckpt['config']['classes'] == 3 and ckpt['model_config']['out_channels'] == 3
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    # resume: one more epoch continues from last.pt (the first kept), then a finished run is only read back
    rec2 = train_one(THREE.replace(epochs=2), dls, run, progress=False, parts=parts)
    hist2 = json.loads((run/'history.json').read_text())
    assert rec2['epochs'] == 2 and hist2[0] == hist[0] and len(hist2) == 2
    assert train_one(THREE.replace(epochs=2), dls, run, progress=False, parts=parts) == rec2 and len(parts.made) == 2


def test_a_multi_class_run_needs_its_parts(pets, tmp_path):
    dls = get_dls(pets, size=16, batch_size=8, border='class', device='cpu')
    with pytest.raises(BadInput, match=r'parts=unet_tutorial\.classes\.class_parts\(3\)') as e:
        train_one(THREE, dls, tmp_path/'none', progress=False)
    assert "--classes" in str(e.value) and not (tmp_path/'none').exists()   # refused before anything is written


def test_binary_train_one_is_unchanged_by_parts_none(pets, tmp_path):
    "The binary run of `parts=None` is the run of lesson 06's loss with its pos_weight and `SegMetrics`, bit for bit."
    from unet_tutorial.losses import pos_weight_from_masks
    dls = get_dls(pets, size=16, batch_size=8, device='cpu')
    rec = train_one(TINY, dls, tmp_path/'a', progress=False)
    assert 'predicted_pet' in rec['test'] and 'class_iou' not in rec['test'] and rec['config']['classes'] == 2
    weighted = lambda exp, dls: (get_loss(exp.loss, pos_weight_from_masks(dls.train_masks)), SegMetrics())
    assert train_one(TINY, dls, tmp_path/'b', progress=False, parts=weighted)['test'] == rec['test']
    assert load_model(tmp_path/'a'/'best.pt', 'cpu')[0].config['out_channels'] == 1


def test_run_comparison_with_three_classes(pets, tmp_path):
    parts, lines = stand_in_parts(3), []
    cmp = run_comparison(pets, tmp_path/'cmp', THREE, experiments=(1, 2), progress=False, log=lines.append, parts=parts)
    assert [r['config']['classes'] for r in cmp.records] == [3, 3] and [k for k, _ in parts.made] == [1, 2]
    assert all(len(r['test']['class_iou']) == 3 for r in cmp.records)
    settings = json.loads((tmp_path/'cmp'/'settings.json').read_text())
    assert settings['config']['classes'] == 3 and settings['config']['border'] == 'class'
    assert len(lines) == 4 and all('test IoU' in l for l in lines[1::2])
    # the same folder refuses binary runs: the classes are part of its settings
    with pytest.raises(BadInput, match='classes: 3 there, 2 now'):
        run_comparison(pets, tmp_path/'cmp', TINY, experiments=(1,), progress=False, log=lines.append)


@pytest.mark.parametrize('cfg, want', [(TINY.replace(classes=3), "add border='class'"), (TINY.replace(classes=4), 'use classes 2 or 3')])
def test_run_comparison_refuses_classes_the_pets_do_not_have(pets, tmp_path, cfg, want):
    with pytest.raises(ConfigError, match=want) as e:
        run_comparison(pets, tmp_path/'no', cfg, experiments=(1,), progress=False, parts=stand_in_parts(cfg.classes))
    assert e.value.field == 'classes' and not (tmp_path/'no').exists()   # before anything is written


# --- the commands: --classes -------------------------------------------------------------------------------------

QUICK_TINY = ['--quick', '--experiments', '1', '--epochs', '1', '--size', '32', '--width', '4', '--threads', '1', '--device', 'cpu']


def test_classes_is_an_option_of_both_commands(capsys):
    from unet_tutorial import cli
    from unet_tutorial.options import COMPARE_FIELDS, TRAIN_FIELDS
    assert 'classes' in COMPARE_FIELDS and 'classes' in TRAIN_FIELDS
    for command in (cli.unet_compare, cli.unet_train):
        with pytest.raises(SystemExit): command(['--help'])
        out = ' '.join(capsys.readouterr().out.split())
        assert '--classes CLASSES number of classes: 2 is binary' in out and 'default: 2' in out, out


def test_unet_compare_quick_three_classes(tmp_path, capsys, monkeypatch):
    "`--classes 3` on the pets: the border a class of its own, lesson 22's loss and metrics, metrics.json with class_iou."
    from unet_tutorial import cli
    out = tmp_path/'q3'
    assert cli.unet_compare([*QUICK_TINY, '--classes', '3', '--out', str(out)]) == 0, capsys.readouterr().err
    run = out/'maxpool_transpose_bce'/'seed0'
    rec = json.loads((run/'metrics.json').read_text())
    assert rec['config']['classes'] == 3 and rec['config']['border'] == 'class'
    assert len(rec['test']['class_iou']) == 3 and len(rec['test']['predicted_share']) == 3
    assert all(0 <= v <= 1 for v in rec['test']['class_iou']) and rec['test']['iou'] == pytest.approx(sum(rec['test']['class_iou']) / 3)
    model, ckpt = load_model(run/'best.pt', 'cpu')
    assert model.config['out_channels'] == 3 and ckpt['config']['classes'] == 3
    assert json.loads((out/'settings.json').read_text())['config']['classes'] == 3
    assert (out/'curves.png').exists() and (out/'iou.png').exists() and not (out/'predictions.png').exists()   # no binary overlays
    assert json.loads((out/'results.json').read_text())['runs'][0]['test'] == rec['test']
    # the same command again: the run is finished, so it is read back, not retrained
    assert cli.unet_compare([*QUICK_TINY, '--classes', '3', '--out', str(out)]) == 0
    assert json.loads((run/'metrics.json').read_text()) == rec


@pytest.mark.parametrize('classes, want', [('4', '--classes 4: the pets have 2 classes'), ('1', '--classes must be an integer from 2'),
                                           ('256', '--classes must be an integer from 2'), ('x', "invalid int value")])
def test_unet_compare_refuses_classes_the_pets_do_not_have(tmp_path, capsys, classes, want):
    from unet_tutorial import cli
    with pytest.raises(SystemExit) if classes == 'x' else contextlib.nullcontext():   # 'x': argparse's own usage error
        r = cli.unet_compare([*QUICK_TINY, '--classes', classes, '--out', str(tmp_path/'no')])
        assert r == 2
    err = capsys.readouterr().err
    assert want in err and 'Traceback' not in err, err
    assert not (tmp_path/'no').exists()   # refused before anything is written, the synthetic data included


def test_unet_train_classes_on_a_folder(tmp_path, capsys, monkeypatch):
    "`unet-train --classes 4` on a folder of 4-class palette masks (lesson 02's `make_synthetic_folder(classes=4)`)."
    import inspect
    from unet_tutorial import cli, synthetic
    from unet_tutorial.folder import read_folder
    if 'classes' not in inspect.signature(read_folder).parameters or 'classes' not in inspect.signature(synthetic.make_synthetic_folder).parameters:
        pytest.skip('multi-class folders (lesson 21, issue 24 item 3) are not in this checkout yet')
    data = synthetic.make_synthetic_folder(tmp_path/'data', n=24, size=32, classes=4, palette=True)
    args = ['--data', str(data), '--out', str(tmp_path/'mine'), '--preset', 'quick', '--epochs', '1', '--size', '32', '--width', '4',
            '--threads', '1', '--device', 'cpu', '--classes', '4']
    assert cli.unet_train(args) == 0, capsys.readouterr().err
    rec = json.loads((tmp_path/'mine'/'maxpool_transpose_bce'/'seed0'/'metrics.json').read_text())
    assert rec['config']['classes'] == 4 and len(rec['test']['class_iou']) == 4
    model, _ = load_model(tmp_path/'mine'/'maxpool_transpose_bce'/'seed0'/'best.pt', 'cpu')
    assert model.config['out_channels'] == 4
    # unet-predict with that checkpoint: a palette PNG of class indices at the photo's own size (not the training size)
    from PIL import Image
    photo = tmp_path/'photo.png'; Image.open(sorted((data/'images').iterdir())[0]).convert('RGB').resize((50, 37)).save(photo)
    ckpt = tmp_path/'mine'/'maxpool_transpose_bce'/'seed0'/'best.pt'
    assert cli.unet_predict([str(photo), '--checkpoint', str(ckpt), '--out', str(tmp_path/'pred'), '--device', 'cpu']) == 0
    mask = Image.open(tmp_path/'pred'/'photo_mask.png')
    assert mask.mode == 'P' and mask.size == (50, 37) and int(np.array(mask).max()) < 4


def test_train_one_with_lesson_22s_parts(pets, tmp_path):
    "The same run with lesson 22's `class_parts(3)`: class-weighted cross-entropy and `ClassMetrics`; resumed, then read back."
    from unet_tutorial.classes import ClassMetrics, class_parts
    dls = get_dls(pets, size=16, batch_size=8, border='class', device='cpu')
    rec = train_one(THREE, dls, tmp_path/'r', progress=False, parts=class_parts(3))
    ious = json.loads((tmp_path/'r'/'per_image_iou.json').read_text())
    model, ckpt = load_model(tmp_path/'r'/'best.pt', 'cpu')
    m = ClassMetrics(3); out, again = evaluate_model(model, dls.test, metrics=m)   # the record is the best model's scores
    assert rec['test'] == out and again == ious and len(rec['test']['class_iou']) == 3
    assert ckpt['config']['classes'] == 3 and model.config['out_channels'] == 3
    rec2 = train_one(THREE.replace(epochs=2), dls, tmp_path/'r', progress=False, parts=class_parts(3))
    assert rec2['epochs'] == 2 and len(json.loads((tmp_path/'r'/'history.json').read_text())) == 2
    assert train_one(THREE.replace(epochs=2), dls, tmp_path/'r', progress=False, parts=class_parts(3)) == rec2
