"""The bf16 speed-up is quoted one way, from the committed idle benchmarks (issue 22, item 11).

Every sentence of the lessons' prose or the README that speaks of bf16 and states a speed as `N.N×` or `N.N times`
must state a figure of `results/bench/*.txt` or the ratio of two of them (at the precision written), so that no
speed-up from a run nobody committed (a single step, a busy machine) comes back. Reads files only; runs nothing.
"""
import json, re
from itertools import permutations

from conftest import REPO

SPEED = re.compile(r'(\d+\.\d+) ?(?:×|x\b|times)')

def bench_figures():
    "The figures of the committed benchmarks' summaries: images/s (mean of epochs 2-3), their multiples, the speedup."
    lines = [l for p in (REPO/'results'/'bench').glob('*.txt') for l in p.read_text().splitlines()
             if 'mean of epochs' in l or l.startswith('speedup')]
    assert lines, 'results/bench/*.txt hold no summary line (`... images/s (mean of epochs 2-3)`, `speedup X`)'
    return {float(x) for l in lines for x in re.findall(r'\d+\.\d+', l)} - {2.0, 3.0}   # not the "2-3" of the epochs

def prose():
    "(where, text) of the README and of every markdown cell of the notebooks."
    yield 'README.md', (REPO/'README.md').read_text()
    for nb in sorted((REPO/'nbs').glob('*.ipynb')):
        for i, c in enumerate(json.loads(nb.read_text())['cells']):
            if c['cell_type'] == 'markdown': yield f'{nb.name} cell {i}', ''.join(c['source'])

def unsourced(text, figures):
    "The speeds stated in `text`'s bf16 sentences that are neither a benchmark figure nor a ratio of two."
    ratios = [a / b for a, b in permutations(figures, 2)]
    bad = []
    for sentence in re.split(r'(?<=[.!?])\s+(?=[A-Z`(])', text.replace('\n', ' ')):
        if not re.search(r'bf16|bfloat16', sentence): continue
        for s in SPEED.findall(sentence):
            digits = len(s.split('.')[1])
            if float(s) not in figures and not any(round(r, digits) == float(s) for r in ratios): bad.append(s)
    return bad

def test_bf16_speeds_come_from_the_committed_benchmarks():
    figures = bench_figures()
    assert {91.3, 41.8} <= figures, 'results/bench/cpu_native_bf16.txt no longer holds the figures the prose quotes'
    bad = {where: b for where, text in prose() if (b := unsourced(text, figures))}
    assert not bad, f'bf16 speeds that no file of results/bench/ holds (quote the benchmark, or commit its output): {bad}'

def test_the_figures_the_course_had_are_caught():
    "The per-step figures the README once quoted (bf16 at 0.10x and 1.62x of fp32) are in no benchmark file."
    assert unsourced('bf16 ran at 0.10× the speed of fp32, against 1.62× without the caps.', bench_figures()) == ['0.10', '1.62']

def test_the_rule_itself():
    figures = {91.3, 41.8, 27.3}
    assert unsourced('bf16 trained 2.2 times as fast as fp32 (91.3 against 41.8 images/s).', figures) == []
    assert unsourced('With bf16 the default reached 91.3 images/s, 3.34× the plain loop.', figures) == []
    assert unsourced('bf16 ran at 0.10× the speed of fp32 in one step, against 1.62× without the caps.', figures) == ['0.10', '1.62']
    assert unsourced('Width 32 is about 3.5 times slower. It has no bf16 in this sentence.', figures) == []
