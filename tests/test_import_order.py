"""Issue 21: lesson order = import order, tested. CONTRIBUTING.md's "Architecture" table lists the modules in the
order a learner meets them; a module imports only modules above it there (no cycles), and a lesson's cells import
only modules of lessons above its own. The order is read from that table, the one place it is written.

Imports are read with `ast`, never by importing: `from .x import`, `from unet_tutorial.x import`, `import
unet_tutorial.x`, at any depth (inside functions too)."""
import ast, json, re
from pathlib import Path

from conftest import REPO as ROOT
PKG, NBS = ROOT/'unet_tutorial', ROOT/'nbs'
GENERATED = {'__init__', '_modidx'}   # nbdev's: not modules of a lesson


def module_order(text:str) -> list:
    "The modules of the table under '## Architecture' in CONTRIBUTING.md, in order: ['core', 'data', ...]."
    section = text.split('## Architecture', 1)[1].split('\n## ', 1)[0]
    order = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')] if line.lstrip().startswith('|') else []
        if len(cells) >= 2: order += [m for m in re.findall(r'`(\w+)\.py`', cells[1]) if m not in order]
    return order


ORDER = module_order((ROOT/'CONTRIBUTING.md').read_text())
RANK = {m: i for i, m in enumerate(ORDER)}


def our_imports(source:str, package:str='unet_tutorial') -> list:
    "(line, module) for every import of one of the package's modules in `source`, at any depth."
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: found.append((node.lineno, node.module.split('.')[0]))
            elif node.level == 1: found += [(node.lineno, a.name) for a in node.names]           # from . import x
            elif node.level == 0 and node.module and node.module.split('.')[0] == package:
                parts = node.module.split('.')
                if len(parts) > 1: found.append((node.lineno, parts[1]))
                else: found += [(node.lineno, a.name) for a in node.names]                       # from unet_tutorial import x
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split('.')
                if parts[0] == package and len(parts) > 1: found.append((node.lineno, parts[1]))
    return sorted(found)


def upward(name:str, source:str, rank:dict=None) -> list:
    "Messages for each import in module `name`'s `source` of a module at or below it in the order (or not in it)."
    rank = RANK if rank is None else rank
    bad = []
    for line, mod in our_imports(source):
        if mod not in rank: bad.append(f"{name}.py:{line} imports {mod}, which CONTRIBUTING's table does not list")
        elif mod == name or rank[mod] >= rank[name]:
            bad.append(f"{name}.py:{line} imports {mod}, which is not above it in CONTRIBUTING's table")
    return bad


def cycles(graph:dict) -> list:
    "Every import cycle of `graph` ({module: set of modules it imports}) as a list of modules, first repeated last."
    found, state = [], {}
    def visit(m, path):
        state[m] = 'open'
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 'open': found.append(path[path.index(n):] + [n])
            elif n not in state: visit(n, path + [n])
        state[m] = 'done'
    for m in sorted(graph):
        if m not in state: visit(m, [m])
    return found


def modules() -> dict:
    "{module name: source} of the package's modules."
    return {p.stem: p.read_text() for p in sorted(PKG.glob('*.py')) if p.stem not in GENERATED}


# --- the package: no allowlist ---------------------------------------------------------------------------------------

def test_every_module_is_listed_once():
    assert len(ORDER) == len(set(ORDER)) and ORDER[0] == 'core', ORDER
    assert sorted(ORDER) == sorted(modules()), (sorted(set(modules()) - set(ORDER)), sorted(set(ORDER) - set(modules())))


def test_modules_import_only_modules_above_them():
    bad = [msg for name, src in modules().items() for msg in upward(name, src)]
    assert not bad, '\n'.join(bad)


def test_core_imports_nothing_of_ours():
    assert our_imports(modules()['core']) == []


def test_no_import_cycles():
    graph = {name: {m for _, m in our_imports(src)} for name, src in modules().items()}
    assert cycles(graph) == []


def test_the_checker_catches_an_upward_import():
    "A fabricated module: an import at the top, one inside a function, one by absolute name; each is reported."
    src = ("from .core import BadInput\n"
           "def f():\n    from .trainer import Trainer\n    import unet_tutorial.report\n    return Trainer\n"
           "from unet_tutorial.inference import load_model\n")
    assert [m for _, m in our_imports(src)] == ['core', 'trainer', 'report', 'inference']
    bad = upward('model', src)
    assert len(bad) == 3 and all('not above it' in b for b in bad), bad
    assert any('model.py:3 imports trainer' in b for b in bad), bad
    assert upward('model', "from .model import UNet\n")                          # itself counts as not above
    assert upward('core', "from .nowhere import x\n")[0].endswith('does not list')
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c', 'a']]
    assert module_order("## Architecture\n\n| nb | module | job |\n|---|---|---|\n| `x` | `a.py`, `b.py` | . |\n"
                        "| `y` | `c.py` | . |\n\n## Next\n| `z` | `d.py` | . |\n") == ['a', 'b', 'c']


# --- the lessons: a commented allowlist that may only shrink -----------------------------------------------------------

# (notebook, module): a lesson that imports, in its demos and tests, a module of a later lesson, with the reason.
# The test fails when an entry is no longer needed, so the list only shrinks.
ALLOWED = {
    # the data lesson tests its readers on, and falls back to, lesson 02's synthetic pets, whose lesson in turn reads
    # them with lesson 01's functions: one of the two has to come first, and the real data comes first for a learner
    ('01_data', 'synthetic'):      "tests and, without the real data, runs on lesson 02's synthetic pets",
}


def lesson_modules() -> dict:
    "{notebook stem: the module its `#| default_exp` names} for nbs/NN*_*.ipynb."
    out = {}
    for p in sorted(NBS.glob('[0-9A-Z][0-9]*_*.ipynb')):
        for c in json.loads(p.read_text())['cells']:
            if m := re.search(r'^#\|\s*default_exp\s+(\w+)', ''.join(c['source']), re.M): out[p.stem] = m.group(1); break
    return out


IMPORT_LINE = re.compile(r'^\s*(?:from\s+unet_tutorial\.(\w+)[\w.]*\s+import|import\s+unet_tutorial\.(\w+))', re.M)

def lesson_imports(nb:Path) -> set:
    "The package's modules that `nb`'s code cells import (`from unet_tutorial.x import`, `import unet_tutorial.x`)."
    cells = json.loads(nb.read_text())['cells']
    return {a or b for c in cells if c['cell_type'] == 'code' for a, b in IMPORT_LINE.findall(''.join(c['source']))}


def lesson_violations() -> set:
    "(notebook, module) for every import of a module that is not above the lesson's own module in the table."
    bad = set()
    for stem, own in lesson_modules().items():
        for mod in lesson_imports(NBS/f'{stem}.ipynb'):
            if mod not in RANK or own not in RANK or RANK[mod] >= RANK[own] and mod != own: bad.add((stem, mod))
    return bad


def test_lesson_files_are_numbered_in_the_table_order():
    "Sorted by file name (00_core ... 21_own_data, then the appendix A2_cli), the lessons' modules come in the table's order."
    mods = list(lesson_modules().items())
    ranks = [RANK.get(m, -1) for _, m in mods]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks), [f"{stem}: {m}" for stem, m in mods]
    text = (ROOT/'CONTRIBUTING.md').read_text().split('## Architecture', 1)[1].split('\n## ', 1)[0]
    named = re.findall(r'^\| `(\w+)` \| `(\w+)\.py` \|', text, re.M)
    assert named == mods, (named, mods)   # the table's notebook column names the files as they are


def test_every_lesson_module_is_listed():
    assert set(lesson_modules().values()) <= set(ORDER), set(lesson_modules().values()) - set(ORDER)


def test_lessons_import_only_earlier_lessons():
    new = sorted(lesson_violations() - set(ALLOWED))
    assert not new, f"lessons importing modules of later lessons (not in ALLOWED): {new}"


def test_the_allowlist_only_shrinks():
    stale = sorted(set(ALLOWED) - lesson_violations())
    assert not stale, f"no longer needed: remove these from ALLOWED in {Path(__file__).name}: {stale}"
