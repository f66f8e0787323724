"""Checks whose arithmetic must not depend on the CPU kind (issue 20, item 24): on an Intel Xeon with AMX, lesson 15's
float32 correlation over ~500k pixels came out 1.0003 in one run and 0.9997 in the next. Sums that long are
computed in float64, so a tolerance of 1e-9 holds on every kind."""
import torch
from unet_tutorial.explore import mask_alignment

def test_24_mask_alignment_is_exact_for_a_perfect_channel():
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(64, 1, 128, 128, generator=g) > 0.6).to(torch.uint8)   # 1M pixels, as in lesson 15
    al = mask_alignment({'pet': masks.float(), 'scaled': masks.float() * 1000 + 10,   # float32: 1.00049 here
                         'inverted': 1 - masks.float()}, masks)
    for k, v in al.items(): assert abs(v - 1.0) < 1e-9, (k, v)

def test_24_mask_alignment_of_noise_is_small():
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(8, 1, 64, 64, generator=g) > 0.5).to(torch.uint8)
    al = mask_alignment({'noise': torch.rand(8, 4, 64, 64, generator=g), 'half': torch.rand(8, 2, 32, 32, generator=g)}, masks)
    assert al['noise'] < 0.05 and al['half'] < 0.05, al
