"""Issue 24, "your own multi-class data": folders of masks of more than two classes (lesson 21, `read_folder(classes=)`).

Each convention is read into the class indices it stands for and said in words: grey masks of class indices, palette
PNGs (index = class), colour masks with a colour table (a dict, the '#000000=0,...' string of a command, a JSON file);
every bad mask (a value of C or more, more colours than classes, a colour not in the table) is named in the one
`FolderError`, with its values and what to do; the colour table's parser names what is wrong in it; two classes stay
as they were. Every folder is tiny (32×32) and written here by lesson 02's `make_synthetic_folder`.
"""
import json, shutil

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import masks_by_name

from unet_tutorial.core import BadInput
from unet_tutorial.folder import FolderError, folder_dls, read_folder
from unet_tutorial.masks import class_convention, format_colors, parse_colors
from unet_tutorial.synthetic import SYNTH_PALETTE, make_synthetic_folder

S, N = 32, 12
torch.set_num_threads(1)
TABLE = '#000000=0,#e6194b=1,#3cb44b=2,#0082c8=3'    # SYNTH_PALETTE's first four colours, by class


@pytest.fixture(scope='module')
def four(tmp_path_factory):
    "A folder of N synthetic pets with 4-class palette masks: background 0 and the pets in classes 1-3 by breed."
    return make_synthetic_folder(tmp_path_factory.mktemp('classes')/'four', n=N, size=S, classes=4, palette=True)


def indices(folder, name):
    "The palette indices of `folder`'s mask `name`: the truth, (S, S) uint8."
    return np.asarray(Image.open(folder/'masks'/f'{name}.png'))


def rewrite(four, dest, write):
    "A copy of `four` with each mask written again by `write(index array, path without suffix)`."
    shutil.copytree(four/'images', dest/'images'); (dest/'masks').mkdir()
    for p in sorted((four/'masks').iterdir()): write(np.asarray(Image.open(p)), dest/'masks'/p.stem)
    return dest


def as_rgb(m, stem): Image.fromarray(np.array(SYNTH_PALETTE, np.uint8)[m]).save(f'{stem}.png')


def test_palette_masks_are_their_indices(four):
    data = read_folder(four, size=S, classes=4)
    assert data.convention == 'palette masks: palette index = class (4 classes)'
    assert (data.classes, data.colors) == (4, None)
    for n, m in masks_by_name(data).items(): np.testing.assert_array_equal(m, indices(four, n))
    assert 'classes: 0 ' in repr(data) and 'foreground' not in repr(data)
    with pytest.raises(ValueError, match='pos_weight is for two classes'): data.pos_weight
    dls = folder_dls(four, batch_size=4, device='cpu', size=S, classes=4)     # what `unet-train --classes 4` calls
    x, y = next(iter(dls.train))
    assert (y.dtype, tuple(y.shape)) == (torch.uint8, (4, 1, S, S))
    assert set(torch.unique(dls.train_masks).tolist()) <= {0, 1, 2, 3} and dls.data.classes == 4


def test_grey_class_indices_and_ignored(four, tmp_path):
    def grey(m, stem):
        m = m.copy(); m[0, :] = 255; m[1, :] = 128; Image.fromarray(m).save(f'{stem}.png')   # 255 and 128: to ignore
    data = read_folder(rewrite(four, tmp_path/'grey', grey), size=S, classes=4, ignore=128)
    assert data.convention.startswith('masks hold 4 values: treating them as classes 0-3; 255 is ignored')
    assert data.convention.endswith('128 is ignored (left out of the loss and the scores)')
    for n, m in masks_by_name(data).items():
        want = indices(four, n).copy(); want[:2] = 255
        np.testing.assert_array_equal(m, want)


def test_a_class_in_no_mask_is_said(four):
    data = read_folder(four, size=S, classes=5)
    assert data.convention == 'palette masks: palette index = class (5 classes); no mask holds class 4'


def test_resized_masks_stay_classes(four):
    "At another size the masks are resized by nearest neighbour: the palette's classes, no value between two of them."
    data = read_folder(four, size=16, classes=4)
    for n, m in masks_by_name(data).items():
        np.testing.assert_array_equal(m, np.asarray(Image.open(four/'masks'/f'{n}.png').resize((16, 16), Image.NEAREST)))


@pytest.mark.parametrize('form', ['string', 'dict', 'json'])
def test_colour_masks_with_a_table(four, tmp_path, form):
    rgb = rewrite(four, tmp_path/'rgb', as_rgb)
    colors = dict(string=TABLE, dict=dict(p.split('=') for p in TABLE.split(',')), json=tmp_path/'colors.json')[form]
    (tmp_path/'colors.json').write_text(json.dumps({c: int(k) for c, k in (p.split('=') for p in TABLE.split(','))}))
    data = read_folder(rgb, size=S, classes=4, colors=colors)
    assert data.convention == f'colour masks, by the table {TABLE} (4 classes)' and data.colors == TABLE
    for n, m in masks_by_name(data).items(): np.testing.assert_array_equal(m, indices(four, n))


def test_palette_masks_with_a_table_and_two_classes(four, tmp_path):
    "A table also reads palette masks by their colours, and with classes=2 it gives the binary masks 0/1 (255 ignored)."
    data = read_folder(four, size=S, classes=2, colors='#000000=0,#e6194b=1,#3cb44b=1,#0082c8=255')
    assert data.classes == 2 and 'foreground: ' in repr(data)
    for n, m in masks_by_name(data).items():
        np.testing.assert_array_equal(m, np.array([0, 1, 1, 255], np.uint8)[indices(four, n)])


def test_unused_colour_is_said(four, tmp_path):
    data = read_folder(rewrite(four, tmp_path/'rgb', as_rgb), size=S, classes=5, colors=TABLE + ',#f58230=4')
    assert data.convention.endswith('(5 classes); no mask holds #f58230')


def test_colour_masks_without_a_table(four, tmp_path):
    with pytest.raises(FolderError) as e: read_folder(rewrite(four, tmp_path/'rgb', as_rgb), size=S, classes=4)
    assert len(e.value.problems) == 1                     # one line for the folder, not one a mask
    assert "colors='#000000=0,#0082c8=1,#3cb44b=2,#e6194b=3'" in e.value.problems[0] and 'and 9 other masks' in e.value.problems[0]


def test_every_bad_index_mask_named_once(four, tmp_path):
    bad = rewrite(four, tmp_path/'bad', lambda m, s: Image.fromarray(m).save(f'{s}.png'))
    m = indices(four, 'pet_000').copy(); m[:3, :3] = 9; Image.fromarray(m).save(bad/'masks'/'pet_000.png')         # 9 >= 4
    m = indices(four, 'pet_003').copy(); m[:3, :3] = 4; m[3:5, :3] = 6; Image.fromarray(m).save(bad/'masks'/'pet_003.png')
    Image.fromarray(indices(four, 'pet_004') * 60).save(bad/'masks'/'pet_004.jpg'); (bad/'masks'/'pet_004.png').unlink()  # JPEG
    Image.fromarray(indices(four, 'pet_005')).resize((S, S + 8), Image.NEAREST).save(bad/'masks'/'pet_005.png')  # another size
    with pytest.raises(FolderError) as e: read_folder(bad, size=S, classes=4)
    said = {p.split(':')[0]: p for p in e.value.problems}
    assert len(e.value.problems) == 4 and set(said) == {f'masks/pet_00{i}.{x}' for i, x in ((0, 'png'), (3, 'png'), (4, 'jpg'), (5, 'png'))}
    assert 'value 9 is not a class (classes=4: 0-3, and 255 ignored): pass classes=10' in said['masks/pet_000.png']
    assert 'values 4, 6 are not classes' in said['masks/pet_003.png']
    assert 'JPEG' in said['masks/pet_004.jpg'] and 'pass classes' not in said['masks/pet_004.jpg']
    assert str(e.value).startswith('4 problems in') and 'nothing trains' in str(e.value)


def test_every_bad_colour_mask_named_once(four, tmp_path):
    bad = rewrite(four, tmp_path/'bad', as_rgb)
    im = np.asarray(Image.open(bad/'masks'/'pet_000.png')).copy(); im[:2, :2] = (18, 52, 86)                 # a colour not in the table
    Image.fromarray(im).save(bad/'masks'/'pet_000.png')
    big = Image.open(bad/'masks'/'pet_002.png').resize((S * 2, S * 2), Image.NEAREST).resize((S, S), Image.BILINEAR)   # smoothed edges
    big.save(bad/'masks'/'pet_002.png')
    with pytest.raises(FolderError) as e: read_folder(bad, size=S, classes=4, colors=TABLE)
    said = {p.split(':')[0]: p for p in e.value.problems}
    assert set(said) == {'masks/pet_000.png', 'masks/pet_002.png'} and len(e.value.problems) == 2
    assert 'colour #123456 not in colors=; add each to colors= with its class' in said['masks/pet_000.png']
    assert 'colours, more than the 4 classes' in said['masks/pet_002.png'] and 'nearest neighbour' in said['masks/pet_002.png']


def test_binary_masks_with_classes_above_two(tmp_path):
    "0/255 masks read as classes: one class, 0, and 255 ignored: said, with the fix (leave classes at 2)."
    with pytest.raises(FolderError, match='every mask holds the one class 0.*leave classes at 2'):
        read_folder(make_synthetic_folder(tmp_path/'bin', n=8, size=S), size=S, classes=3)


def test_classes_in_binary_masks_are_suggested(four, tmp_path):
    "Read with the default two classes, masks of 4 classes are refused, each with the hint to pass classes=4."
    with pytest.raises(FolderError) as e: read_folder(four, size=S)
    assert e.value.problems and all(p.endswith('pass classes=4') for p in e.value.problems)
    grey = make_synthetic_folder(tmp_path/'grey', n=8, size=S, values=(0, 1))
    m = np.asarray(Image.open(grey/'masks'/'pet_000.png')).copy(); m[:2] = 2; Image.fromarray(m).save(grey/'masks'/'pet_000.png')
    with pytest.raises(FolderError, match=r'3 values \(0, 1, 2\).*pass classes=3'): read_folder(grey, size=S)


def test_two_classes_unchanged(tmp_path):
    base = make_synthetic_folder(tmp_path/'base', n=8, size=S)
    a, b = read_folder(base, size=S), read_folder(base, size=S, classes=2)
    assert a.convention == b.convention == 'masks use 0/255: treating 255 as foreground' and b.classes == 2
    for s in a.masks: assert torch.equal(a.masks[s], b.masks[s]) and torch.equal(a.images[s], b.images[s])


def test_settings_refused(four):
    with pytest.raises(BadInput, match='foreground= picks the object'): read_folder(four, size=S, classes=4, foreground=1)
    for bad in (1, 256, '4', True):
        with pytest.raises(BadInput, match='give the number of classes, 2'): read_folder(four, size=S, classes=bad)


@pytest.mark.parametrize('colors, says', [
    ('#000000=0,#ff0000', "'#ff0000' is not COLOUR=CLASS"),
    ('#000000=0,red=1', "'red' is not a colour: write colours #rrggbb"),
    ('#000000=0,#ff0000=one', 'a class is a number, 0 to 1'),
    ('#000000=0,#ff0000=-1', 'a class is 0 or more'),
    ('#000000=0,#ff0000=1,#00ff00=5', 'class 5 is not one of 0-1 (classes=2) nor 255 (ignored): pass classes=6'),
    ('#000000=0,#000000=1', '#000000 is given twice, as 0 and 1'),
    ('#000000=0,#ffffff=255', 'no colour for class 1 of the 2'),
    ('', 'no colour for class 0, 1'),
    ('no_such_file.json', 'neither COLOUR=CLASS,... nor a readable JSON file'),
])
def test_colour_table_errors(colors, says):
    with pytest.raises(BadInput) as e: parse_colors(colors, classes=2)
    assert says in str(e.value)


def test_colour_table_forms(tmp_path):
    (tmp_path/'list.json').write_text('[1, 2]')
    with pytest.raises(BadInput, match='must hold one object'): parse_colors(tmp_path/'list.json')
    table = parse_colors(' #FF0000 = 1 , #000000=0 ,#ffffff=255')      # any case, spaces, 255 ignored, any order
    assert table == {0xff0000: 1, 0: 0, 0xffffff: 255} and format_colors(table) == '#000000=0,#ff0000=1,#ffffff=255'
    assert parse_colors(format_colors(table)) == table and parse_colors(None, 3) is None


def test_class_convention_alone():
    "The lesson-19 function on values alone: indices, a 16-bit mask under a colour table, the fix suggested."
    masks = {'a.png': (np.array([0, 1, 2]), 'grey'), 'b.png': (np.array([0, 2, 255]), 'palette')}
    to_class, words, problems = class_convention(masks, 3)
    assert (words, problems) == ('masks hold 3 values: treating them as classes 0-2; 255 is ignored (left out of the loss and the scores)', [])
    assert to_class(np.array([0, 2, 255]), 'grey').tolist() == [0, 2, 255]
    *_, problems = class_convention({'a.tif': (np.array([0, 1, 300]), '16-bit')}, 3)
    assert problems == ['a.tif: value 300 is not a class (classes=3: 0-2, and 255 ignored): smoothed (anti-aliased) edges or a '
                        'resize that interpolates make in-between values: draw without smoothing and resize masks with nearest neighbour']
    *_, problems = class_convention({'a.tif': (np.array([0, 1]), '16-bit')}, 2, {0: 0, 0xffffff: 1})
    assert problems[0].startswith('a.tif: 16-bit values, not colours')
