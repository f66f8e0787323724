"""Lesson 04's regression tests, moved out of its teaching path: the checkerboard counted by hand, and every `Up` mode."""
import torch, torch.nn.functional as F
from torch import nn
from fastcore.test import test_eq as eq, test_close as close, test_fail as fails   # aliases: pytest collects test_*

from unet_tutorial.blocks import DoubleConv, Up


def n_params(m): return sum(p.numel() for p in m.parameters())


def tconv(k, weight=None, p=0, op=0):
    "A one-channel stride-2 transposed convolution without bias, all-ones or with `weight` (as lesson 04's figure)."
    m = nn.ConvTranspose2d(1, 1, k, stride=2, padding=p, output_padding=op, bias=False)
    nn.init.constant_(m.weight, 1.) if weight is None else m.weight.data.copy_(weight)
    return m


def test_checkerboard_counted_without_pytorch():
    "The first panel of lesson 04's checkerboard figure is the count of kernels covering each output pixel; upsample + conv is flat."
    torch.manual_seed(0)
    ones = torch.ones(1, 1, 8, 8)                                      # a constant input (1, 1, 8, 8)
    w3 = torch.randn(1, 1, 3, 3)
    up_conv = nn.Conv2d(1, 1, 3, padding=1, bias=False); up_conv.weight.data.copy_(w3)
    cases = {'transpose k3 s2, all-ones': tconv(3, p=1, op=1),
             'nearest ×2 + conv3, random': nn.Sequential(nn.Upsample(scale_factor=2), up_conv)}
    y = cases['transpose k3 s2, all-ones'](ones)[0, 0].detach()       # (16, 16)
    cover = torch.zeros(8 * 2 + 1, 8 * 2 + 1)                          # before the padding crop
    for i in range(8):
        for j in range(8): cover[2*i:2*i + 3, 2*j:2*j + 3] += 1
    eq(y, cover[1:, 1:])                                          # padding 1 crops 1 each side, output_padding adds 1
    eq(set(y[2:-2, 2:-2].unique().tolist()), {1., 2., 4.})        # the checkerboard
    y_up = cases['nearest ×2 + conv3, random'](ones)[0, 0].detach()
    close(y_up[1:-1, 1:-1], torch.full((14, 14), w3.sum().item()), eps=1e-5)  # flat away from the border


def test_up_every_mode_size_params_and_bad_arguments():
    "Every `Up` mode gives the skip's size, its parameter count follows from the shapes, bad arguments are named, `bilinear_init` keeps the keys."
    torch.manual_seed(0)
    skip = torch.randn(2, 4, 125, 131)                            # (B, in_ch/2, H, W)
    for mode, up_mode in [('transpose', 'nearest'), ('upsample', 'nearest'), ('upsample', 'bilinear')]:
        up = Up(8, 4, mode, up_mode)
        for h, w in [(62, 65), (63, 66)]:                        # one short after ×2, one long
            eq(up(torch.randn(2, 8, h, w), skip).shape, (2, 4, 125, 131))
        k = 4 if mode == 'transpose' else 9
        eq(n_params(up), k*8*4 + 4 + n_params(DoubleConv(8, 4)))
    fails(lambda: Up(8, 4, mode='deconv'), contains="'transpose', 'upsample'")
    fails(lambda: Up(8, 4, 'upsample', up_mode='bicubic'), contains='up_mode')
    fails(lambda: Up(7, 4), contains='in_ch')
    ub, u2 = Up(8, 4, bilinear_init=True), Up(8, 4)
    eq(list(ub.state_dict()), list(u2.state_dict()))                     # the same names: checkpoints keep their keys
    eq(ub.up.weight.shape, (8, 4, 4, 4))                                 # ...with a 4×4 kernel instead of 2×2
    for h, w in [(62, 65), (63, 66)]: eq(ub(torch.randn(2, 8, h, w), skip).shape, (2, 4, 125, 131))
    xs_ = torch.randn(1, 8, 6, 7)
    close(ub.up(xs_)[..., 1:-1, 1:-1], F.interpolate(xs_[:, :4], scale_factor=2, mode='bilinear')[..., 1:-1, 1:-1], eps=1e-5)
    fails(lambda: Up(8, 4, 'upsample', bilinear_init=True), contains='bilinear_init')
