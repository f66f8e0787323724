"""Issue 22's error analysis: samples spread over breeds, the per-image IoU broken down by group, degenerate runs
named, speeds kept out of the verdicts, and error overlays whose colours mean only errors."""
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
import torch

from conftest import PETS, needs_pets
from unet_tutorial.config import RunConfig
from unet_tutorial.data import breed_of, read_split, species_of, spread_over_breeds
from unet_tutorial.experiments import (Comparison, breakdown, breakdown_table, image_groups, one_class, plot_breakdown,
                                       run_comparison)
from unet_tutorial.report import CLOCKS, analysis, predictions, results_table, show_errors, show_predictions, summarize
from unet_tutorial.synthetic import make_synthetic_pets


@pytest.fixture(scope='module')
def cmp(tmp_path_factory):
    "A tiny comparison on synthetic pets: four experiments, one seed, one epoch."
    tmp = tmp_path_factory.mktemp('errors')
    root = make_synthetic_pets(tmp/'pets', n_trainval=48, n_test=24, size=32)
    return run_comparison(root, tmp/'cmp', RunConfig(size=32, width=4, batch_size=16, epochs=1), seeds=(0,),
                          progress=False, log=lambda s: None)


@needs_pets
def test_a_sample_of_the_real_test_split_covers_breeds():
    "The official test list starts with 35 Abyssinians; 8 and 16 picked over breeds are 8 and 16 breeds, cats and dogs."
    names = read_split(PETS, 'test')
    assert len({breed_of(n) for n in names[:16]}) == 1          # the bias the sample avoids
    for n in (8, 16, 37):
        pick = spread_over_breeds(names, n)
        assert len({breed_of(names[i]) for i in pick}) == n
        assert {species_of(names[i]) for i in pick} == {'cat', 'dog'}
    assert spread_over_breeds(names, 16, seed=1) != spread_over_breeds(names, 16, seed=0)


def test_spread_over_breeds_rounds_and_edges():
    "A second image of a breed only after one of every breed; n larger than the list gives each index once."
    names = ['a_1', 'a_2', 'a_3', 'b_1', 'C_1']
    pick = spread_over_breeds(names, 10)
    assert sorted(pick) == list(range(5))
    assert {breed_of(names[i]) for i in pick[:3]} == {'a', 'b', 'C'}
    assert spread_over_breeds([], 4) == [] and spread_over_breeds(names, 0) == []


def test_comparison_sample_uses_names_or_spaces_evenly(cmp):
    "With test names: spread over breeds; without (unet-train's report): evenly spaced over the split, first and last."
    assert len(cmp.test_names) == cmp.dls.test.n
    assert cmp.sample(5) == spread_over_breeds(cmp.test_names, 5)
    bare = Comparison(cmp.records, cmp.dls, cmp.out, cmp.settings)
    n = cmp.dls.test.n
    assert bare.sample(3) == [0, round((n - 1) / 2), n - 1] and bare.sample(100) == list(range(n))


def test_predictions_follow_the_sample(cmp):
    "The report's predictions are the images `sample` picks; the figure names them by file."
    x, y, _ = predictions(cmp, 6)
    idx = cmp.sample(6)
    assert torch.equal(y.cpu(), cmp.dls.test.masks[idx].cpu())
    fig = show_predictions(cmp, (0, 1), n=6)
    assert [a.get_title() for a in fig.axes[::6]] == [cmp.test_names[i] for i in idx[:2]]
    plt.close(fig)


def test_error_overlay_is_grey_except_errors(cmp):
    "Every pixel of an error panel is grey (R = G = B) or one of the two error colours: the photo adds no colour."
    fig = show_errors(cmp, qs=(50,))
    img = fig.axes[0].get_images()[0].get_array()                 # (S, S, 3)
    img = torch.as_tensor(img, dtype=torch.float32)
    grey = (img[..., 0] - img[..., 1]).abs().lt(1e-6) & (img[..., 1] - img[..., 2]).abs().lt(1e-6)
    red = (img == torch.tensor([1., 0, 0])).all(-1)
    blue = (img == torch.tensor([0, .3, 1.])).all(-1)
    assert bool((grey | red | blue).all())
    assert {t.get_text() for t in fig.legends[0].get_texts()} >= {'false positive (background called pet)',
                                                                  'false negative (pet missed)'}
    plt.close(fig)


def test_group_functions_refuse_mismatched_lengths():
    "A list of another length is named, with what to do."
    with pytest.raises(ValueError, match='pet: 1 shares for 2 names'): image_groups(['a_1', 'b_1'], [0.2])
    with pytest.raises(ValueError, match='keys: 1 groups for 2 IoUs'): breakdown([0.1, 0.2], ['a'])


def test_breakdown_by_size_and_table():
    "Pet sizes fall in their bins (an edge goes up); the table has one row per group and a column per experiment."
    g = image_groups(['x_1', 'x_2', 'x_3', 'x_4'], [0.0, 0.1, 0.49, 1.0])
    assert g['pet size'] == ['0-10%', '10-25%', '25-50%', '50-100%']
    rows = breakdown([0.2, 0.4, 0.6, 0.8], ['dog', 'dog', 'cat', 'cat'])
    assert [(r['group'], r['n'], round(r['mean'], 6), r['below']) for r in rows] == [('cat', 2, 0.7, 0), ('dog', 2, 0.3, 1)]
    table = breakdown_table({'A': [0.2, 0.4, 0.6, 0.8], 'B': [1, 1, 1, 1]}, ['dog', 'dog', 'cat', 'cat'], 'species')
    lines = table.splitlines()
    assert lines[0] == '| species | images | A | B |' and len(lines) == 4
    assert lines[2].startswith('| cat | 2 | 0.700 ± ') and '1.000 ± 0.000 (0% < 0.5)' in lines[2]


def test_plot_breakdown_without_images():
    "Without images: the two panels only; every breed has a bar."
    ious = {'A': [0.1, 0.5, 0.9, 0.7], 'B': [0.2, 0.4, 0.8, 0.6]}
    g = image_groups(['Bengal_1', 'Bengal_2', 'pug_1', 'beagle_1'], [0.05, 0.3, 0.6, 0.2])
    fig = plot_breakdown(ious, g)
    assert len(fig.axes) == 2 and len(fig.axes[1].patches) == 3
    plt.close(fig)


def test_one_class_flags_degenerate_runs(cmp):
    "The share of pixels predicted pet is recorded; a run predicting one class everywhere is named in the log."
    assert all(0 <= r['test']['predicted_pet'] <= 1 for r in cmp.records)
    assert one_class(dict(predicted_pet=1.0)) == 'pet' and one_class(dict(predicted_pet=0.0005)) == 'background'
    assert one_class(dict(predicted_pet=0.5)) is None and one_class(dict(iou=0.3)) is None
    lines = []
    run_comparison(cmp.out.parent/'pets', cmp.out, RunConfig(size=32, width=4, batch_size=16, epochs=1),
                   seeds=(0,), progress=False, log=lines.append)    # finished runs, read back and logged
    for line, r in zip(lines, cmp.records):
        assert ('DEGENERATE' in line) == (one_class(r['test']) is not None), line


def test_verdicts_quote_no_speed_and_the_table_says_why(cmp):
    "The analysis compares no images/s; the table that still shows the clocks carries the note."
    rows = summarize(cmp.records)
    assert 'images/s' not in analysis(rows) and 'speed' not in analysis(rows)
    assert results_table(rows).endswith(CLOCKS)


def test_the_verdicts_name_degenerate_runs(cmp):
    "The analysis calls degenerate exactly the experiments with a seed whose model predicts one class everywhere."
    rows = summarize(cmp.records)
    flagged = {r['experiment'] for r in cmp.records if one_class(r['test'])}
    text = analysis(rows)
    assert ('**Degenerate runs**' in text) == bool(flagged)
    assert all((f"experiment {k} (seed" in text) == (k in flagged) for k in (1, 2, 3, 4))
    forced = [{**r, 'test': {**r['test'], 'predicted_pet': 0.0}} for r in cmp.records]
    assert 'experiment 1 (seed 0), experiment 2 (seed 0), experiment 3 (seed 0), experiment 4 (seed 0) predict' in analysis(summarize(forced))
