"""Issue 24: the multi-class losses and metrics of lesson 22 (`unet_tutorial.classes`) against independent references:
torch's `F.cross_entropy(weight=, ignore_index=)` for the cross-entropy, plain Python loops over the pixels for the
confusion matrix, the IoU, the Dice and the soft Dice; with empty classes, all-ignored images, ignored pixels, fp16/bf16
logits, C = 2 against the binary metrics and losses of lesson 06, and a gradient check in float64."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from unet_tutorial.core import BadInput
from unet_tutorial.losses import SegMetrics, WeightedBCE
from unet_tutorial.classes import (ClassCE, ClassDice, ClassMetrics, class_loss, class_parts, class_results_table,
                                   class_weights_from_masks, confusion_matrix, class_palette, plot_confusion,
                                   check_mask_values, PET_CLASSES)

torch.set_num_threads(1)


def _data(b=3, c=4, h=5, w=6, seed=0, absent=(3,), ignore=0.2):
    "Random logits (B, C, H, W) and uint8 masks (B, 1, H, W): classes in `absent` never in the mask, a share ignored."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g) * 3
    m = torch.randint(0, c, (b, 1, h, w), generator=g)
    for a in absent: m[m == a] = 0
    m[torch.rand(m.shape, generator=g) < ignore] = 255
    return x, m.to(torch.uint8)


def _loop_confusion(pred, mask, c):
    "(C, C) counts by a loop over the pixels: rows true, columns predicted, 255 skipped."
    cm = [[0] * c for _ in range(c)]
    for p, t in zip(pred.flatten().tolist(), mask.flatten().tolist()):
        if t != 255: cm[t][p] += 1
    return cm


def _loop_metrics(cm):
    "Per-class IoU and Dice (None: class absent from truth and prediction), pixel accuracy, by hand from the counts."
    c = len(cm)
    iou, dice = [], []
    for k in range(c):
        tp = cm[k][k]; fn = sum(cm[k]) - tp; fp = sum(cm[i][k] for i in range(c)) - tp
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else None)
        dice.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None)
    total = sum(map(sum, cm))
    acc = sum(cm[k][k] for k in range(c)) / total if total else float('nan')
    mean = lambda v: sum(u for u in v if u is not None) / len([u for u in v if u is not None]) if any(u is not None for u in v) else 1.0
    return iou, dice, acc, mean(iou), mean(dice)


@pytest.mark.parametrize('weight', [None, [0.5, 2.0, 1.0, 3.0], [1.0, 0.0, 1.0, 1.0]])
def test_cross_entropy_matches_torch(weight):
    x, m = _data()
    ref = F.cross_entropy(x, m[:, 0].long(), weight=None if weight is None else torch.tensor(weight), ignore_index=255)
    assert torch.allclose(ClassCE(4, weight)(x, m), ref, atol=1e-6)
    assert torch.allclose(class_loss('BCE', 4, weight)(x, m), ref, atol=1e-6)


def test_cross_entropy_all_ignored_is_zero_with_zero_gradient():
    x, m = _data(b=2)
    m[:] = 255
    x.requires_grad_()
    loss = ClassCE(4, [1, 2, 3, 4])(x, m)
    assert loss.item() == 0 and torch.isnan(F.cross_entropy(x, m[:, 0].long(), ignore_index=255))   # torch: 0/0
    loss.backward()
    assert x.grad.abs().max() == 0


def test_cross_entropy_ignored_pixels_change_nothing():
    x, m = _data()
    x2 = x.clone(); x2[(m == 255).expand_as(x)] = 1e4   # huge logits where ignored
    assert torch.allclose(ClassCE(4)(x2, m), ClassCE(4)(x, m))
    assert torch.allclose(ClassDice(4)(x2, m), ClassDice(4)(x, m))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_logits_computed_in_fp32(dtype):
    x, m = _data()
    xh = x.to(dtype)
    for loss in (ClassCE(4), ClassDice(4), class_loss('bce_dice', 4)):
        out = loss(xh, m)
        assert out.dtype == torch.float32 and torch.allclose(out, loss(xh.float(), m))
    a, b = ClassMetrics(4), ClassMetrics(4)
    a.update(xh, m); b.update(xh.float(), m)
    assert torch.equal(a.confusion, b.confusion)


def _loop_soft_dice(x, m, c, smooth=1.0):
    "Macro soft Dice loss per image by loops: for each image and class, sums over the valid pixels."
    p = torch.softmax(x.double(), 1)
    terms = []
    for b in range(x.shape[0]):
        for k in range(c):
            inter = sp = st = 0.0
            for i in range(x.shape[2]):
                for j in range(x.shape[3]):
                    t = int(m[b, 0, i, j])
                    if t == 255: continue
                    inter += p[b, k, i, j].item() * (t == k); sp += p[b, k, i, j].item(); st += (t == k)
            terms.append((2 * inter + smooth) / (sp + st + smooth))
    return 1 - sum(terms) / len(terms)


def test_soft_dice_matches_a_loop_with_an_empty_class():
    x, m = _data(b=2, h=4, w=4)
    assert not (m == 3).any()
    assert math.isclose(ClassDice(4)(x, m).item(), _loop_soft_dice(x, m, 4), rel_tol=1e-5)
    assert ClassDice(4)(x.double(), m).dtype == torch.float64


def test_soft_dice_perfect_prediction_is_zero():
    _, m = _data(b=2, ignore=0)
    x = F.one_hot(m[:, 0].long(), 4).permute(0, 3, 1, 2).float() * 40
    assert ClassDice(4)(x, m) < 1e-3 and ClassCE(4)(x, m) < 1e-3


def test_gradcheck_float64():
    x, m = _data(b=2, c=3, h=3, w=3, absent=(), seed=1)
    x = x.double().requires_grad_()
    for loss in (ClassCE(3, [0.5, 1.0, 2.0]), ClassDice(3), class_loss('bce_dice', 3, [1, 2, 3])):
        assert torch.autograd.gradcheck(lambda z: loss(z, m), (x,))


def test_confusion_matrix_and_metrics_match_loops():
    x, m = _data(b=4, c=4, seed=3)
    pred = x.argmax(1, keepdim=True)
    want = _loop_confusion(pred, m, 4)
    cm = confusion_matrix(x, m, 4)
    assert cm.dtype == torch.int64 and cm.tolist() == want
    assert confusion_matrix(pred.to(torch.uint8), m, 4).tolist() == want     # a class map gives the same count
    per_img = confusion_matrix(x, m, 4, per_image=True)
    assert per_img.shape == (4, 4, 4) and per_img.sum(0).tolist() == want
    assert [confusion_matrix(x[i:i+1], m[i:i+1], 4).tolist() for i in range(4)] == per_img.tolist()
    iou, dice, acc, miou, mdice = _loop_metrics(want)
    metrics = ClassMetrics(4)
    metrics.update(x[:1], m[:1]); metrics.update(x[1:], m[1:])                # two batches of different sizes
    r = metrics.compute()
    assert metrics.confusion.tolist() == want
    assert math.isclose(r['pixel_accuracy'], acc, rel_tol=1e-6) and math.isclose(r['iou'], miou, rel_tol=1e-6)
    assert math.isclose(r['dice'], mdice, rel_tol=1e-6)
    assert all(math.isclose(a, 1.0 if b is None else b, rel_tol=1e-6) for a, b in zip(r['class_iou'], iou))
    image = [_loop_metrics(_loop_confusion(pred[i], m[i], 4))[3] for i in range(4)]
    assert math.isclose(r['mean_image_iou'], sum(image) / 4, rel_tol=1e-6)
    cols = [sum(want[i][k] for i in range(4)) for k in range(4)]
    assert all(math.isclose(a, b / sum(cols)) for a, b in zip(metrics.predicted_share, cols))
    assert r['predicted_share'] == metrics.predicted_share


def test_a_class_absent_everywhere_scores_one_and_is_left_out_of_the_mean():
    m = torch.tensor([[[[0, 1], [1, 255]]]], dtype=torch.uint8)
    x = F.one_hot(torch.tensor([[[0, 1], [0, 2]]]), 3).permute(0, 3, 1, 2).float()   # predicts 0, 1, 0, (2 where ignored)
    metrics = ClassMetrics(3); iou = metrics.update(x, m); r = metrics.compute()
    assert r['class_iou'] == [0.5, 0.5, 1.0]           # class 2: not in the truth, predicted only where ignored
    assert math.isclose(r['iou'], 0.5) and math.isclose(iou.item(), 0.5)
    assert math.isclose(r['pixel_accuracy'], 2 / 3) and math.isclose(r['dice'], 2 / 3)


def test_all_ignored_image_is_left_out_of_the_image_mean():
    x, m = _data(b=3, c=3, absent=(), seed=5)
    m[1] = 255
    metrics = ClassMetrics(3)
    iou = metrics.update(x, m)
    r = metrics.compute()
    assert iou[1] == 1.0                                 # nothing counted: 1, as SegMetrics' empty images
    assert math.isclose(r['mean_image_iou'], (iou[0] + iou[2]).item() / 2, rel_tol=1e-6)
    assert metrics.confusion.sum() == (m != 255).sum()
    empty = ClassMetrics(3); empty.update(x[1:2], m[1:2]); e = empty.compute()
    assert math.isnan(e['pixel_accuracy']) and math.isnan(e['mean_image_iou']) and e['iou'] == 1.0
    with pytest.raises(RuntimeError, match='at least one update'): ClassMetrics(3).compute()


def test_two_classes_agree_with_the_binary_path():
    "A 2-class softmax of logits (0, z) is a sigmoid of z: same loss as WeightedBCE(), same counts as SegMetrics."
    g = torch.Generator().manual_seed(7)
    z = torch.randn(3, 1, 6, 6, generator=g) * 3
    m = torch.randint(0, 2, z.shape, generator=g).to(torch.uint8); m[torch.rand(z.shape, generator=g) < 0.2] = 255
    x2 = torch.cat([torch.zeros_like(z), z], 1)        # (B, 2, H, W)
    assert torch.allclose(ClassCE(2)(x2, m), WeightedBCE()(z, m), atol=1e-6)
    seg, cls = SegMetrics(), ClassMetrics(2)
    seg.update(z, m); cls.update(x2, m)
    s, c = seg.compute(), cls.compute()
    tp, fp, fn, tn = seg.counts.tolist()
    assert cls.confusion.tolist() == [[tn, fp], [fn, tp]]
    assert math.isclose(c['class_iou'][1], s['iou'], rel_tol=1e-6) and math.isclose(c['pixel_accuracy'], s['pixel_accuracy'], rel_tol=1e-6)
    assert math.isclose(c['predicted_share'][1], (tp + fp) / (tp + fp + fn + tn), rel_tol=1e-9)


def test_two_class_macro_dice_is_the_mean_of_the_pet_and_background_dice():
    from unet_tutorial.losses import DiceLoss
    g = torch.Generator().manual_seed(8)
    z = torch.randn(3, 1, 6, 6, generator=g) * 3
    m = torch.randint(0, 2, z.shape, generator=g).to(torch.uint8); m[torch.rand(z.shape, generator=g) < 0.2] = 255
    flipped = torch.where(m == 255, m, 1 - m)                           # background as the class lesson 06 scores
    x2 = torch.cat([torch.zeros_like(z), z], 1)
    assert torch.allclose(ClassDice(2)(x2, m), (DiceLoss()(z, m) + DiceLoss()(-z, flipped)) / 2, atol=1e-6)


def test_metrics_update_stays_on_the_logits_device_and_returns_per_image():
    x, m = _data(b=2)
    metrics = ClassMetrics(4)
    iou = metrics.update(x, m)
    assert iou.shape == (2,) and isinstance(metrics.confusion, torch.Tensor) and metrics.confusion.shape == (4, 4)
    metrics.reset()
    assert metrics.confusion is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU: the no-sync check is about device-to-host copies')
def test_update_does_not_sync_on_a_gpu():
    x, m = _data(b=2)
    x, m = x.cuda(), m.cuda()
    metrics, loss = ClassMetrics(4), class_loss('bce_dice', 4, [1, 2, 3, 4])
    metrics.update(x, m); loss(x, m)                      # warm-up
    torch.cuda.set_sync_debug_mode('error')
    try:
        metrics.update(x, m); loss(x, m)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    cpu = ClassMetrics(4); cpu.update(x.cpu(), m.cpu())
    assert metrics.confusion.cpu().tolist() == (2 * cpu.confusion).tolist()


def test_bad_inputs_are_named():
    x, m = _data()
    with pytest.raises(ValueError, match=r'`logits` must be \(B, 3, H, W\)'): ClassCE(3)(x, m)
    with pytest.raises(ValueError, match='`mask` shape'): ClassCE(4)(x, m[:, :, :2])
    bad = m.clone(); bad[0, 0, 0, 0] = 7
    with pytest.raises(BadInput, match=r'7 \(1 pixels\)'): ClassCE(4)(x, bad)
    with pytest.raises(BadInput, match='not classes 0..3'): confusion_matrix(x, bad, 4)
    with pytest.raises(ValueError, match='`classes`'): ClassMetrics(1)
    with pytest.raises(ValueError, match='`classes`'): class_parts(True)
    with pytest.raises(ValueError, match='`weight`'): ClassCE(4, [1, 2])
    with pytest.raises(ValueError, match='`weight`'): ClassCE(4, [0, 0, 0, 0])
    with pytest.raises(ValueError, match="Unknown loss 'focal'"): class_loss('focal', 4)
    assert check_mask_values(m, 4) == {v: (m == v).sum().item() for v in m.unique().tolist()}


def test_class_weights_from_masks():
    m = torch.tensor([0] * 6 + [1] * 3 + [2] * 1 + [255] * 5, dtype=torch.uint8)
    w = class_weights_from_masks(m, 3)
    inv = [1 / 6, 1 / 3, 1]
    assert all(math.isclose(a, b * 3 / sum(inv)) for a, b in zip(w, inv)) and math.isclose(sum(w) / 3, 1)
    with pytest.raises(BadInput, match=r'class\(es\) \[3\] have no pixel'): class_weights_from_masks(m, 4)
    with pytest.raises(BadInput, match='not classes 0..1'): class_weights_from_masks(m, 2)
    assert class_weights_from_masks(m.long(), 3) == w                 # any integer dtype


def test_class_parts_builds_what_train_one_needs():
    from types import SimpleNamespace
    _, m = _data(absent=())
    dls = SimpleNamespace(train_masks=m)
    loss, metrics = class_parts(4)(1, dls)                           # experiment 1: BCE -> weighted cross-entropy
    assert isinstance(loss, ClassCE) and isinstance(metrics, ClassMetrics) and metrics.classes == 4
    assert loss.weight.tolist() == pytest.approx(class_weights_from_masks(m, 4))
    loss, _ = class_parts(4)('maxpool_transpose_dice', dls)
    assert isinstance(loss, ClassDice)


def test_palette_and_confusion_figure():
    pal = class_palette(3)
    assert pal[0] == (0, 0, 0) and len(set(pal)) == 3 and len(set(class_palette(20))) == 20
    assert all(0 <= v <= 255 for rgb in class_palette(20) for v in rgb)
    import matplotlib; matplotlib.use('Agg')
    fig = plot_confusion([[5, 1, 0], [2, 8, 0], [0, 0, 0]], PET_CLASSES)
    ax = fig.axes[0]
    assert ax.get_xlabel() == 'predicted' and ax.get_ylabel() == 'true'
    texts = [t.get_text() for t in ax.texts]
    assert '83.3%\n5' in texts and '20.0%\n2' in texts and '0.0%\n0' in texts   # rows normalised, counts annotated
    with pytest.raises(ValueError, match='one name per class'): plot_confusion([[1, 2], [3, 4]], PET_CLASSES)


def _run(name, seed, iou, cls, acc):
    return dict(name=name, seed=seed, test=dict(iou=iou, class_iou=cls, pixel_accuracy=acc))


def test_class_results_table(tmp_path):
    assert class_results_table(tmp_path) is None                      # runs not done yet
    runs = [_run('maxpool_transpose_bce', s, 0.6 + s / 10, [0.9, 0.7 + s / 10, 0.3], 0.8 + s / 100) for s in (0, 1, 2)]
    (tmp_path/'results.json').write_text(json.dumps(dict(runs=runs)))
    table = class_results_table(tmp_path).splitlines()
    assert table[0] == '| run | seeds | mean IoU | IoU background | IoU pet | IoU border | pixel accuracy |'
    assert table[2] == '| maxpool_transpose_bce | 0, 1, 2 | 0.700 ± 0.100 | 0.900 ± 0.000 | 0.800 ± 0.100 | 0.300 ± 0.000 | 0.810 ± 0.010 |'
    (tmp_path/'results.json').write_text(json.dumps(dict(runs=[dict(name='x', seed=0, test=dict(iou=0.5))])))
    with pytest.raises(BadInput, match='no multi-class run'): class_results_table(tmp_path)


def test_no_ignore_index_counts_every_pixel():
    x, m = _data(ignore=0)
    ref = F.cross_entropy(x, m[:, 0].long())
    assert torch.allclose(ClassCE(4, ignore_index=None)(x, m), ref, atol=1e-6)
    assert confusion_matrix(x, m, 4, ignore_index=None).sum() == m.numel()
    with pytest.raises(BadInput, match='255'): ClassCE(4, ignore_index=None)(x, torch.full_like(m, 255))


@pytest.mark.parametrize('seed', range(5))
def test_metrics_stay_within_0_and_1_on_random_splits(seed):
    "IoU above 1 (a wrong reduction) is a known multi-class bug: every metric here is a share of pixels."
    metrics = ClassMetrics(5)
    for b in (1, 3, 2):
        x, m = _data(b=b, c=5, seed=seed * 10 + b, absent=(seed % 5,), ignore=0.3)
        iou = metrics.update(x, m)
        assert ((0 <= iou) & (iou <= 1)).all()
    r = metrics.compute()
    for v in (r['pixel_accuracy'], r['iou'], r['dice'], r['mean_image_iou'], *r['class_iou'], *r['predicted_share']):
        assert 0 <= v <= 1
    assert math.isclose(sum(r['predicted_share']), 1)
