"""Writing files, for the commands and the training example alike: one overwrite rule, checked before any work; files
that a reader never sees half written, created with the user's umask; a lock that a second writer meets at once.
Errors name the user's path, never a temporary one."""
import contextlib
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

__all__ = ['atomic_path', 'cache_root', 'check_output', 'hold_lock', 'read_lock', 'LockedError']


def cache_root() -> Path:
    """The package's cache folder: ``$AAFORMER_HF_CACHE``, by default ``~/.cache/aaformer-hf`` (``$XDG_CACHE_HOME``
    if set)."""
    root = os.environ.get('AAFORMER_HF_CACHE') or Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache'),
                                                         'aaformer-hf')
    return Path(root)


def check_output(path: Union[str, Path], overwrite: bool, flag: str = '--overwrite') -> Path:
    """Before any work: ``path`` can be written. An existing file is replaced only with ``overwrite`` (the error
    names ``flag``, the option that says so); its folder must exist; a folder in its place is an error."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f'{path}: is a folder; give a file name')
    if path.exists() and not overwrite:
        raise FileExistsError(f'{path}: already exists (pass {flag} to replace it)')
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f'{path}: its folder {parent} does not exist')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f'{path}: its folder {parent} is not writable')
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], suffix: str = '') -> Iterator[Path]:
    """A temporary path beside ``path`` to write to: it replaces ``path`` when the block completes and is removed
    when it fails, so ``path`` is always the old file or the whole new one. The new file gets the permissions a
    plain ``open`` would give (the umask's), not the private ones of a temporary file. An OSError while writing (a
    full disk) names ``path``. ``suffix``: for writers that need one."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f'{path}: its folder {path.parent} does not exist')
    handle, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as error:
            if str(path) in str(error):
                raise
            raise OSError(f'{path}: not written ({error.strerror or error})') from error
    finally:
        Path(tmp).unlink(missing_ok=True)


class LockedError(RuntimeError):
    """Another live process holds the lock; the message names it and the lock file."""


def read_lock(lock: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """What the holder of ``lock`` wrote into it (host, pid, its ``info``) and a ``description``, while its process
    lives (or lives on another host, which cannot be checked); None when nobody holds it."""
    lock = Path(lock)
    try:
        owner = json.loads(lock.read_text())
        host, pid = owner['host'], int(owner['pid'])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return {'description': 'an unreadable lock file'}
    if host != socket.gethostname():
        return {**owner, 'description': f'pid {pid} on host {host}'}  # cannot tell whether it still runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return {**owner, 'description': f'pid {pid}'}


@contextlib.contextmanager
def hold_lock(lock: Union[str, Path], what: str, info: Optional[Dict[str, Any]] = None, by: str = 'another process',
              hint: str = 'wait for it, or delete the lock file if that process is gone') -> Iterator[Path]:
    """Hold ``lock`` (a file: host, pid and ``info``) for the block. A live holder stops this one at once
    (``LockedError``: "``what`` is in use by ``by`` (its pid; the lock file); ``hint``"); a lock left by a process
    that is gone (a killed run) is taken over, with a warning."""
    lock = Path(lock)
    owner = {'host': socket.gethostname(), 'pid': os.getpid(), **(info or {})}
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = read_lock(lock)
            if holder is not None:
                raise LockedError(f'{what} is in use by {by} ({holder["description"]}; lock file {lock}); {hint}'
                                  ) from None
            with contextlib.suppress(OSError):
                logging.getLogger(__name__).warning('taking over %s: the process that held it (%s) is gone', lock,
                                                    lock.read_text().strip())
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, 'w') as handle:
            handle.write(json.dumps(owner))
        break
    else:
        raise LockedError(f'{what}: could not take the lock file {lock}')
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(lock.read_text()).get('pid') == os.getpid():
                lock.unlink()
