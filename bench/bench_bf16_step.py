"""One training step of the Exp 1 U-Net (width 16, batch 8, 128 px, channels-last, 1 thread) in fp32 and in bf16 autocast.

    python bench/bench_bf16_step.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_bf16_step.py   # the same CPU as an AVX2-only one

Prints the CPU kind and bf16's speed as a multiple of fp32's (best of two steps each, after a warm-up step): above 1
where bf16 is native, far below 1 where PyTorch falls back to a slow path. Nothing quotes its figures: one step is
a quick look at your own machine; the speed-ups the course quotes are those of the idle benchmarks in results/bench/.
"""
import time, torch
from unet_tutorial.model import build_model
from unet_tutorial.core import cpu_kind
torch.set_num_threads(1); torch.manual_seed(0)
m = build_model(1, width=16).to(memory_format=torch.channels_last)
x = torch.randn(8, 3, 128, 128).to(memory_format=torch.channels_last)
def step(bf16):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16): y = m(x)
    y.float().mean().backward()
for bf16 in (False, True): step(bf16)
res = {}
for bf16 in (False, True, False, True):
    t = time.perf_counter(); step(bf16); res.setdefault(bf16, []).append(time.perf_counter() - t)
f, b = min(res[False]), min(res[True])
print(f'{cpu_kind()}: fp32 {8/f:.1f} img/s, bf16 {8/b:.1f} img/s, bf16/fp32 {f/b:.2f}x')
