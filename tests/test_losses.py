"""The losses' and metrics' edge cases, moved out of lesson 06 (`nbs/06_losses.ipynb`) so that the lesson keeps to its ideas.

The lesson checks every loss against a hand computation or PyTorch's own, and the metrics against hand counts and
torchmetrics; these tests guard the rest: the gradients against finite differences (`gradcheck`, in fp64, which the
losses keep), the arithmetic of `_metrics` when a split has no pixel or no image, and, on a GPU, that `SegMetrics.update`
and the losses never make the host wait. The CPU tests run in a second.
"""
import numpy as np
import pytest
import torch
from fastcore import test as fc   # the lesson's test_eq and test_close (imported bare, pytest would collect them)

from unet_tutorial.losses import BCEDiceLoss, DiceLoss, SegMetrics, WeightedBCE, _metrics

torch.set_num_threads(1)


def test_gradients_against_finite_differences():
    "Every loss's analytical gradient is `gradcheck`'s finite differences (fp64 kept), and none reaches an ignored pixel."
    torch.manual_seed(0)
    xg = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)   # (2, 1, 4, 4)
    mg = torch.randint(0, 2, (2, 1, 4, 4), dtype=torch.uint8)
    mg[0, 0, 0] = 255                                                       # an ignored row
    for loss_fn in (DiceLoss(), DiceLoss(per_image=False), WeightedBCE(2.3), BCEDiceLoss(2.3)):
        assert torch.autograd.gradcheck(lambda x: loss_fn(x, mg), (xg,))
    xg.grad = None
    DiceLoss()(xg, mg).backward()
    fc.test_eq(xg.grad[0, 0, 0], torch.zeros(4, dtype=torch.float64))       # no gradient reaches ignored pixels


def test_metrics_from_totals():
    "`_metrics` on the lesson's hand-counted totals, and on a split with no pixel and no image (IoU and Dice 1, the rest NaN)."
    r = _metrics(torch.tensor([2, 2, 1, 2]), torch.tensor([1/3 + 1/2, 2]))  # the hand-counted example's totals
    fc.test_close(r['pixel_accuracy'], 4/7); fc.test_close(r['iou'], 2/5); fc.test_close(r['dice'], 4/7)
    fc.test_close(r['mean_image_iou'], 5/12)
    r = _metrics(torch.zeros(4), torch.zeros(2))                            # no pixel, no image
    fc.test_eq((r['iou'], r['dice']), (1.0, 1.0)); assert np.isnan(r['pixel_accuracy']) and np.isnan(r['mean_image_iou'])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (CUDA sync debug mode)')
def test_no_host_sync_on_gpu():
    "On a GPU, `SegMetrics.update` and the losses' forward and backward never synchronise with the host."
    torch.manual_seed(0)
    ml = torch.randint(0, 2, (10, 1, 16, 16), dtype=torch.uint8)           # (N, 1, H, W)
    ml[torch.rand(ml.shape) < 0.1] = 255                                    # 10% ignored
    ml[0] = 0; ml[1] = 0                                                    # two empty masks
    xl = torch.randn(ml.shape) * 2; xl[0] = -9.                             # image 0: empty predicted empty
    ref = SegMetrics(); ref.update(xl, ml); r = ref.compute()               # on the CPU
    pw = 2.3
    dev = torch.device('cuda')
    xd, md = xl.to(dev), ml.to(dev)
    sm = SegMetrics()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(3): sm.update(xd, md)
        for loss_fn in (DiceLoss(), WeightedBCE(pw), BCEDiceLoss(pw)): loss_fn(xd.requires_grad_(), md).backward()
    finally: torch.cuda.set_sync_debug_mode('default')
    fc.test_close(list(sm.compute().values()), list(r.values()))
