"Prediction with a model of C > 1 classes (issue 24): probabilities, the class map, palette PNGs, the legend, ONNX."
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_onnx
from unet_tutorial.inference import (class_names, draw_legend, mask_from_logits, overlay, palette_for, predict,
                                     predict_files, predict_logits, show_prediction)
from unet_tutorial.model import UNet

torch.set_num_threads(1)


@pytest.fixture
def work(tmp_path):
    "A 4-class tiny U-Net (untrained), its checkpoint, and a photo of an odd size."
    torch.manual_seed(0)
    model = UNet(3, 4, width=4, depth=2).eval()
    ckpt = tmp_path/'four.pt'
    torch.save({'model': model.state_dict(), 'model_config': model.config, 'size': 32}, ckpt)
    g = np.random.default_rng(0)
    photo = tmp_path/'photo.png'
    Image.fromarray(g.integers(0, 256, (45, 71, 3), dtype=np.uint8)).save(photo)
    return model, ckpt, photo


def test_probabilities_at_the_photos_size_sum_to_one(work):
    model, _, photo = work
    p = predict(model, photo, 32)
    assert p.shape == (4, 45, 71)
    assert torch.allclose(p.sum(0), torch.ones(45, 71), atol=1e-5) and p.min() >= 0
    logits, hw = predict_logits(model, photo, 32)
    assert logits.shape == (4, 32, 32) and hw == (45, 71)
    # resized as probabilities, then argmax: the banded class map is the argmax of what `predict` returns
    assert (mask_from_logits(logits, hw, rows=7) == p.argmax(0).numpy()).all()


def test_tta_averages_the_softmax_probabilities(work):
    model, _, _ = work
    x = torch.rand(3, 32, 32)
    plain, mirror = predict(model, x, 32), predict(model, x.flip(-1), 32).flip(-1)
    assert torch.allclose(predict(model, x, 32, tta=True), (plain + mirror) / 2, atol=1e-6)
    all4 = predict(model, x, 32, tta='hv')
    assert all4.shape == (4, 32, 32) and torch.allclose(all4.sum(0), torch.ones(32, 32), atol=1e-5)
    with pytest.raises(ValueError, match='not a choice of flips'): predict(model, x, 32, tta='x')


def test_palette():
    for c in (2, 3, 4, 10, 11, 255):
        pal = palette_for(c)
        assert len(pal) == c and pal[0] == (0, 0, 0) and all(len(rgb) == 3 and all(0 <= v <= 255 for v in rgb) for rgb in pal)
    assert len(set(palette_for(255))) == 255                      # every class its own colour
    assert palette_for(3) == palette_for(10)[:3]                  # a class keeps its colour whatever C is
    for bad in (1, 256):
        with pytest.raises(ValueError, match='between 2 and 255'): palette_for(bad)


def test_class_names():
    assert class_names({'config': {'border': 'class', 'classes': 3}}, 3) == ['background', 'pet', 'border']
    assert class_names({'record': {'config': {'border': 'class'}}}, 3) == ['background', 'pet', 'border']
    assert class_names({'class_names': ['sky', 'road']}, 2) == ['sky', 'road']
    assert class_names({'class_names': ['sky', 'road']}, 3) == ['class 0', 'class 1', 'class 2']   # not these
    assert class_names({'config': {'border': 'ignore'}}, 3) == ['class 0', 'class 1', 'class 2']


def test_predict_files_writes_a_palette_png_and_a_legend(work, tmp_path, capsys):
    model, ckpt, photo = work
    written, failed = predict_files([photo], ckpt, tmp_path/'out', device='cpu')
    assert not failed
    mask_file, overlay_file = written[photo]
    mask = Image.open(mask_file)
    assert (mask.mode, mask.size) == ('P', (71, 45))            # palette PNG at the photo's own size
    assert mask.getpalette()[:12] == [v for rgb in palette_for(4) for v in rgb]   # palette index = class
    values = np.asarray(mask)
    assert values.max() < 4
    assert (values == predict(model, photo, 32).argmax(0).numpy()).all()   # the file is the API's argmax
    ov = np.asarray(Image.open(overlay_file).convert('RGB'))
    assert ov.shape == (45, 71, 3)
    corner = ov[:, :30].reshape(-1, 3)   # the key: its swatches and names in the left 30 px
    assert all((corner == c).all(1).any() for c in palette_for(4)[1:])     # the legend's swatches
    assert (corner == 255).all(1).any()                                    # on its white key
    assert '4 classes: class 0, class 1, class 2, class 3' in capsys.readouterr().out
    # never overwriting: the second run refuses before any work and leaves the files as they were
    before = mask_file.read_bytes()
    with pytest.raises(Exception, match='already exist'): predict_files([photo], ckpt, tmp_path/'out', device='cpu')
    assert mask_file.read_bytes() == before


def test_pets_names_in_the_legend(work, tmp_path, capsys):
    _, _, photo = work
    torch.manual_seed(1); m3 = UNet(3, 3, width=4, depth=2)
    ckpt = tmp_path/'three.pt'
    torch.save({'model': m3.state_dict(), 'model_config': m3.config, 'size': 32, 'config': {'border': 'class'}}, ckpt)
    predict_files([photo], ckpt, tmp_path/'three', device='cpu')
    assert '3 classes: background, pet, border' in capsys.readouterr().out


def test_overlay_tints_each_class_its_colour():
    im = Image.fromarray(np.full((20, 30, 3), 128, np.uint8))
    cls = np.zeros((20, 30), np.uint8); cls[:, 10:20] = 1; cls[:, 20:] = 2
    pal = palette_for(3)
    o = np.asarray(overlay(im, cls, pal, alpha=1.0))
    assert (o[:, :10] == 128).all()                              # background untinted
    assert (o[:, 10:20] == pal[1]).all() and (o[:, 20:] == pal[2]).all()
    assert (np.asarray(overlay(im, cls, pal)) == np.asarray(overlay(im, cls, pal, inplace=False))).all()
    big = np.asarray(draw_legend(Image.fromarray(o.copy()), ['a', 'b', 'c'], pal))
    assert big.shape == o.shape and (big != o).any()


def test_show_prediction_legend(work):
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    model, _, photo = work
    p = predict(model, photo, 32)
    truth = np.zeros((45, 71), np.uint8); truth[10:30, 10:50] = 2
    ax = show_prediction(photo, p, mask=truth, names=['bg', 'a', 'b', 'c'])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ['bg', 'a', 'b', 'c', 'true outlines']
    ax = show_prediction(photo, p)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ['class 0', 'class 1', 'class 2', 'class 3']
    with pytest.raises(ValueError, match="image's"): show_prediction(photo, p, mask=truth[:10])
    plt.close('all')


@needs_onnx
def test_onnx_of_a_multiclass_model_matches_pytorch(tmp_path):
    import onnx, onnxruntime
    from unet_tutorial.export import export_onnx
    torch.manual_seed(0); model = UNet(3, 4, width=4, depth=2).eval()
    diff = export_onnx(model, tmp_path/'four.onnx', size=32)
    assert diff <= 1e-3
    sess = onnxruntime.InferenceSession(str(tmp_path/'four.onnx'), providers=['CPUExecutionProvider'])
    x = torch.randn(2, 3, 48, 32)
    z = torch.from_numpy(sess.run(None, {'image': x.numpy()})[0])
    assert z.shape == (2, 4, 48, 32)
    with torch.no_grad(): assert (z.softmax(1) - model(x).softmax(1)).abs().max() <= 1e-3   # the probabilities agree
    meta = {p.key: p.value for p in onnx.load(str(tmp_path/'four.onnx')).metadata_props}
    assert 'softmax' in meta['output'] and '(B, 4, H, W)' in meta['output']


def test_unet_predict_of_a_multiclass_checkpoint(work, tmp_path, capsys):
    "The command (lesson A2) calls `predict_files`: a palette mask at the photo's size, and an ONNX file of 4 outputs."
    from unet_tutorial.cli import unet_predict
    _, ckpt, photo = work
    assert unet_predict([str(photo), '--checkpoint', str(ckpt), '--out', str(tmp_path/'cli'), '--device', 'cpu']) == 0
    mask = Image.open(tmp_path/'cli'/'photo_mask.png')
    assert (mask.mode, mask.size) == ('P', (71, 45)) and np.asarray(mask).max() < 4
    assert 'wrote 2 files for 1 image(s)' in capsys.readouterr().out
