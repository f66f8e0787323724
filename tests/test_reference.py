"""The reference model shipped in the package: it loads, it is small, and on the real test split it scores what its
record says (within 0.01 IoU), and `unet-predict` uses it when no checkpoint is given."""

import torch

from unet_tutorial.config import RunConfig
from unet_tutorial.loaders import get_dls
from unet_tutorial.experiments import evaluate_model
from unet_tutorial.cli import unet_predict
from unet_tutorial.data import trimap_to_mask
from unet_tutorial.reference import reference_checkpoint, reference_model
import numpy as np
from PIL import Image

from conftest import PETS as ROOT, needs_pets


def test_reference_loads_and_is_small():
    path = reference_checkpoint()
    assert path.stat().st_size <= 4 * 2**20, f'{path} is {path.stat().st_size / 2**20:.1f} MiB, more than 4 MiB'
    model, rec = reference_model('cpu')
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())
    cfg = RunConfig.from_dict(rec['config'])          # the record holds the configuration it was trained with
    assert model.config['width'] == cfg.width and model.config['depth'] == cfg.depth
    assert 0.5 < rec['test']['iou'] <= 1 and rec['command'].startswith('unet-compare')
    with torch.no_grad(): out = model(torch.zeros(1, 3, cfg.size, cfg.size))
    assert out.shape == (1, 1, cfg.size, cfg.size)


@needs_pets
def test_reference_scores_its_record_on_the_test_split():
    model, rec = reference_model('cpu')
    cfg = RunConfig.from_dict(rec['config'])
    old = torch.get_num_threads(); torch.set_num_threads(2)
    try:
        dls = get_dls(ROOT, size=cfg.size, batch_size=64, border=cfg.border, device='cpu',
                      drop_bad=cfg.drop_bad_trimaps)   # its record predates the field: False, every trimap
        metrics, ious = evaluate_model(model, dls.test)
    finally: torch.set_num_threads(old)
    assert len(ious) == dls.test.n == 3669
    assert abs(metrics['iou'] - rec['test']['iou']) <= 0.01, (metrics, rec['test'])
    assert abs(metrics['pixel_accuracy'] - rec['test']['pixel_accuracy']) <= 0.01, (metrics, rec['test'])


@needs_pets
def test_unet_predict_without_checkpoint_uses_the_reference(tmp_path, capsys):
    "`unet-predict photos --out preds`: no checkpoint needed; masks have each photo's size and cover the pets."
    base, photos, truths = ROOT/'oxford-iiit-pet', tmp_path/'photos', {}
    photos.mkdir()
    names = (base/'annotations'/'test.txt').read_text().split()[::4][:8]     # 8 test images (4 columns a line)
    for i, name in enumerate(names):
        size = (333 + 10 * i, 257 + 7 * i)                                     # odd sizes, none of them square
        Image.open(base/'images'/f'{name}.jpg').convert('RGB').resize(size, Image.BICUBIC).save(photos/f'{name}.jpg')
        tri = np.array(Image.open(base/'annotations'/'trimaps'/f'{name}.png').resize(size, Image.NEAREST))
        truths[name] = np.asarray(trimap_to_mask(tri)) == 1
    assert unet_predict([str(p) for p in sorted(photos.iterdir())] + ['--out', str(tmp_path/'preds')]) == 0
    assert 'reference U-Net' in capsys.readouterr().out
    ious = []
    for name, pet in truths.items():
        mask = np.asarray(Image.open(tmp_path/'preds'/f'{name}_mask.png')) > 0
        assert mask.shape == pet.shape, (name, mask.shape, pet.shape)        # the photo's own size
        ious.append((mask & pet).sum() / (mask | pet).sum())
    assert np.median(ious) > 0.6, f'the reference model covers the pets poorly: IoUs {np.round(ious, 2)}'
