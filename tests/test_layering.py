"""The package's layering, read from its import statements with ``ast`` (every import, those inside functions too):
no import circle, and nothing imported against the direction

    data, reid (retrieval maths and the identity loss), files      know nothing of the models
    layers -> models -> hf -> hub (folders, cards, push) -> apps (cli, extract, export, visualize, ...)

- every import goes down (or sideways within a folder): apps import anything, nothing imports apps; hub imports
  the model stack, the model stack never imports hub; and so on down to layers;
- data and reid never import the model stack, transformers or timm's models;
- layers and models never import transformers or hf (the timm models stand alone; hf wraps them).
"""
import ast
import itertools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'aaformer_hf'

MODEL_STACK = ('aaformer_hf.layers', 'aaformer_hf.models', 'aaformer_hf.hf')
DATA_AND_RETRIEVAL = ('aaformer_hf.data', 'aaformer_hf.reid', 'aaformer_hf.files')
# the folders from the bottom up: a module may import from its own rank and those below only
RANKS = {'aaformer_hf.files': 0, 'aaformer_hf.data': 0, 'aaformer_hf.reid': 0, 'aaformer_hf.layers': 1,
         'aaformer_hf.models': 2, 'aaformer_hf.hf': 3, 'aaformer_hf.hub': 4, 'aaformer_hf.apps': 5}
# imports that break a rule, each with why; the set may only shrink
ALLOWED = set()


def _modules():
    modules = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path, modules) -> set:
    """Every module ``name`` imports (resolved relative imports; ``from X import y`` also counts X.y when a module)."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition('.')[0]
            target = (f'{base}.{node.module}' if node.module else base) if node.level else node.module
            found.add(target)
            found.update(f'{target}.{alias.name}' for alias in node.names if f'{target}.{alias.name}' in modules)
    return found


@pytest.fixture(scope='module')
def graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def _violations(graph, sources, forbidden):
    return sorted((module, target) for module, targets in graph.items() if _within(module, sources)
                  for target in targets if _within(target, forbidden) and (module, _top(target)) not in ALLOWED)


def _top(target: str) -> str:
    return target if target.startswith('aaformer_hf') else target.partition('.')[0]


def _rank(name: str):
    return next((rank for folder, rank in RANKS.items() if _within(name, (folder,))), None)


def _upward(graph):
    return sorted((module, target) for module, targets in graph.items() for target in targets
                  if _rank(module) is not None and _rank(target) is not None and _rank(target) > _rank(module))


def test_imports_go_down(graph):
    assert not _upward(graph)


def test_every_module_has_a_place(graph):
    """A new folder or top-level module must be given a rank (or it would escape the rule above)."""
    top_level = {'aaformer_hf', 'aaformer_hf.__main__', 'aaformer_hf._lazy', 'aaformer_hf._moved'}
    assert sorted(name for name in graph if _rank(name) is None and name not in top_level) == []


def test_data_and_retrieval_know_nothing_of_the_models(graph):
    assert not _violations(graph, DATA_AND_RETRIEVAL, MODEL_STACK + ('transformers', 'timm.models', 'timm.layers'))


def test_the_timm_models_need_nothing_of_transformers(graph):
    assert not _violations(graph, ('aaformer_hf.layers', 'aaformer_hf.models'), ('transformers', 'aaformer_hf.hf'))


def test_no_import_circle(graph):
    internal = {module: {t for t in targets if t in graph and t != module} for module, targets in graph.items()}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []
    counter = itertools.count()

    def visit(module):  # Tarjan's strongly connected components
        index[module] = low[module] = next(counter)
        stack.append(module), on_stack.add(module)
        for target in internal[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in internal:
        if module not in index:
            visit(module)
    assert not circles


def test_the_rules_see_what_they_guard(graph):
    """The checks above would pass on an empty graph: make sure they read the real one."""
    assert 'aaformer_hf.hf.timm_backed' in graph['aaformer_hf.hf.configuration_aaformer']  # a relative import
    assert 'transformers' in graph['aaformer_hf.hf.modeling_aaformer']
    assert 'aaformer_hf.hub.folders' in graph['aaformer_hf.hub.cards']
    assert _violations({'aaformer_hf.reid.evaluation': {'aaformer_hf.models.aaformer'}}, DATA_AND_RETRIEVAL, MODEL_STACK)


@pytest.mark.parametrize('old, new', [('aaformer_hf.evaluation', 'aaformer_hf.reid.evaluation'),
                                      ('aaformer_hf.embeddings', 'aaformer_hf.apps.extract'),
                                      ('aaformer_hf.data.write_parsing', 'aaformer_hf.apps.write_parsing')])
def test_old_import_paths_give_the_new_module_and_name_it(old, new):
    """Written in a fresh interpreter: the old name must not already be cached by another test's import."""
    import subprocess
    import sys

    code = (f'import warnings, importlib\nwarnings.simplefilter("error")\n'
            f'try:\n    importlib.import_module({old!r})\nexcept FutureWarning as e:\n    print("warned:", e)\n'
            f'warnings.simplefilter("ignore")\nold = importlib.import_module({old!r})\n'
            f'print(old is importlib.import_module({new!r}), old.__name__, old.__spec__.name)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert f'warned: {old} moved to {new}' in out
    assert out.strip().endswith(f'True {new} {new}')  # one module object, its own name and spec kept


def test_python_m_on_an_old_path_names_the_new_one():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, '-m', 'aaformer_hf.cards', '--help'], capture_output=True, text=True)
    assert run.returncode != 0 and 'run python -m aaformer_hf.hub.cards' in run.stderr
