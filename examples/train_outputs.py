"""The training run's output folder: one run at a time (a lock file), no silent mixing with an older run, and the
checkpoints in it. Everything here is checked before any data or model is loaded."""
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from aaformer_hf.files import LockedError, hold_lock

__all__ = ['STATE_FILE', 'LOCK_FILE', 'RUN_OUTPUTS', 'OutputDirError', 'claim_output_dir', 'complete_checkpoints',
           'read_state', 'resume_folder']

logger = logging.getLogger(__name__)
STATE_FILE = 'trainer_state.json'
LOCK_FILE = '.train.lock'
INCOMPLETE_PREFIX = '.incomplete-'
# what a run leaves in its folder; a fresh run refuses to start over any of them unless told to overwrite
RUN_OUTPUTS = ('checkpoints', 'metrics.json', 'model', 'best_model')


class OutputDirError(RuntimeError):
    """The output folder cannot be used for this run (held by another run, holds an older run, unwritable)."""


def read_state(folder: Path) -> Dict[str, Any]:
    """A checkpoint's trainer state, with an error naming the file when it is unreadable."""
    path = Path(folder) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise OutputDirError(f'{path}: unreadable trainer state ({error}); delete this checkpoint folder or resume '
                             'from another') from error
    missing = {'epoch', 'step_in_epoch', 'global_step', 'best'} - set(state)
    if missing:
        raise OutputDirError(f'{path}: trainer state lacks {sorted(missing)}')
    return state


def complete_checkpoints(output_dir: Path) -> List[Path]:
    """Complete checkpoint folders, oldest first (by the optimiser steps the run had taken, ``steps_done``, over all
    its stages). Folders still being written (``.incomplete-*``) and folders without a trainer state are never
    considered."""
    found = []
    for folder in (Path(output_dir) / 'checkpoints').glob('*'):
        if folder.name.startswith('.') or not folder.is_dir() or not (folder / STATE_FILE).is_file():
            continue
        state = read_state(folder)
        found.append((state.get('steps_done', state['global_step']), folder))
    return [folder for _, folder in sorted(found)]


def resume_folder(resume_from_checkpoint: Optional[str], output_dir: Path) -> Optional[Path]:
    """The checkpoint folder to resume from (``'latest'``: the newest complete one), or None for a fresh run."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == 'latest':
        found = complete_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f'{Path(output_dir) / "checkpoints"}: no complete checkpoint to resume from '
                                    '(--resume_from_checkpoint latest)')
        return check_checkpoint_files(found[-1])
    folder = Path(resume_from_checkpoint)
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f'{folder}: not a complete checkpoint (no {STATE_FILE})')
    read_state(folder)
    return check_checkpoint_files(folder)


def check_checkpoint_files(folder: Path) -> Path:
    """Before resuming: every safetensors file of the checkpoint opens (safetensors checks at opening that the file
    holds every byte its header names, so a truncated ``model.safetensors`` - which would otherwise fail inside
    accelerate's loading without naming itself - is caught here)."""
    from safetensors import safe_open

    for path in sorted(Path(folder).rglob('*.safetensors')):
        try:
            with safe_open(str(path), 'pt'):
                pass
        except Exception as error:  # safetensors' own error type, OSError, ...
            raise OutputDirError(f'{path}: damaged checkpoint file ({error}); resume from another checkpoint '
                                 '(--resume_from_checkpoint FOLDER) or start afresh') from error
    return Path(folder)


class claim_output_dir:
    """Context manager: creates and locks ``output_dir`` for this run (on the main process), and releases it.

    A lock file holds the owner's host and pid; a lock whose process is gone (a killed run) is taken over. A fresh
    run (not resuming) refuses a folder that holds an older run's outputs unless ``overwrite`` is given, which
    deletes them first (saying so). If the run fails, a folder it created and left empty is removed again.
    """

    def __init__(self, output_dir: Path, resuming: bool, overwrite: bool, is_main_process: bool = True) -> None:
        self.folder, self.resuming, self.overwrite = Path(output_dir), resuming, overwrite
        self.is_main = is_main_process
        self.created = False
        self.lock = None  # hold_lock's context while this run holds the folder

    def __enter__(self) -> Path:
        if not self.is_main:
            return self.folder
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputDirError(f'output_dir {self.folder} exists and is not a folder')
        self.created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as error:
            raise OutputDirError(f'output_dir {self.folder} cannot be written: {error}') from error
        try:
            self._check_older_run()
        except BaseException:
            self._release()
            raise
        return self.folder

    def __exit__(self, *exc_info) -> None:
        if self.is_main:
            self._release()

    def _lock(self) -> None:
        self.lock = hold_lock(self.folder / LOCK_FILE, f'output_dir {self.folder}', by='another run',
                              hint='Use another output_dir, or delete the lock file if that run is gone')
        try:
            self.lock.__enter__()
        except LockedError as error:
            self.lock = None
            raise OutputDirError(str(error)) from None

    def _check_older_run(self) -> None:
        if self.resuming:
            return
        older = [name for name in RUN_OUTPUTS if (self.folder / name).exists()]
        if not older:
            return
        if not self.overwrite:
            raise OutputDirError(
                f'output_dir {self.folder} holds an earlier run ({", ".join(older)}); resume it with '
                '--resume_from_checkpoint latest, choose another output_dir, or pass --overwrite_output_dir to '
                'delete those and start afresh')
        for name in older:
            path = self.folder / name
            logger.warning('--overwrite_output_dir: deleting %s', path)
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None
        if self.created and self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()
