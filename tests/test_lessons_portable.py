"""Every lesson runs where learners run it (Colab, any folder) after `pip install unet_tutorial`: its Colab cell
installs the package version that matches the notebook, and it needs nothing from the dev tools or the repo."""
import configparser, json, re

import pytest

from conftest import REPO as root
lessons = [root/'nbs'/'tour.ipynb'] + sorted((root/'nbs').glob('[0-9A-Z][0-9]*_*.ipynb'))   # the tour first, as a learner

def _settings():
    ini = configparser.ConfigParser(); ini.read(root/'settings.ini')
    return ini['DEFAULT']

def _version(): return _settings()['version']

def _code(nb):
    return [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']

def test_there_are_lessons():
    assert len(lessons) >= 8, [p.name for p in lessons]

@pytest.mark.parametrize('nb', lessons, ids=lambda p: p.name)
def test_colab_cell_pins_settings_version(nb):
    "One visible cell installs `unet_tutorial==<settings.ini version>` in Colab only: a release bump must update it."
    # a cell that runs pip (`%pip`/`!pip`), not one whose messages tell the reader to (`pip install unet_tutorial[onnx]`)
    pins = [(i, c) for i, c in enumerate(_code(nb)) if re.search(r'[%!]pip install', c) and 'unet_tutorial' in c]
    assert len(pins) == 1, f"{nb.name}: expected one Colab install cell, found {len(pins)}"
    i, cell = pins[0]
    versions = re.findall(r'unet_tutorial==([\w.+-]+)', cell)
    assert versions == [_version()], f"{nb.name}: installs {versions or 'an unpinned unet_tutorial'}, settings.ini has {_version()}"
    # PyPI lacks a version until it is released: the same line falls back to the repository's tag of that version
    tags = re.findall(r'\|\| pip install -q git\+(\S+)@v([\w.+-]+)', cell)
    assert tags == [(_settings()['git_url'], _version())], \
        f"{nb.name}: the fallback installs {tags}, settings.ini has {_settings()['git_url']} at v{_version()}"
    assert "if 'google.colab' in sys.modules:" in cell, f"{nb.name}: the install must run in Colab only"
    assert not cell.startswith('#| hide'), f"{nb.name}: the Colab cell must be visible"
    assert i < 3, f"{nb.name}: the Colab cell must come first (it is code cell {i})"

def test_one_version_everywhere():
    "settings.ini's version is the package's `__version__` and the CHANGELOG's newest heading (what the Colab cells pin)."
    init = re.search(r'__version__ = "(.+)"', (root/'unet_tutorial'/'__init__.py').read_text())[1]
    assert init == _version(), f"unet_tutorial/__init__.py says {init}, settings.ini {_version()}: run nbdev_export"
    newest = re.search(r'^## (\S+)', (root/'CHANGELOG.md').read_text(), re.M)[1]
    assert newest == _version(), f"CHANGELOG.md's newest version is {newest}, settings.ini's {_version()}"

@pytest.mark.parametrize('nb', lessons, ids=lambda p: p.name)
def test_no_dev_only_imports(nb):
    "nbdev is a dev dependency: no lesson imports it outside the guarded export cell."
    cells = _code(nb)
    assert not any('nbdev.showdoc' in c for c in cells), f"{nb.name} imports nbdev.showdoc"
    for c in cells[:-1]: assert 'import nbdev' not in c, f"{nb.name}: nbdev imported before the last cell"
    last = cells[-1]
    assert 'nbdev_export(' in last and "if os.path.exists('../settings.ini'):" in last, \
        f"{nb.name}: the last cell must export only inside the project"

@pytest.mark.parametrize('nb', lessons, ids=lambda p: p.name)
def test_cuda_cells_skip_themselves_on_a_cpu(nb):
    "Jupyter's Run All ignores `#| cuda`: a GPU-only cell must check `torch.cuda.is_available()` itself."
    bad = [c.splitlines()[1] if len(c.splitlines()) > 1 else c for c in _code(nb)
           if c.startswith('#| cuda') and 'torch.cuda.is_available()' not in c]
    assert not bad, f"{nb.name}: `#| cuda` cells that would stop Run All on a CPU, starting: {bad}"

@pytest.mark.parametrize('nb', lessons, ids=lambda p: p.name)
def test_guarded_cuda_cells_run_on_a_cpu(nb, capsys):
    "On a machine without a GPU each guarded cell runs and only says it skipped (its body is never reached)."
    import torch
    if torch.cuda.is_available(): pytest.skip('a GPU is present: the cells run for real in the notebook tests')
    for c in _code(nb):
        if c.startswith('#| cuda'): exec(compile(c, nb.name, 'exec'), {'torch': torch})
    out = capsys.readouterr().out
    assert out.count('No GPU here') == sum(c.startswith('#| cuda') for c in _code(nb)), out

SWITCH = 'RUN_LONG'

@pytest.mark.parametrize('nb', lessons, ids=lambda p: p.name)
def test_slow_cells_wait_for_the_lessons_switch(nb):
    "Jupyter's Run All ignores `#| slow`: a long cell runs only when its lesson's one switch, set near the top, says so."
    cells = _code(nb)
    slow = [i for i, c in enumerate(cells) if c.startswith('#| slow')]
    if not slow: return
    sets = [i for i, c in enumerate(cells) if re.search(rf'^{SWITCH} = (True|False)\b', c, re.M)]
    assert len(sets) == 1, f"{nb.name}: `#| slow` cells need one cell that sets `{SWITCH} = True/False`, found {len(sets)}"
    assert sets[0] < 8 and sets[0] < slow[0], f"{nb.name}: `{SWITCH}` must be set near the top (it is set in code cell {sets[0]})"
    says = cells[sets[0]]
    assert re.search(r'\d.*(hour|minute|\d s\b)', says) and re.search(r'results/|printed|bench', says), \
        f"{nb.name}: the switch's comment must say how long the long cells take, and where that figure comes from"
    bad = [cells[i].splitlines()[1] for i in slow if not re.search(rf'^\s*(if|elif)\b.*\b{SWITCH}\b', cells[i], re.M)
           or (f'{SWITCH} is False' not in cells[i] and not re.search(rf'^\s*if {SWITCH} and\b', cells[i], re.M))]
    assert not bad, f"{nb.name}: `#| slow` cells not behind `{SWITCH}` (or not saying what they skipped), starting: {bad}"
