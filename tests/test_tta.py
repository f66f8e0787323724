"""Test-time augmentation (issue 23, item 5): `tta_logits` averages probabilities over flips, `evaluate_model`,
`predict` and `unet-predict --tta` use it, off means the model's own logits bit for bit, a bad choice of flips or
`--tta` without photos is refused with a message, and tools/measure_tta.py writes its figures."""
import importlib.util, json

import numpy as np
import pytest
import torch
from PIL import Image

from unet_tutorial.cli import unet_predict
from unet_tutorial.experiments import TTA_FLIPS, evaluate_model, tta_logits
from unet_tutorial.inference import mask_from_logits, predict, predict_logits
from unet_tutorial.loaders import get_dls
from unet_tutorial.losses import SegMetrics
from unet_tutorial.model import UNet
from unet_tutorial.synthetic import make_synthetic_pets

from conftest import REPO


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A tiny untrained U-Net (random 3×3 kernels: not flip-equivariant), its checkpoint (trained size 32) and a photo."
    d = tmp_path_factory.mktemp('tta')
    torch.manual_seed(0)
    m = UNet(width=4, depth=2).eval()
    torch.save({'model': m.state_dict(), 'model_config': m.config, 'size': 32, 'epoch': 1, 'history': []}, d/'tiny.pt')
    ramp = np.linspace(0, 255, 90, dtype=np.float32)[None, :, None] * np.ones((60, 1, 3), np.float32)   # dark to bright
    noise = np.random.default_rng(0).integers(0, 60, (60, 90, 3))
    Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8)).save(d/'cat.png')
    return d, m


def test_flips_average_probabilities_over_every_combination():
    torch.manual_seed(1)
    skewed, x = torch.nn.Conv2d(3, 1, 3, padding=1).eval(), torch.randn(2, 3, 8, 12)
    with torch.no_grad():
        p = lambda *d: (skewed(x.flip(d)).flip(d) if d else skewed(x)).sigmoid()
        for flips, passes in [('h', [(), (-1,)]), ('v', [(), (-2,)]), ('hv', [(), (-1,), (-2,), (-1, -2)]),
                              ('vh', [(), (-1,), (-2,), (-1, -2)])]:
            want = torch.stack([p(*d) for d in passes]).mean(0)
            torch.testing.assert_close(tta_logits(skewed, x, flips).sigmoid(), want, atol=1e-6, rtol=0)
        assert TTA_FLIPS == 'h'
        torch.testing.assert_close(tta_logits(skewed, x, True), tta_logits(skewed, x, 'h'), atol=0, rtol=0)
        for off in (False, '', None): assert torch.equal(tta_logits(skewed, x, off), skewed(x))   # bit for bit


def test_sure_pixels_stay_finite_and_low_precision_comes_back_float32():
    "Logits of ±60 (probabilities 1 and 0 in float32) give finite logits of the same sign: no log(0), no clamping."
    class Sure(torch.nn.Module):   # sure of every pixel, and not symmetric: its mirror image's answer is the other way
        def forward(self, x): return torch.tensor([-60., 60, 60, 60]).expand(len(x), 1, 1, 4).to(torch.bfloat16)
    x = torch.zeros(1, 3, 1, 4)
    z = tta_logits(Sure(), x, 'h')
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    assert (z[..., 1:3] > 50).all() and abs(z[..., 0].item()) < 1e-3 and abs(z[..., 3].item()) < 1e-3   # sure twice; one each way


@pytest.mark.parametrize('bad', ['x', 'hh v', 1, ('h',)])
def test_a_bad_choice_of_flips_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"tta: .* give 'h'"): tta_logits(torch.nn.Conv2d(3, 1, 1), torch.zeros(1, 3, 4, 4), bad)


def test_evaluate_model_with_and_without_tta(tmp_path):
    root = make_synthetic_pets(tmp_path/'pets', n_trainval=16, n_test=12, size=32)
    dls = get_dls(root, size=32, batch_size=5, device='cpu', cache=tmp_path/'cache')
    torch.manual_seed(0)
    model = UNet(width=4, depth=2).eval()
    plain, tta = SegMetrics(), SegMetrics()
    with torch.no_grad():
        for x, y in dls.test:
            plain.update(model(x).float(), y)
            z = torch.stack([model(x), model(x.flip(-1)).flip(-1)]).sigmoid().mean(0)   # the two probabilities, averaged
            tta.update(torch.logit(z.double()).float(), y)
    metrics, ious = evaluate_model(model, dls.test)
    assert {k: v for k, v in metrics.items() if k != 'predicted_pet'} == plain.compute() and len(ious) == dls.test.n > 8   # off: what it always computed
    m_tta, ious_tta = evaluate_model(model, dls.test, tta=True)
    assert len(ious_tta) == dls.test.n
    for k, v in tta.compute().items(): assert abs(m_tta[k] - v) < 1e-6, (k, m_tta, tta.compute())
    with pytest.raises(ValueError, match='tta'): evaluate_model(model, dls.test, tta='flip')


def test_predict_with_tta_is_the_averaged_probability(tiny):
    d, m = tiny
    x, hw = predict_logits(m, d/'cat.png', 32)
    z, _ = predict_logits(m, d/'cat.png', 32, tta=True)
    assert z.shape == x.shape == (32, 32) and hw == (60, 90)
    assert (z - x).abs().max() > 1e-3                       # an asymmetric model: the mirror image's answer differs
    p = predict(m, d/'cat.png', 32, tta=True)
    assert p.shape == (60, 90) and 0 <= p.min() <= p.max() <= 1


def test_unet_predict_tta_writes_the_same_files_from_the_averaged_probabilities(tiny, tmp_path, capsys):
    d, m = tiny
    plain_logits, hw = predict_logits(m, d/'cat.png', 32)
    tta_z, _ = predict_logits(m, d/'cat.png', 32, tta=True)
    t = float(torch.sigmoid(plain_logits).median())          # a threshold inside the plain probabilities: masks of both kinds
    want_plain, want_tta = mask_from_logits(plain_logits, hw, t), mask_from_logits(tta_z, hw, t)
    assert (want_plain != want_tta).any(), 'the tiny model is too symmetric for this test'
    args = [str(d/'cat.png'), '--checkpoint', str(d/'tiny.pt'), '--threshold', str(t), '--device', 'cpu']
    assert unet_predict(args + ['--out', str(tmp_path/'plain')]) == 0
    assert unet_predict(args + ['--out', str(tmp_path/'tta'), '--tta']) == 0
    names = lambda f: sorted(p.name for p in f.iterdir())
    assert names(tmp_path/'plain') == names(tmp_path/'tta') == ['cat_mask.png', 'cat_overlay.png']
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path/'plain'/'cat_mask.png')), want_plain)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path/'tta'/'cat_mask.png')), want_tta)


def test_tta_without_photos_is_refused_before_any_work(tiny, tmp_path, capsys):
    d, _ = tiny
    assert unet_predict(['--checkpoint', str(d/'tiny.pt'), '--onnx', str(tmp_path/'m.onnx'), '--tta']) == 2
    err = capsys.readouterr().err
    assert '--tta' in err and 'give photos' in err and 'Traceback' not in err
    assert not (tmp_path/'m.onnx').exists()


def _tool():
    spec = importlib.util.spec_from_file_location('measure_tta', REPO/'tools'/'measure_tta.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod


def test_measure_tool_writes_its_figures_and_keeps_an_existing_file(tiny, tmp_path, monkeypatch):
    d, m = tiny
    monkeypatch.setenv('UNET_TUTORIAL_CACHE', str(tmp_path/'cache'))   # the tool's tensor cache: not the user's
    root = make_synthetic_pets(tmp_path/'pets', n_trainval=20, n_test=8, size=32)
    out = tmp_path/'tta.json'
    _tool().main(['--data', str(root), '--checkpoint', str(d/'tiny.pt'), '--out', str(out), '--threads', '1'])
    rec = json.loads(out.read_text())
    assert rec['threads'] == 1 and 'threads' in rec['hardware'] and rec['command'].startswith('python tools/measure_tta.py')
    n = rec['data']['n']['test']
    dls = get_dls(root, size=32, batch_size=64, device='cpu', augment=False)   # as the tool reads them
    for split in ('valid', 'test'):
        figs = rec['splits'][split]
        assert list(figs) == ['none', 'h', 'hv'] and [figs[k]['passes'] for k in figs] == [1, 2, 4]
        want = evaluate_model(m, getattr(dls, split), tta=False)[0]
        assert abs(figs['none']['iou'] - want['iou']) < 1e-9                 # the plain figure is evaluate_model's
        for k in ('h', 'hv'):
            f = figs[k]
            assert f['helped'] + f['hurt'] + f['same'] == rec['data']['n'][split] and f['gain_95ci'][0] <= f['gain_95ci'][1]
    assert n == dls.test.n > 4 and rec['best_on_valid'] in ('h', 'hv')
    timed = rec['timing_interleaved']
    assert timed['images'] == n and list(timed['seconds']) == ['none', 'h', 'hv'] and timed['ratio']['none'] == 1
    _tool().main(['--data', str(root), '--checkpoint', str(d/'tiny.pt'), '--out', str(out), '--timing-only'])
    again = json.loads(out.read_text())
    assert again['splits'] == rec['splits'] and again['timing_command'].endswith('--timing-only')   # the figures kept
    with pytest.raises(SystemExit, match='not there'): _tool().main(['--data', str(root), '--out', str(tmp_path/'no.json'), '--timing-only'])
    before = out.read_bytes()
    with pytest.raises(SystemExit, match='exists: pass --overwrite'): _tool().main(['--data', str(root), '--out', str(out)])
    assert out.read_bytes() == before
