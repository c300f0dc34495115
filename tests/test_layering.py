"""The package's layering, read from its import statements with ``ast`` (every import, those inside functions too):
no import circle, and nothing imported against the direction

    layers -> models -> hf -> distribution (folders, cards, hub) and applications (cli, embeddings, export, ...)
    data and retrieval (evaluation, reranking, search, losses) and files: know nothing of the models

- data and retrieval never import the model stack (layers, models, hf), transformers or timm's models;
- layers and models never import transformers or hf (the timm models stand alone; hf wraps them).
"""
import ast
import itertools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'aaformer_hf'

MODEL_STACK = ('aaformer_hf.layers', 'aaformer_hf.models', 'aaformer_hf.hf')
DATA_AND_RETRIEVAL = ('aaformer_hf.data', 'aaformer_hf.evaluation', 'aaformer_hf.reranking', 'aaformer_hf.search',
                      'aaformer_hf.losses', 'aaformer_hf.files')
# imports that break a rule today, each with why; the list may only shrink
ALLOWED = {
    # an application living in data/ until the package is grouped by role (issue #23): `aaformer-hf parse` runs a
    # transformers segmentation model over a dataset
    ('aaformer_hf.data.write_parsing', 'transformers'),
}


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
    assert 'aaformer_hf.folders' in graph['aaformer_hf.cards']
    assert _violations({'aaformer_hf.evaluation': {'aaformer_hf.models.aaformer'}}, DATA_AND_RETRIEVAL, MODEL_STACK)
