"""Writing files so that a reader never sees half of one."""
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ['atomic_path']


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], suffix: str = '') -> Iterator[Path]:
    """A temporary path beside ``path`` to write to: it replaces ``path`` when the block completes and is removed
    when it fails, so ``path`` is always the old file or the whole new one. ``suffix``: for writers that need one."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
