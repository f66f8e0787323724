"""The U-Net's edge cases, moved out of lesson 05 (`nbs/05_unet.ipynb`) so that the lesson keeps to its ideas.

The lesson checks the U-Net against the hand-written forward, the parameter counts against the channel widths and
the receptive fields against lesson 04's rule; these tests guard the corners: every bad argument of `UNet` named,
`bilinear_init` leaving older configurations and checkpoints as they were, the experiments' bad keys, and
`shape_trace` cleaning up after itself. Everything runs on the CPU in a second.
"""
import torch
from fastcore import test as fc   # the lesson's test_eq and test_fail (imported bare, pytest would collect them)

from unet_tutorial.model import UNet, count_params, get_experiment, shape_trace

torch.set_num_threads(1)  # the models are tiny: more threads only add overhead


def test_unet_names_its_bad_argument():
    "A wrong mode, a non-positive or non-int size, or `bilinear_init` without transposed convolutions: a ValueError naming it."
    fc.test_fail(lambda: UNet(down='avgpool'), contains="down='avgpool' is not one of ('maxpool', 'strided')")
    fc.test_fail(lambda: UNet(up='deconv'), contains="('transpose', 'upsample')")
    fc.test_fail(lambda: UNet(up='upsample', up_mode='bicubic'), contains="up_mode='bicubic'")
    fc.test_fail(lambda: UNet(width=0), contains='width=0')
    fc.test_fail(lambda: UNet(depth=2.0), contains='depth')
    fc.test_fail(lambda: UNet(up='upsample', bilinear_init=True), contains="needs up='transpose'")


def test_bilinear_init_keeps_configs_and_keys():
    "`bilinear_init=True`: the same state-dict keys (4×4 kernels), rebuilt from its config; off, absent from `config`."
    mb = UNet(width=4, depth=3, bilinear_init=True)
    fc.test_eq(list(mb.state_dict()), list(UNet(width=4, depth=3).state_dict()))    # the same keys, 4×4 instead of 2×2 kernels
    UNet(**mb.config).load_state_dict(mb.state_dict())                            # rebuilt from its config
    assert 'bilinear_init' not in UNet().config


def test_get_experiment_lists_the_valid_keys():
    "An unknown key, a bool or None: a ValueError listing every experiment's key and name."
    for bad in (0, 6, '7', 'maxpool_transpose_focal', None, True):
        fc.test_fail(lambda: get_experiment(bad), contains="1 ('maxpool_transpose_bce'), 2")


def test_shape_trace_on_a_small_model():
    "The stages in the order of the U, shapes from the widths, parameters adding up, hooks removed, training mode restored."
    m = UNet(width=4, depth=3).train()
    rows = shape_trace(m, size=40, show=False)
    fc.test_eq([r[0] for r in rows], ['inc', 'downs.0', 'downs.1', 'downs.2', 'ups.0', 'ups.1', 'ups.2', 'outc'])
    fc.test_eq([r[1] for r in rows], [(1, 4, 40, 40), (1, 8, 20, 20), (1, 16, 10, 10), (1, 32, 5, 5),
                                   (1, 16, 10, 10), (1, 8, 20, 20), (1, 4, 40, 40), (1, 1, 40, 40)])
    fc.test_eq(sum(r[2] for r in rows), count_params(m))
    fc.test_eq(rows[3][2], count_params(m.get_submodule('downs.2')))
    assert m.training and not any(mod._forward_hooks for mod in m.modules())
