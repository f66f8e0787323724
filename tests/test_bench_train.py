"""Smoke test of bench/bench_train.py on a tiny synthetic copy of the pets: it runs both loops and ends with `speedup X`."""
import os, re, subprocess, sys

from unet_tutorial.synthetic import make_synthetic_pets

from conftest import REPO as ROOT


def test_bench_train_runs(tmp_path):
    data = make_synthetic_pets(tmp_path/'pets', n_trainval=40, n_test=8, size=32, seed=0)
    env = {**os.environ, 'UNET_TUTORIAL_CACHE': str(tmp_path/'cache')}
    cmd = [sys.executable, str(ROOT/'bench'/'bench_train.py'), '--data', str(data), '--device', 'cpu', '--size', '32',
           '--width', '4', '--depth', '2', '--batch-size', '8', '--epochs', '1', '--workers', '0', '--threads', '1']
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r'speedup \d+\.\d+', lines[-1]), out.stdout
    assert float(lines[-1].split()[1]) > 0
    assert any(l.startswith('baseline images/s') for l in lines) and any(l.startswith('trainer  images/s') for l in lines)
