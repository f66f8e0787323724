"""Lesson 13's report: the form of the files `write_results` writes (moved from the lesson, whole), and one meaning for
"seed" across the repository (a random seed; the project this course grew from is "the original project")."""
import json, os, re

import pytest

from conftest import REPO
from unet_tutorial.config import RunConfig
from unet_tutorial.experiments import Comparison, run_comparison
from unet_tutorial.report import ORIGINAL_CAVEAT, ORIGINAL_RESULTS, original_table, summarize, write_results
from unet_tutorial.synthetic import make_synthetic_pets


@pytest.fixture(scope='module')
def cmp(tmp_path_factory):
    "The lesson's tiny comparison: synthetic pets, the four experiments, two seeds, one epoch of a tiny model."
    tmp = tmp_path_factory.mktemp('report')
    root = make_synthetic_pets(tmp/'pets', n_trainval=48, n_test=16, size=32)
    return run_comparison(root, tmp/'cmp', RunConfig(size=32, width=4, batch_size=16, epochs=1), seeds=(0, 1),
                          progress=False, log=lambda s: None)


def test_files_are_strict_json_atomic_with_the_umask(cmp):
    "A NaN (a pretend test time) is `null` in results.json; the files get the umask's permissions; no `.tmp` is left."
    nan_rec = [{**rec, 'timing': {**rec['timing'], 'test_s': float('nan')}} for rec in cmp.records]
    write_results(Comparison(nan_rec, cmp.dls, cmp.out, cmp.settings))
    res = json.loads((cmp.out/'results.json').read_text(), parse_constant=lambda c: 1/0)   # NaN or Infinity: an error
    assert {rec['timing']['test_s'] for rec in res['runs']} == {None}
    umask = os.umask(0); os.umask(umask)
    for f in ('results.json', 'results.md', 'curves.png'):
        assert oct((cmp.out/f).stat().st_mode & 0o777) == oct(0o666 & ~umask), f
    assert [p.name for p in cmp.out.iterdir() if p.name.endswith('.tmp')] == []
    write_results(cmp)


def test_results_md_names_the_original_project(cmp):
    "results.md puts the original project's numbers under their own heading, with the caveat, and calls it no 'seed'."
    write_results(cmp)
    md = (cmp.out/'results.md').read_text()
    assert "## The original project's numbers" in md and ORIGINAL_CAVEAT in md
    assert f"{ORIGINAL_RESULTS[1]['val_accuracy']:.2%}" in original_table(summarize(cmp.records))
    assert not re.search(r"seed's|seed project", md), md


# "seed" is a random seed; these words meant the project this course grew from. Committed results/ files keep what
# their generator wrote then (results.md's old heading), so only sources are read.
OLD_NAMES = re.compile(r"\bseed project|\bthe seed's|\bSEED_RESULTS\b|\bSEED_CAVEAT\b|\bseed_table\b|\bseed split\b",
                       re.I)
def _texts():
    for p in [*REPO.glob('unet_tutorial/*.py'), *REPO.glob('tools/*.py'), *REPO.glob('bench/*.py'),
              *REPO.glob('tests/*.py'), *REPO.glob('nbs/*.ipynb'), REPO/'CONTRIBUTING.md', REPO/'README.md']:
        if p.name != 'test_report.py': yield p.relative_to(REPO).as_posix(), p.read_text(encoding='utf-8')

def test_seed_means_a_random_seed():
    hits = {name: sorted(set(OLD_NAMES.findall(text))) for name, text in _texts()}
    bad = {n: h for n, h in hits.items() if h}
    assert not bad, f"say 'the original project' (ORIGINAL_RESULTS, original_table), not 'seed': {bad}"


def test_analysis_says_what_the_skips_buy_with_welch():
    "Issue 22: with experiments 1 and 5 in the results, the analysis has a verdict 'What the skip connections buy' (1 - 5)."
    from unet_tutorial.report import analysis
    from unet_tutorial.stats import welch
    def row(k, ious): return dict(experiment=k, iou=(sum(ious) / len(ious), 0.01), iou_seeds=ious, degenerate=[],
                                  pixel_accuracy=(0.9, 0.), dice=(0.8, 0.), params=1000 * k)
    text = analysis([row(1, [0.80, 0.81, 0.79]), row(5, [0.70, 0.72, 0.71])])
    para = next(p for p in text.split('\n\n') if p.startswith('**What the skip connections buy**'))
    lo, hi = welch([0.70, 0.72, 0.71], [0.80, 0.81, 0.79])['ci']
    assert '(experiment 1 vs 5;' in para and f'[{lo:+.3f}, {hi:+.3f}]' in para and 'resolved with 3 seeds' in para
    assert '+0.090' in para                                        # experiment 1 minus experiment 5
