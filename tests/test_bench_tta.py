"""bench/bench_tta.py on tiny synthetic pets: per-epoch minutes and validation IoU, `minutes to IoU` lines computed from
the history (first epoch reaching the target, or `not reached`), and the test IoU printed once, last."""
import importlib.util, os, re, subprocess, sys

from unet_tutorial.synthetic import make_synthetic_pets

from conftest import REPO

spec = importlib.util.spec_from_file_location('bench_tta', REPO/'bench'/'bench_tta.py')
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)


def test_minutes_to_is_the_first_epoch_reaching_the_target():
    hist = [dict(seconds=30., iou=0.6), dict(seconds=30., iou=0.76), dict(seconds=60., iou=0.74), dict(seconds=60., iou=0.81)]
    assert bench.minutes_to(hist, 0.75) == 1.0                # after the second epoch: 60 s
    assert bench.minutes_to(hist, 0.80) == 3.0                # 180 s
    assert bench.minutes_to(hist, 0.90) is None


def test_bench_tta_runs_and_prints_its_lines(tmp_path):
    data = make_synthetic_pets(tmp_path/'pets', n_trainval=40, n_test=8, size=32, seed=0)
    env = {**os.environ, 'UNET_TUTORIAL_CACHE': str(tmp_path/'cache')}
    cmd = [sys.executable, str(REPO/'bench'/'bench_tta.py'), '--data', str(data), '--size', '32', '--width', '4',
           '--batch-size', '8', '--epochs', '2', '--progressive', '0.5', '--threads', '1']
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith('$ python bench/bench_tta.py --data') and 'threads 1' in lines[1]
    assert '2 epochs (1 at 16 px)' in lines[2]
    epochs = [l for l in lines if l.startswith('epoch ')]
    assert len(epochs) == 2
    mins = [float(re.search(r'([\d.]+) min', l).group(1)) for l in epochs]
    assert mins[0] <= mins[1]                                   # minutes accumulate
    assert sum(l.startswith('minutes to IoU 0.75 ') for l in lines) == 1
    assert sum(l.startswith('minutes to IoU 0.80 ') for l in lines) == 1
    assert [l for l in lines if l.startswith('test IoU')] == [lines[-2]]   # once, after the minutes
