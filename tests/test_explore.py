"""Lesson 15's explorer: the edge cases of `checkerboard_share`, `show_channel` and `filter_grid`, moved from the lesson
whole (the lesson keeps the tests that teach)."""
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
import torch
import fastcore.test as ft   # (a module: pytest would collect its test_* functions as tests)

from unet_tutorial.explore import checkerboard_share, feature_maps, filter_grid, show_channel
from unet_tutorial.model import UNet


def test_checkerboard_share_of_known_maps():
    "A tiled 2×2 motif is all grid, maps whose 2×2 positions average 0 have none, and their energies add."
    torch.manual_seed(0)
    motif = torch.randn(5, 3, 2, 2).repeat(1, 1, 8, 6)                                 # (B, C, 16, 12) a random 2×2 motif tiled
    r = torch.randn(5, 3, 16, 12)
    nogrid = r - r.roll(2, -1)                                                         # each position of a 2×2 block averages 0
    energy = lambda f: ((f - f.mean((-2, -1), keepdim=True))**2).sum((-2, -1))
    ft.test_close(checkerboard_share(motif), 1.0)                                         # all grid
    ft.test_close(checkerboard_share(nogrid), 0.0, eps=1e-5)                              # no grid at all
    ft.test_close(checkerboard_share(motif + nogrid), energy(motif) / (energy(motif) + energy(nogrid)), eps=1e-5)  # the energies add
    ft.test_eq(checkerboard_share(r).shape, (5, 3))
    ft.test_fail(lambda: checkerboard_share(torch.zeros(3, 5)), contains='even')


@pytest.fixture(scope='module')
def feats():
    torch.manual_seed(0)
    return feature_maps(UNet(width=4, depth=2).eval(), torch.randn(1, 3, 32, 32))


def test_show_channel_names_what_exists(feats):
    "An unknown stage, or a channel past the last, is refused with the stages or channels there are."
    names = list(feats)
    ax = show_channel(feats, names[-2], 0)
    assert ax.get_title().startswith(f'{names[-2]}, channel 0 of '); plt.close('all')
    ft.test_fail(lambda: show_channel(feats, 'nope'), contains='choose one of')
    ft.test_fail(lambda: show_channel(feats, names[0], 10_000), contains='channels 0..')


def test_filter_grid_of_one_filter():
    "One constant 3×3 filter: a 3×3 RGB patch, no gap around it."
    ft.test_eq(filter_grid(torch.ones(1, 3, 3, 3)).shape, (3, 3, 3))


def test_compare_models_of_a_multiclass_model_shows_its_classes():
    "A model of 3 classes gets the argmax of its logits as the last panel (a class map, not a sigmoid of channel 0)."
    from unet_tutorial.explore import compare_models
    torch.manual_seed(0)
    model = UNet(3, 3, width=4, depth=2).eval()
    x = torch.randn(1, 3, 16, 16)
    fig = compare_models({'three': model, 'pet': UNet(width=4, depth=2).eval()}, x)
    last = fig.axes[len(fig.axes) // 2 - 1]                                # the first row's last panel
    assert last.get_title() == 'class (argmax)' and fig.axes[-1].get_title() == 'P(pet)'
    with torch.no_grad(): want = model(x)[0].argmax(0)
    assert (torch.as_tensor(last.get_images()[0].get_array()) == want).all()
    plt.close(fig)
