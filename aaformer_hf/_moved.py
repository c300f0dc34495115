"""Import paths from before the package was grouped by role (issue #23) keep working, with a warning naming the new
path: ``import aaformer_hf.evaluation`` gives the module ``aaformer_hf.reid.evaluation`` itself (one module object,
so patching either name patches both). ``python -m`` on an old path fails naming the new one."""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {  # old module -> where it lives now
    'aaformer_hf.evaluation': 'aaformer_hf.reid.evaluation',
    'aaformer_hf.reranking': 'aaformer_hf.reid.reranking',
    'aaformer_hf.search': 'aaformer_hf.reid.search',
    'aaformer_hf.losses': 'aaformer_hf.reid.losses',
    'aaformer_hf.cards': 'aaformer_hf.hub.cards',
    'aaformer_hf.folders': 'aaformer_hf.hub.folders',
    'aaformer_hf.cli': 'aaformer_hf.apps.cli',
    'aaformer_hf.embeddings': 'aaformer_hf.apps.extract',
    'aaformer_hf.export': 'aaformer_hf.apps.export',
    'aaformer_hf.visualize': 'aaformer_hf.apps.visualize',
    'aaformer_hf.demo': 'aaformer_hf.apps.demo',
    'aaformer_hf.data.write_parsing': 'aaformer_hf.apps.write_parsing',
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds only the old names; loading one imports the new module and returns it under the old name too."""

    def find_spec(self, fullname, path, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        warnings.warn(f'{spec.name} moved to {MOVED[spec.name]}; import it from there', FutureWarning, stacklevel=3)
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__  # the import system now sets the module's __spec__ to the old name's
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state  # the new module has run already: only its own spec back

    def get_code(self, fullname):  # what `python -m old.name` asks for
        raise ImportError(f'{fullname} moved to {MOVED[fullname]}: run python -m {MOVED[fullname]}')


def install() -> None:
    if not any(isinstance(finder, _MovedModule) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModule())  # last: the files are gone, so no other finder answers these names
