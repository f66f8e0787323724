"""Issue 20, "nothing lost, nothing silently wrong", for your own data (lesson 21, `unet_tutorial.folder`, and `unet-train`).

Palette masks are read by their colours; the `--out` lock covers the files' contents and says what changed; CSV
duplicates, a `valid/` beside a `val/`, empty split folders, huge images, malformed CSVs, pipes, folders and broken
links among the files are each refused with a message naming the file; `.jfif` photos are read; a colour given as
'#rrggbb' is written so in messages. Every folder is tiny (32×32) and written here.
"""
import os, signal, struct, warnings, zlib
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import masks_by_name
import torch
from PIL import Image

from unet_tutorial.core import BadInput
from unet_tutorial.config import data_fingerprint, check_same, settings_of, CPU
from unet_tutorial.folder import FolderError, read_folder
from unet_tutorial.masks import read_mask
from unet_tutorial.synthetic import make_synthetic_folder
from unet_tutorial import cli

S = 32
T = ['--size', '32', '--width', '4', '--batch-size', '8', '--threads', '1', '--device', 'cpu', '--epochs', '1']
torch.set_num_threads(1)


@pytest.fixture
def pets(tmp_path):
    "12 synthetic pets with 0/255 masks."
    return make_synthetic_folder(tmp_path/'pets', n=12, size=S)



def truth(root, name): return (np.asarray(Image.open(root/'masks'/f'{name}.png')) > 0).astype(np.uint8)


@contextmanager
def deadline(s=60):
    "Fail instead of hanging (opening a FIFO blocks forever)."
    def boom(*_): raise TimeoutError(f'blocked for {s} s')
    old = signal.signal(signal.SIGALRM, boom); signal.alarm(s)
    try: yield
    finally: signal.alarm(0); signal.signal(signal.SIGALRM, old)


# --- item 4: palette masks are read by their colours -------------------------------------------------------------

def _palette(m01, path, order):
    "Save a 0/1 mask as a 2-colour palette PNG: order 'bw' has index 0 black, 'wb' index 0 white."
    idx = m01 if order == 'bw' else 1 - m01
    im = Image.fromarray(idx.astype(np.uint8), 'P')
    im.putpalette([0, 0, 0, 255, 255, 255] if order == 'bw' else [255, 255, 255, 0, 0, 0]); im.save(path)


def test_palette_masks_read_by_colour(pets, tmp_path):
    t = {p.stem: truth(pets, p.stem) for p in (pets/'masks').iterdir()}
    for i, (name, m) in enumerate(sorted(t.items())): _palette(m, pets/'masks'/f'{name}.png', 'wb')   # palette (white, black)
    data = read_folder(pets, size=S)
    assert data.convention == 'masks use 0/255: treating 255 as foreground'
    for n, m in masks_by_name(data).items(): np.testing.assert_array_equal(m, t[n], err_msg=n)
    for i, (name, m) in enumerate(sorted(t.items())): _palette(m, pets/'masks'/f'{name}.png', 'bw' if i % 2 else 'wb')  # mixed
    for n, m in masks_by_name(read_folder(pets, size=S)).items(): np.testing.assert_array_equal(m, t[n], err_msg=n)


def test_read_mask_palette_gives_colours(tmp_path):
    m = np.zeros((8, 8), np.uint8); m[2:5, 2:5] = 1
    im = Image.fromarray(m, 'P'); im.putpalette([0, 0, 0, 255, 0, 110]); im.save(tmp_path/'p.png')
    raw, kind = read_mask(tmp_path/'p.png')
    assert kind == 'colour' and sorted(np.unique(raw).tolist()) == [0, 0xff006e]


# --- item 5 (and 23): the --out lock covers the contents and says what changed ----------------------------------

def test_fingerprint_parts_and_what_changed():
    splits = dict(train=['a', 'b'], valid=['c'], test=[])
    old = data_fingerprint(splits)
    assert len(old) == 16                                   # the pets' form, unchanged
    new = data_fingerprint(splits, dict(a='1', b='2', c='3'))
    assert new.startswith(f'split:{old} ')                  # its split part is the old fingerprint: old folders still match
    assert check_same(settings_of(CPU, old), settings_of(CPU, new)) == []
    resplit = data_fingerprint(dict(train=['a'], valid=['b', 'c'], test=[]), dict(a='1', b='2', c='3'))
    assert 'split' in check_same(settings_of(CPU, new), settings_of(CPU, resplit))[0]
    assert '--valid-pct' in check_same(settings_of(CPU, new), settings_of(CPU, resplit))[0]
    changed = data_fingerprint(splits, dict(a='1', b='2', c='4'))
    assert 'contents' in check_same(settings_of(CPU, new), settings_of(CPU, changed))[0]
    more = data_fingerprint(dict(splits, test=['d']), dict(a='1', b='2', c='3', d='5'))
    assert 'files added, removed or renamed' in check_same(settings_of(CPU, new), settings_of(CPU, more))[0]


def test_train_refuses_other_contents_and_names_the_split(pets, tmp_path, capsys):
    out = tmp_path/'out'
    assert cli.unet_train(['--data', str(pets), '--out', str(out), *T]) == 0
    capsys.readouterr()
    for p in (pets/'masks').iterdir():   # inverted in place: the same names, other masks
        Image.fromarray(255 - np.asarray(Image.open(p))).save(p)
    assert cli.unet_train(['--data', str(pets), '--out', str(out), *T]) == 2
    err = capsys.readouterr().err
    assert 'contents' in err and 'finished already' not in err, err
    for p in (pets/'masks').iterdir(): Image.fromarray(255 - np.asarray(Image.open(p))).save(p)   # back as they were
    assert cli.unet_train(['--data', str(pets), '--out', str(out), *T, '--valid-pct', '0.4']) == 2
    err = capsys.readouterr().err
    assert 'split' in err and '--valid-pct' in err, err


# --- item 6: duplicates in a CSV ---------------------------------------------------------------------------------

def _csv(pets, rows, name='pairs.csv'):
    (pets/name).write_text('\n'.join(['image,mask,split', *rows]) + '\n'); return pets/name


def test_csv_duplicates_are_refused(pets):
    rows = [f'images/pet_{i:03d}.jpg,masks/pet_{i:03d}.png,{"valid" if i < 3 else "train"}' for i in range(12)]
    with pytest.raises(FolderError) as e: read_folder(_csv(pets, rows + [rows[5]]), size=S)
    assert 'pairs.csv line 14' in str(e.value) and 'line 7' in str(e.value), str(e.value)
    with pytest.raises(FolderError) as e:   # one image, two masks (the same path spelt another way)
        read_folder(_csv(pets, rows + ['./images/pet_005.jpg,masks/pet_006.png,train']), size=S)
    assert 'pairs.csv line 14' in str(e.value) and 'masks/pet_006.png' in str(e.value), str(e.value)
    with pytest.raises(FolderError) as e:   # one image in two splits
        read_folder(_csv(pets, rows + ['images/pet_005.jpg,masks/pet_005.png,test']), size=S)
    assert 'pairs.csv line 14' in str(e.value) and 'train' in str(e.value) and 'test' in str(e.value), str(e.value)


# --- item 7: valid/ and val/ both present ------------------------------------------------------------------------

def _split_folder(pets, d, splits):
    for split, idx in splits.items():
        for sub in ('images', 'masks'): (d/split/sub).mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.open(pets/'images'/f'pet_{i:03d}.jpg').save(d/split/'images'/f'pet_{i:03d}.jpg')
            Image.open(pets/'masks'/f'pet_{i:03d}.png').save(d/split/'masks'/f'pet_{i:03d}.png')
    return d


def test_valid_and_val_both_refused(pets, tmp_path):
    d = _split_folder(pets, tmp_path/'s', dict(train=range(6), valid=range(6, 8), val=range(8, 10)))
    with pytest.raises(FolderError) as e: read_folder(d, size=S)
    assert 'valid/' in str(e.value) and 'val/' in str(e.value) and 'keep one' in str(e.value), str(e.value)


# --- item 11: empty valid/ or test/ -----------------------------------------------------------------------------

def test_empty_valid_or_test_folder_refused(pets, tmp_path, capsys):
    d = _split_folder(pets, tmp_path/'s', dict(train=range(8), valid=[]))
    with pytest.raises(FolderError, match='valid/ holds no pairs'): read_folder(d, size=S)
    out = tmp_path/'out'
    assert cli.unet_train(['--data', str(d), '--out', str(out), *T]) == 2
    assert 'valid/ holds no pairs' in capsys.readouterr().err and not (out/'settings.json').exists()
    d = _split_folder(pets, tmp_path/'t', dict(train=range(8), valid=range(8, 10), test=[]))
    with pytest.raises(FolderError, match='test/ holds no pairs'): read_folder(d, size=S)


# --- item 13: huge images --------------------------------------------------------------------------------------

def _png_header(path, w, h):
    "A PNG file whose header says w×h (grey), with a tiny damaged body: opening reads the size without decoding."
    chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0))
                     + chunk(b'IDAT', zlib.compress(b'\0' * 100)) + chunk(b'IEND', b''))


def test_huge_images_refused_in_our_words(pets):
    (pets/'images'/'pet_000.jpg').unlink(); _png_header(pets/'images'/'pet_000.png', 20000, 20000)
    _png_header(pets/'masks'/'pet_001.png', 20000, 20000)
    (pets/'images'/'pet_002.jpg').unlink(); _png_header(pets/'images'/'pet_002.png', 12000, 12000)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        with pytest.raises(FolderError) as e: read_folder(pets, size=S)
    msg = str(e.value)
    assert not [x for x in w if issubclass(x.category, Image.DecompressionBombWarning)], [str(x.message) for x in w]
    for f, wh in (('images/pet_000.png', '20000×20000'), ('masks/pet_001.png', '20000×20000'), ('images/pet_002.png', '12000×12000')):
        assert f'{f}: {wh} pixels' in msg and 'downscale' in msg, msg


# --- item 14: malformed CSVs ------------------------------------------------------------------------------------

def test_malformed_csvs(pets):
    (pets/'empty.csv').write_text('')
    with pytest.raises(BadInput, match='empty.csv: .*header line'): read_folder(pets/'empty.csv', size=S)
    (pets/'latin.csv').write_bytes('image,mask\nimages/caf\xe9.jpg,masks/pet_000.png\n'.encode('latin-1'))
    with pytest.raises(BadInput, match='latin.csv: .*UTF-8'): read_folder(pets/'latin.csv', size=S)
    (pets/'short.csv').write_text('image,mask\nimages/pet_000.jpg,masks/pet_000.png\nimages/pet_001.jpg\n')
    with pytest.raises(FolderError, match='short.csv line 3: no mask'): read_folder(pets/'short.csv', size=S)


# --- item 23: pipes, folders, links; .jfif; '#rrggbb' in messages --------------------------------------------------

def test_pipes_folders_and_links_are_named(pets):
    (pets/'images'/'pet_000.jpg').unlink(); os.mkfifo(pets/'images'/'pet_000.jpg')
    (pets/'masks'/'pet_001.png').unlink(); (pets/'masks'/'pet_001.png').mkdir()
    (pets/'images'/'pet_002.jpg').unlink(); os.symlink(pets/'nowhere.jpg', pets/'images'/'pet_002.jpg')
    (pets/'masks'/'pet_003.png').unlink(); os.symlink('/dev/null', pets/'masks'/'pet_003.png')
    (pets/'images'/'extra.png').mkdir()   # a folder named like an image, with no mask
    with deadline(), pytest.raises(FolderError) as e: read_folder(pets, size=S)
    msg = str(e.value)
    assert 'images/pet_000.jpg: a named pipe' in msg, msg
    assert 'masks/pet_001.png: a folder' in msg, msg
    assert f"images/pet_002.jpg: a symbolic link to {pets/'nowhere.jpg'}, which does not exist" in msg, msg
    assert 'masks/pet_003.png: a device' in msg, msg
    assert 'images/extra.png: a folder, not a file' in msg, msg
    assert 'without an image' not in msg and 'no mask' not in msg, msg
    (pets/'pairs.csv').write_text('image,mask\nimages/pet_000.jpg,masks/pet_004.png\nimages/pet_005.jpg,masks/pet_005.png\n')
    with deadline(), pytest.raises(FolderError) as e: read_folder(pets/'pairs.csv', size=S)
    assert 'pairs.csv line 2: images/pet_000.jpg: a named pipe' in str(e.value), str(e.value)


def test_jfif_photos_are_read(pets):
    Image.open(pets/'images'/'pet_003.jpg').save(pets/'images'/'pet_003.jfif', format='JPEG')
    (pets/'images'/'pet_003.jpg').unlink()
    data = read_folder(pets, size=S)
    assert data.files['pet_003'][0].name == 'pet_003.jfif'


def test_colour_values_written_as_colours(pets):
    with pytest.raises(FolderError) as e: read_folder(pets, size=S, foreground='#ff0000')
    assert 'foreground=#ff0000 is in no mask' in str(e.value) and 'e+07' not in str(e.value), str(e.value)


@pytest.mark.parametrize('kind, says', [('dangling', 'a symbolic link to nowhere, which does not exist'),
                                        ('loop', 'a loop of links'), ('file', 'a .txt file, not a folder or a .csv file'),
                                        ('device', 'a device, not a file'), ('missing', 'no such folder (or CSV file)')])
def test_data_that_is_not_a_folder_is_named(tmp_path, capsys, kind, says):
    "--data a broken link, a link loop, a file of another type or a device: said as what it is (a replay of items 18 and 23)."
    d = tmp_path/'data.txt' if kind == 'file' else tmp_path/'data'
    if kind == 'dangling': d.symlink_to('nowhere')
    elif kind == 'loop': d.symlink_to(d.name)
    elif kind == 'file': d.write_text('not a folder')
    elif kind == 'device': d = '/dev/null'
    assert cli.unet_train(['--data', str(d), '--out', str(tmp_path/'out'), *T]) == 2
    err = capsys.readouterr().err
    assert says in err and 'give a folder with images/ and masks/' in err, err
    assert not (tmp_path/'out').exists() or not any((tmp_path/'out').iterdir())   # nothing written


def test_header_only_csv_says_it_lists_no_pairs(tmp_path):
    (tmp_path/'pairs.csv').write_text('image,mask,split\n')
    with pytest.raises(FolderError, match='no pairs listed: add a line image,mask'): read_folder(tmp_path/'pairs.csv', size=S)
