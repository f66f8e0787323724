"""Tests of `unet_tutorial.data` and `unet_tutorial.loaders` on the real Oxford-IIIT Pet copy (../shared/data/pets128,
or env UNET_TUTORIAL_DATA).

They read the files directly with PIL, independently of the code under test, and skip with a message when the data is
not there. The synthetic-data tests live in nbs/01_data.ipynb and nbs/03_loaders.ipynb (run by nbdev_test).
"""
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from unet_tutorial.data import IGNORE_INDEX, breed_of, read_split, split_trainval, trimap_to_mask, validate_pets
from unet_tutorial.loaders import MIN_PET, bad_trimaps, get_dls, load_cached, trimap_stats

from conftest import PETS as ROOT, needs_pets
BASE = ROOT/'oxford-iiit-pet'
pytestmark = needs_pets


@pytest.fixture(scope='module')
def trimaps():
    "Every trimap of the copy, read with PIL: {name: uint8 array}"
    return {p.stem: np.array(Image.open(p)) for p in sorted((BASE/'annotations'/'trimaps').glob('*.png'))}


def test_split_sizes():
    tv, te = read_split(ROOT, 'trainval'), read_split(ROOT, 'test')
    assert (len(tv), len(te)) == (3680, 3669)
    assert len(set(tv)) == len(tv) and not set(tv) & set(te)
    assert len({breed_of(n) for n in tv}) == len({breed_of(n) for n in te}) == 37
    assert len(read_split(ROOT, 'all')) == 7390


def test_stratified_split_covers_every_breed():
    tv = read_split(ROOT, 'trainval')
    train, valid = split_trainval(tv, 0.2, seed=42)
    assert len(train) + len(valid) == len(tv) and not set(train) & set(valid)
    per_breed, in_valid = Counter(map(breed_of, tv)), Counter(map(breed_of, valid))
    assert set(in_valid) == set(per_breed)
    for b, c in per_breed.items(): assert abs(in_valid[b] - 0.2*c) <= 1, b
    original_valid = sorted(tv)[int(0.8*len(tv)):]                     # the original project's split
    assert len({breed_of(n) for n in original_valid}) < 10


def test_trimap_values_and_sizes(trimaps):
    assert len(trimaps) == 7390
    values = set()
    for name, t in trimaps.items():
        assert t.shape == (128, 128), name
        values |= set(np.unique(t).tolist())
    assert values == {1, 2, 3}


def test_pet_fraction_and_empty_masks(trimaps):
    t = torch.from_numpy(np.stack(list(trimaps.values())))
    st = trimap_stats(t, list(trimaps))
    assert 0.25 < st['pet'] < 0.35, st['pet']                      # README: about 27%; this copy: 30%
    assert 0.05 < st['border'] < 0.2, st['border']
    assert len(st['empty']) == 23 and {'Egyptian_Mau_162', 'saint_bernard_15'} <= set(st['empty'])
    for n in st['empty']: assert (trimaps[n] == 2).all(), n      # the empty ones are all background
    masks = trimap_to_mask(t[:50], 'ignore')
    assert set(masks.unique().tolist()) <= {0, 1, IGNORE_INDEX}


def test_cache_matches_files(tmp_path, trimaps):
    names = read_split(ROOT, 'test')[::300]                         # a spread of breeds
    ims, tris = load_cached(ROOT, names, 128, cache=tmp_path)
    assert ims.shape == (len(names), 3, 128, 128) and ims.dtype == torch.uint8
    for i, n in enumerate(names):
        assert (tris[i].numpy() == trimaps[n]).all(), n               # never misaligned
        assert (ims[i].permute(1, 2, 0).numpy() == np.array(Image.open(BASE/'images'/f'{n}.jpg').convert('RGB'))).all(), n
    small = load_cached(ROOT, names[:4], 64, cache=tmp_path)[1]
    assert small.shape == (4, 64, 64) and set(small.unique().tolist()) <= {1, 2, 3}
    assert validate_pets(ROOT, names) == len(names)


def test_get_dls_real(tmp_path):
    dls = get_dls(ROOT, size=128, batch_size=8, limit=24, device='cpu', cache=tmp_path, border='ignore')
    assert (dls.train.n, dls.valid.n, dls.test.n) == (24, 24, 24)
    x, y = next(iter(dls.train))
    assert x.shape == (8, 3, 128, 128) and x.dtype == torch.float32 and y.shape == (8, 1, 128, 128)
    assert abs(x.mean().item()) < 1.5 and set(y.unique().tolist()) <= {0, 1, IGNORE_INDEX}
    assert dls.train_masks.shape == (24, 1, 128, 128)


def test_bad_trimaps_rule_on_the_real_data(tmp_path, trimaps):
    "The 23 failed annotations are exactly the trimaps under MIN_PET, and nothing lies between them and the rest."
    frac = {n: (t == 1).mean() for n, t in trimaps.items()}           # read with PIL, not with the code under test
    under = sorted(n for n, f in frac.items() if f < MIN_PET)
    assert len(under) == 23 and all(frac[n] == 0 for n in under)
    assert min(f for f in frac.values() if f > 0) > 2*MIN_PET          # the gap the threshold sits in
    tv, te = read_split(ROOT, 'trainval'), read_split(ROOT, 'test')
    bad_tv, bad_te = bad_trimaps(ROOT, tv), bad_trimaps(ROOT, te)      # the shared cache: these splits are cached
    assert (sorted(bad_tv), sorted(bad_te)) == ([n for n in under if n in set(tv)], [n for n in under if n in set(te)])
    assert (len(bad_tv), len(bad_te)) == (7, 7)


def test_get_dls_drops_failed_trimaps_by_default():
    "Every split loses its failed trimaps (named in `dropped`); drop_bad=False keeps all 3,680 + 3,669."
    dls = get_dls(ROOT, size=128, batch_size=64, device='cpu', on_device=False)
    kept = get_dls(ROOT, size=128, batch_size=64, device='cpu', on_device=False, drop_bad=False)
    assert (kept.train.n + kept.valid.n, kept.test.n) == (3680, 3669) and not any(kept.dropped.values())
    d = dls.dropped
    assert sorted(d['train'] + d['valid']) == sorted(bad_trimaps(ROOT, read_split(ROOT, 'trainval')))
    assert d['test'] == bad_trimaps(ROOT, read_split(ROOT, 'test'))
    assert (dls.train.n, dls.valid.n, dls.test.n) == (kept.train.n - len(d['train']), kept.valid.n - len(d['valid']), 3669 - 7)
    assert all((m == 1).flatten(1).any(1).all() for m in (dls.train.masks, dls.valid.masks, dls.test.masks))
    assert 'dropped' in repr(dls)
