"""Lesson 03's regression tests, moved out of its teaching path: a damaged tensor cache, the valid loader, the splits
`get_dls` refuses, and the cache written in one step (lesson 00's `atomic_write`)."""
import contextlib, errno, io, os, shutil
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from fastcore.test import test_eq as eq, test_fail as fails   # aliases: pytest collects test_*

from unet_tutorial.core import IGNORE_INDEX
from unet_tutorial.data import read_split, split_trainval
from unet_tutorial.loaders import _UNWRITABLE, _cache_file, get_dls, load_cached
from unet_tutorial.synthetic import make_synthetic_pets


@pytest.fixture(scope='module')
def syn(tmp_path_factory):
    "Lesson 03's synthetic copy (200 trainval, 40 test images)."
    return make_synthetic_pets(tmp_path_factory.mktemp('loaders')/'synth')


class NotATensor: pass   # an object `weights_only=True` refuses to load


def cached_with_notice(*a, **k):
    "`load_cached(*a, **k)` and what it printed to stderr"
    with contextlib.redirect_stderr(io.StringIO()) as err: out = load_cached(*a, **k)
    return out, err.getvalue()


def test_a_damaged_cache_is_rebuilt_after_one_line(syn, tmp_path):
    CACHE, names = tmp_path/'cache', read_split(syn)[:20]
    (ims, tris), notice = cached_with_notice(syn, names, 64, cache=CACHE); eq(notice, '')   # a new cache: silent
    (ims, tris), notice = cached_with_notice(syn, names, 64, cache=CACHE); eq(notice, '')   # a good cache: silent
    fn = _cache_file(syn/'oxford-iiit-pet', sorted(names), 64, CACHE)
    for damage in (lambda: fn.write_bytes(b'\0'*100),                                  # garbage ("mmap can only be used ...")
                   lambda: fn.write_bytes(fn.read_bytes()[:1000]),                      # truncated
                   lambda: torch.save({'names': sorted(names)}, fn),                    # a dict without the tensors
                   lambda: torch.save({'names': sorted(names)[::-1], 'images': ims, 'trimaps': tris}, fn),  # other names
                   lambda: torch.save({'names': sorted(names), 'images': ims[:3], 'trimaps': tris}, fn),    # wrong shape
                   lambda: torch.save(NotATensor(), fn)):                               # not weights: refused, not run
        damage()
        (ims2, tris2), notice = cached_with_notice(syn, names, 64, cache=CACHE)
        eq(ims2, ims); eq(tris2, tris)                                                   # rebuilt: the same tensors
        assert str(fn) in notice and 'rebuilding' in notice and notice.count('\n') == 1, notice
        eq(cached_with_notice(syn, names, 64, cache=CACHE)[1], '')                      # and good again
    eq(sorted(p.suffix for p in CACHE.iterdir()), ['.pt'])                              # no temporary file left behind


def test_valid_loader_is_neither_shuffled_nor_augmented(syn, tmp_path):
    dls = get_dls(syn, size=64, batch_size=16, border='ignore', device='cpu', cache=tmp_path/'cache')
    xv, yv = next(iter(dls.valid))
    eq(next(iter(dls.valid))[0], xv)                                  # valid is neither shuffled nor augmented
    eq(set(yv.unique().tolist()) <= {0, 1, IGNORE_INDEX}, True)
    assert (yv == IGNORE_INDEX).any()                                 # border='ignore' reached the masks


def test_splits_that_cannot_be_trained_on_are_refused_by_name(syn, tmp_path):
    CACHE, SPL, syn_tv = tmp_path/'cache', tmp_path/'splits', read_split(syn)
    def damaged_copy(**lists):
        "A copy of SYN with the split lists in `lists` ({'trainval': [names], 'test': [names]}) rewritten"
        shutil.rmtree(SPL, ignore_errors=True); shutil.copytree(syn, SPL)
        for k, ns in lists.items(): (SPL/'oxford-iiit-pet'/'annotations'/f'{k}.txt').write_text(''.join(f'{n} 1 1 1\n' for n in ns))
        return SPL
    ann, kw = SPL/'oxford-iiit-pet'/'annotations', dict(size=64, device='cpu', cache=CACHE)
    for lists, match in ((dict(test=[]), f"{ann/'test.txt'} lists no image"),
                         (dict(trainval=[]), f"{ann/'trainval.txt'} lists no image"),
                         (dict(trainval=syn_tv[:2]), f"{ann/'trainval.txt'} lists 2 image(s): too few for a valid split")):
        fails(lambda: get_dls(damaged_copy(**lists), **kw), contains=match)
    fails(lambda: get_dls(damaged_copy(), valid_pct=0, **kw), contains='valid_pct=0')
    blank = damaged_copy()                                                  # every trainval trimap blanked: no pet anywhere
    for n in syn_tv: Image.fromarray(np.full((64, 64), 2, np.uint8)).save(ann/'trimaps'/f'{n}.png')
    fails(lambda: get_dls(blank, **kw), contains=f"every image of the train split ({len(split_trainval(syn_tv)[0])}, from {ann/'trainval.txt'})")
    fails(lambda: get_dls(blank, drop_bad=False, **kw), contains="no trimap of the train split")
    try: get_dls(blank, drop_bad=False, **kw); raise AssertionError('no error')
    except ValueError as e: assert str(ann/'trainval.txt') in str(e), e


def test_a_cache_that_cannot_be_written_is_decoded_into_memory(syn, tmp_path):
    "A full disk while the cache is written: one notice with the reason, the tensors from memory, no file left (half or temporary)."
    cache, names = tmp_path/'full', read_split(syn)[:6]
    direct = load_cached(syn, names, 32, cache=tmp_path/'ok')
    def full(obj, f, *a, **k): raise OSError(errno.ENOSPC, 'No space left on device')
    _UNWRITABLE.discard(cache)
    with mock.patch.object(torch, 'save', full):
        (ims, tris), notice = cached_with_notice(syn, names, 32, cache=cache)
        eq(cached_with_notice(syn, names, 32, cache=cache)[1], '')          # one notice per folder
    eq((ims, tris), direct)
    assert f'cannot write the tensor cache in {cache} (No space left on device); decoding the images into memory' in notice, notice
    eq(list(cache.iterdir()), [])


def test_the_cache_file_gets_the_umask_permissions(syn, tmp_path):
    old = os.umask(0o027)
    try: load_cached(syn, read_split(syn)[:4], 32, cache=tmp_path/'c')
    finally: os.umask(old)
    (f,) = (tmp_path/'c').iterdir()
    eq((f.suffix, oct(f.stat().st_mode & 0o777)), ('.pt', oct(0o640)))
