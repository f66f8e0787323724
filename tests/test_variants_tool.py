"""tools/variants.py (issue 22): the augmentation and border tables and their Welch verdicts are computed from the runs'
small files (metrics.json, border_scores.json), seeds matched by folder, and say 'not resolved' or 'not run' honestly."""
import importlib.util, json

import pytest

from unet_tutorial.stats import welch
from conftest import REPO

spec = importlib.util.spec_from_file_location('variants', REPO/'tools'/'variants.py')
variants = importlib.util.module_from_spec(spec); spec.loader.exec_module(variants)


def _run(folder, seed, iou, scores=None):
    d = folder/variants.EXP1/f'seed{seed}'; d.mkdir(parents=True)
    (d/'metrics.json').write_text(json.dumps(dict(test=dict(iou=iou))))
    if scores: (d/'border_scores.json').write_text(json.dumps(dict(scores={c: dict(iou=v) for c, v in scores.items()})))


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(variants, 'BASE', tmp_path/'fast')
    for s, i in enumerate((0.80, 0.81, 0.79)): _run(tmp_path/'fast', s, i, dict(background=i, pet=i - 0.05, ignore=i + 0.08))
    for s, i in enumerate((0.77, 0.78, 0.76)): _run(tmp_path/'fast_noaug', s, i)
    for s, i in enumerate((0.70, 0.71)): _run(tmp_path/'fast_border_pet', s, i, dict(background=i, pet=i + 0.1, ignore=i + 0.15))
    return tmp_path


def test_table_reads_every_run_and_computes_welch(results):
    variants.table(results)
    md, js = (results/'variants.md').read_text(), json.loads((results/'variants.json').read_text())
    assert js['test_iou']['base'] == [0.80, 0.81, 0.79] and js['test_iou']['noaug'] == [0.77, 0.78, 0.76]
    w = welch([0.80, 0.81, 0.79], [0.77, 0.78, 0.76])
    assert f"{w['diff']:+.3f}, 95% CI over seeds [{w['ci'][0]:+.3f}, {w['ci'][1]:+.3f}]" in md
    assert '| without | 0.770 ± 0.010 |' in md
    assert js['border']['pet']['pet'] == pytest.approx([0.80, 0.81])        # trained as pet, scored as pet
    assert js['border']['background']['ignore'] == pytest.approx([0.88, 0.89, 0.87])


def test_missing_runs_are_said_not_invented(results):
    variants.table(results)
    md = (results/'variants.md').read_text()
    row = next(l for l in md.splitlines() if l.startswith('| ignore |'))     # border_ignore never ran
    assert row.count('not run') == 3
    assert 'Trained as ignore vs as background, scored as pet: not resolved: 3 and 0 seeds' in md
