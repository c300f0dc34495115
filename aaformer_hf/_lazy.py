"""Registration with timm and transformers without importing them at ``import aaformer_hf``.

Importing timm (with torchvision) and transformers costs seconds, and most of this package (evaluation, data, losses)
needs neither. ``after_import(name, action)`` runs ``action`` now if the library is already imported, else right
after the import statement that brings it in completes. "Completes" is tracked over every module of the watched
packages (the libraries and this package): actions run only when no watched module is part-way through executing,
so an action that imports this package's model code never meets a half-initialised module.

Why the count, when the timm models no longer import transformers (issue #23 asked whether a plain "after the
library's top module ran" hook would do): this package's own modules import timm. ``aaformer_hf.hf`` imports
``aaformer_hf.layers``, whose ``patch_embed`` imports timm; timm completes while ``aaformer_hf.layers`` is still
half-initialised, and an action run at that moment (import ``aaformer_hf.models``) fails on a name ``layers`` has not
bound yet. tests/test_lazy_import.py covers that order (``import aaformer_hf; aaformer_hf.AAformerConfig``).
"""
import importlib
import importlib.abc
import sys
import threading
from typing import Any, Callable, Dict, List, Tuple

__all__ = ['after_import', 'lazy_exports']


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loaders other finders return for watched packages to count executions."""

    def __init__(self) -> None:
        self.watched = {__name__.partition('.')[0]}
        self.pending: List[Tuple[str, Callable[[], None]]] = []
        self.depth = 0
        self.lock = threading.RLock()

    def find_spec(self, fullname, path, target=None):
        if fullname.partition('.')[0] not in self.watched:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is not None and hasattr(loader, 'exec_module') and not getattr(loader, '_counted', False):
            original = loader.exec_module

            def exec_module(module):
                with self.lock:
                    self.depth += 1
                try:
                    original(module)
                finally:
                    with self.lock:
                        self.depth -= 1
                    self.flush()

            loader.exec_module, loader._counted = exec_module, True  # per-module loader instances
        return spec

    def flush(self) -> None:
        """Run the actions whose library is imported, once nothing watched is mid-import."""
        with self.lock:
            if self.depth:
                return
            due = [(name, action) for name, action in self.pending if name in sys.modules]
            self.pending = [(name, action) for name, action in self.pending if name not in sys.modules]
            if not self.pending and self in sys.meta_path:
                sys.meta_path.remove(self)
        for _, action in due:
            action()


_FINDER = _AfterImportFinder()


def after_import(name: str, action: Callable[[], None]) -> None:
    """Run ``action`` once ``name`` (a top-level package) is imported: now if it already is."""
    if name in sys.modules:
        action()
        return
    with _FINDER.lock:
        _FINDER.watched.add(name)
        _FINDER.pending.append((name, action))
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)


def lazy_exports(package: str, exports: Dict[str, str]):
    """``__getattr__`` and ``__dir__`` for a package whose public names (name -> submodule) load on first access."""
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f'.{exports[name]}', package), name)
            setattr(module, name, value)
            return value
        raise AttributeError(f'module {package!r} has no attribute {name!r}')

    def __dir__():
        return sorted(set(vars(module)) | set(exports))

    return __getattr__, __dir__
