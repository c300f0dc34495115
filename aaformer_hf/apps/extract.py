# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Embeddings of person crops, at any scale: any model (a timm name, a saved folder, a Hub id), images from a folder,
a file list, a re-ID dataset split or any ``datasets`` split of images (Hub or local), written as one safetensors
file with the paths (and the identities and cameras when the file names or the dataset carry them).

Large jobs run in shards of ``shard_size`` crops written as ``OUT.parts/part_NNNNNN.safetensors``: a job that stops
resumes from the shards already written, and under ``accelerate launch`` each process takes every n-th shard; the
main process then joins them in input order into ``OUT`` and removes the parts. Files appear only when complete.
A job holds ``OUT.lock`` while it runs (a second job on the same output stops at once), and shards are keyed on what
the embeddings depend on (the weights' bytes, preprocessing, flip, images), so a resumed job never mixes models.
Image files are stored under their resolved (absolute) paths; a ``datasets`` split's rows as ``SOURCE[SPLIT]#ROW``.
"""
import hashlib
import json
import logging
import os
import re
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..files import LockedError, atomic_path, check_output, hold_lock, read_lock
from ..data.images import as_rgb, read_rgb

__all__ = ['load_inference_model', 'embed', 'collect_images', 'names_to_labels', 'extract_to_file',
           'job_fingerprint', 'load_embeddings', 'process_state', 'FORMAT']

FORMAT = 'aaformer-hf-embeddings/1'
_logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
# re-ID file-name conventions that carry identity and camera: Market-1501/MSMT17-style and DukeMTMC-style stems
_NAME_PATTERNS = (re.compile(r'^(-?\d+)_c(\d+)s\d+_\d+_\d+$'), re.compile(r'^(-?\d+)_c(\d+)_f\d+$'))


def load_inference_model(spec: str, pretrained: bool = False, device: str = 'cpu'):
    """A model from a timm name (``pretrained`` as timm's), a saved folder (``local-dir:``; what ``save_pretrained``
    and examples/train.py write) or a Hub id (``org/name[@revision]``, ``hf-hub:``). Returns it in eval mode."""
    import timm

    import aaformer_hf.models  # noqa: F401  (registers the families' timm entrypoints)

    path = Path(spec)
    if spec.startswith(('hf-hub:', 'local-dir:')):
        name, load = spec, True
    elif path.is_dir():
        if not (path / 'config.json').is_file():
            raise FileNotFoundError(f'{path}: not a model folder (no config.json); save it with save_pretrained')
        from ..hub.folders import check_folder_preprocessing, read_json
        read_json(path / 'config.json')  # a truncated or hand-broken file, named before timm reads it
        check_folder_preprocessing(path)
        name, load = f'local-dir:{path}', True
    elif path.exists() or spec.startswith(('.', '/', '~')):
        raise FileNotFoundError(f'{spec}: not a model folder (a timm name, a saved folder or a Hub id is expected)')
    elif '/' in spec:
        name, load = f'hf-hub:{spec}', True
    else:
        name, load = spec, pretrained
        if spec not in timm.list_models():
            raise ValueError(f'{spec}: unknown model (not a timm name, a folder or a Hub id "org/name")')
    try:
        model = timm.create_model(name, pretrained=load)
    except OSError as error:  # huggingface_hub's: offline without the files cached, or no such repo
        raise OSError(f'{spec}: cannot load the model ({error})') from error
    except json.JSONDecodeError as error:  # a Hub repo's config.json, damaged in the cache
        raise ValueError(f'{spec}: its config.json is unreadable ({error})') from error
    if getattr(model, 'num_cameras', 0):
        raise ValueError(f'{spec}: a model with a camera embedding (SIE) needs each image\'s camera id; '
                         'extract embeddings with a model trained without it')
    return model.to(device).eval()


def embed(model, pixels: torch.Tensor) -> torch.Tensor:
    """The re-ID embedding of any timm model: its pooled, pre-classifier feature (a family's BNNeck'd concatenation
    as configured); or what an exported graph run in ONNX Runtime (``export.OnnxEmbedder``) returns for it."""
    if getattr(model, 'onnx_digest', None) is not None:
        return model(pixels)
    return model.forward_head(model.forward_features(pixels), pre_logits=True)


def collect_images(source: Path) -> List[Path]:
    """The images of a folder (recursively, sorted) or of a text file listing one path per line (relative paths are
    taken from the list's folder)."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise ValueError(f'{source}: no images ({", ".join(IMAGE_SUFFIXES)}) in this folder')
        return paths
    if not source.is_file():
        raise FileNotFoundError(f'{source}: no such folder or file list')
    lines = [line.strip() for line in source.read_text().splitlines()]
    paths = [p if p.is_absolute() else source.parent / p for p in map(Path, filter(None, lines))]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f'{source}: {len(missing)} listed images not found (first: {", ".join(missing[:3])})')
    if not paths:
        raise ValueError(f'{source}: the file list is empty')
    return paths


def names_to_labels(paths: Sequence[Path]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(pids, camids) when every file name follows a re-ID naming convention (Market-1501/MSMT17 or DukeMTMC),
    cameras counted from 0 as ``load_reid_dataset`` gives them; else None: labels are all or nothing, never guessed
    for part of the set."""
    pids, cams = [], []
    for path in paths:
        match = next((m for m in (p.match(Path(path).stem) for p in _NAME_PATTERNS) if m), None)
        if match is None:
            return None
        pids.append(int(match.group(1))), cams.append(int(match.group(2)) - 1)  # 0-based, as the loaders
    return torch.tensor(pids), torch.tensor(cams)


class _Images(Dataset):
    """Images ``start..start+len(names)`` of a job: files at ``names``, or rows of ``rows`` (a ``datasets`` split
    with an ``image`` column), which ``names`` then only name."""

    def __init__(self, names: Sequence[str], transform, rows=None, start: int = 0) -> None:
        self.names, self.transform, self.rows, self.start = list(names), transform, rows, start

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.rows is not None:
            return self.transform(as_rgb(self.rows[self.start + index]['image'], self.names[index]))
        return self.transform(read_rgb(self.names[index]))


def extract_to_file(model, paths: Sequence[Path], out: Path, model_name: str, batch_size: int = 64,
                    num_workers: int = 0, shard_size: int = 10000, flip: bool = False, overwrite: bool = False,
                    process_index: Optional[int] = None, num_processes: Optional[int] = None,
                    device: Optional[torch.device] = None, join: bool = True,
                    labels: Optional[Tuple[Sequence[int], Sequence[int]]] = None,
                    images=None, log_every: int = 100) -> Optional[Path]:
    """Embed ``paths`` with ``model`` into ``out`` (see the module docstring). ``process_index``/``num_processes``
    default to accelerate's state (one process without ``accelerate launch``); ``join=False`` leaves the shards
    (for a caller that joins once every process is done); ``labels``: (pids, camids) of the images (e.g. from a
    dataset), else read from the file names when they all carry them; ``images``: a ``datasets`` split with an
    ``image`` column to embed instead of opening files (``load_image_split``), ``paths`` then naming its rows.
    ``overwrite``: replace ``out`` and discard shards another job left in ``OUT.parts``. ``log_every``: when no
    progress bar is drawn (not a terminal), a log line every that many batches. Returns ``out`` on the process that
    wrote it.

    ``OUT.lock`` is held for the job (by the main process under ``accelerate launch``): a second job writing to the
    same ``out`` stops at once, naming the holder. Shards are keyed on the job's content - the model's weights and
    preprocessing, ``flip``, the images (and a ``datasets`` split's fingerprint) - never on names, so a retrained
    model, a new random init or other options never resume from old shards."""
    from ..data import build_transforms

    out = Path(out)
    paths = [str(p) for p in paths] if images is not None else [Path(p).resolve() for p in paths]
    if images is not None:
        if len(images) != len(paths):
            raise ValueError(f'{len(paths)} names for {len(images)} dataset rows')
        images = images.select_columns(['image'])  # decode nothing else
    state = process_state() if process_index is None or num_processes is None else None
    rank = state.process_index if state else process_index
    world = state.num_processes if state else num_processes
    if rank == 0 or not state:
        check_output(out, overwrite)
    if labels is not None and not len(labels[0]) == len(labels[1]) == len(paths):
        raise ValueError(f'labels for {len(labels[0])} / {len(labels[1])} images, but {len(paths)} images')
    transform = build_transforms(model.pretrained_cfg, train=False)
    job = job_fingerprint(model, flip, getattr(images, '_fingerprint', ''))
    lock = Path(f'{out}.lock')
    holding = hold_lock(lock, f'{out} (extract)', {'job': job}) if (rank == 0 or not state) else nullcontext()
    with holding:
        if state:
            state.wait_for_everyone()  # the main process holds the lock before any process writes
            held = read_lock(lock)
            if held is None or held.get('job') != job:
                raise LockedError(f'{out}: the lock {lock} belongs to another job; give this job another output')
        device = device or (state.device if state else torch.device('cpu'))
        written = _embed_shards(model, transform, paths, out, job, shard_size, rank, world, batch_size, num_workers,
                                flip, images, device, overwrite, log_every)
        if state:
            state.wait_for_everyone()
        if not join or rank != 0:
            return None
        model_job = job if images is None else job_fingerprint(model, flip)  # a split's job also hashes its content
        return _join(written, paths, out, model_name, flip, labels, model_job)


def job_fingerprint(model, flip: bool, content: str = '') -> str:
    """What an embedding of this job depends on: the model's weights (every tensor's bytes; for an ``OnnxEmbedder``,
    its graph file's), its class and preprocessing, the test-time flip, and ``content`` (a ``datasets`` split's
    fingerprint)."""
    digest = hashlib.sha256()
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    preprocessing = {k: cfg.get(k) for k in ('input_size', 'mean', 'std', 'interpolation', 'crop_pct', 'crop_mode')}
    digest.update(json.dumps(dict(cls=type(model).__qualname__, preprocessing=preprocessing, flip=bool(flip),
                                  content=content), sort_keys=True, default=str).encode())
    if getattr(model, 'onnx_digest', None) is not None:  # an exported graph: its file's bytes are its weights
        digest.update(model.onnx_digest.encode())
        return digest.hexdigest()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f'{name}:{tensor.dtype}:{tuple(tensor.shape)}'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b'')
    return digest.hexdigest()


def _embed_shards(model, transform, paths, out: Path, job: str, shard_size: int, rank: int, world: int,
                  batch_size: int, num_workers: int, flip: bool, images, device, overwrite: bool,
                  log_every: int) -> int:
    """This process's shards into ``OUT.parts`` (reusing those this job wrote before); returns the shard count."""
    from ..reid.evaluation import flip_features

    parts = Path(f'{out}.parts')
    shards = [paths[i:i + shard_size] for i in range(0, len(paths), shard_size)]
    parts.mkdir(exist_ok=True)
    mine = list(range(rank, len(shards), world))
    keys = {index: _shard_key(shards[index], job) for index in mine}
    reused = []
    for index in mine:
        part = _part(parts, index)
        if not part.is_file():
            continue
        if _read_metadata(part).get('key') == keys[index]:
            reused.append(index)
        elif overwrite:
            _logger.warning('%s: discarding a shard of another job (--overwrite)', part)
            part.unlink()
        else:
            raise FileExistsError(f'{parts}: holds shards of another job (other images, model weights, '
                                  'preprocessing or --flip); pass --overwrite to discard them, or choose another '
                                  'output')
    if reused:
        _logger.info('%s: resuming; %d of %d shards already written in %s are reused', out, len(reused), len(mine),
                     parts)
    total = sum(len(shards[i]) for i in mine)
    bar = tqdm(total=total, desc='embedding', unit='img', disable=None if rank == 0 else True)
    progress = _ProgressLog(out, total, log_every if rank == 0 and bar.disable else 0)
    for index in mine:
        if index in reused:
            bar.update(len(shards[index])), progress.advance(len(shards[index]), batches=0)
            continue
        loader = DataLoader(_Images(shards[index], transform, images, index * shard_size), batch_size=batch_size,
                            num_workers=num_workers)
        feats = []
        with torch.inference_mode():
            for pixels in loader:
                pixels = pixels.to(device)
                feats.append((flip_features(lambda x: embed(model, x), pixels) if flip
                              else embed(model, pixels)).float().cpu())
                bar.update(len(pixels)), progress.advance(len(pixels))
        _save({'embeddings': torch.cat(feats)}, {'key': keys[index]}, _part(parts, index))
    bar.close()
    return len(shards)


class _ProgressLog:
    """A log line every ``every`` batches, for runs whose progress bar is not drawn (output not a terminal)."""

    def __init__(self, out: Path, total: int, every: int) -> None:
        self.out, self.total, self.every, self.done, self.batches = out, total, every, 0, 0
        self.start = time.monotonic()

    def advance(self, images: int, batches: int = 1) -> None:
        self.done += images
        self.batches += batches
        if self.every and batches and self.batches % self.every == 0:
            rate = self.done / max(time.monotonic() - self.start, 1e-9)
            _logger.info('%s: %d / %d images embedded (%.0f images/s)', self.out, self.done, self.total, rate)


def process_state():
    """accelerate's process state, on CPU when launched so (``accelerate launch --cpu`` sets ACCELERATE_USE_CPU,
    which ``Accelerator`` reads and ``PartialState`` does not). Refuses a launch of several processes that accelerate
    sees as one each: every process would embed everything and write the same files."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env('ACCELERATE_USE_CPU'))
    launched = int(os.environ.get('WORLD_SIZE', '1'))
    if state.num_processes != launched:
        raise ValueError(f'launched as {launched} processes but accelerate sees {state.num_processes}; on CPU '
                           'launch with `accelerate launch --cpu` (or set ACCELERATE_USE_CPU=true)')
    return state


def load_embeddings(path: Path) -> Dict[str, Any]:
    """An embeddings file as a dict: ``embeddings`` (N, D), ``paths``, ``model``, ``flip``, ``model_job`` (the model's
    ``job_fingerprint``; None in files written before it was recorded), and ``pids``/``camids`` when present."""
    path = Path(path)
    metadata = _read_metadata(path)
    if metadata.get('format') != FORMAT:
        raise ValueError(f'{path}: not an aaformer-hf embeddings file (format {metadata.get("format")!r})')
    try:
        paths = json.loads(metadata['paths'])
    except (KeyError, ValueError) as error:
        raise ValueError(f'{path}: its paths metadata is missing or unreadable ({error})') from error
    out: Dict[str, Any] = {'paths': paths, 'model': metadata.get('model'), 'flip': metadata.get('flip') == 'true',
                           'model_job': metadata.get('model_job')}  # None in files of earlier releases
    with safe_open(path, 'pt') as handle:
        for name in handle.keys():
            out[name] = handle.get_tensor(name)
    rows = out.get('embeddings')
    if rows is None or rows.ndim != 2:
        raise ValueError(f'{path}: no (N, D) embeddings tensor')
    counts = {'paths': len(paths), **{k: len(out[k]) for k in ('pids', 'camids') if k in out}}
    wrong = {k: n for k, n in counts.items() if n != len(rows)}
    if wrong:
        raise ValueError(f'{path}: {len(rows)} embeddings but ' + ', '.join(f'{n} {k}' for k, n in wrong.items())
                         + '; the file was not written by one extract run (re-extract it)')
    return out


def _join(count: int, paths: List, out: Path, model_name: str, flip: bool, labels, model_job: str) -> Path:
    parts = Path(f'{out}.parts')
    feats = []
    for index in range(count):
        with safe_open(_part(parts, index), 'pt') as handle:
            feats.append(handle.get_tensor('embeddings'))
    tensors = {'embeddings': torch.cat(feats) if feats else torch.empty(0, 0)}
    labels = names_to_labels(paths) if labels is None else tuple(torch.as_tensor(v) for v in labels)
    if labels is not None:
        tensors['pids'], tensors['camids'] = labels
    # model_job: the model's job_fingerprint, so a reader can tell these embeddings' model from another's by content
    metadata = {'format': FORMAT, 'model': model_name, 'flip': str(flip).lower(), 'model_job': model_job,
                'paths': json.dumps([str(p) for p in paths])}
    _save(tensors, metadata, out)
    shutil.rmtree(parts)
    return out


def _shard_key(paths: Sequence, job: str) -> str:
    """What a shard holds: this job (``job_fingerprint``) on these images."""
    digest = hashlib.sha256(f'{job}\n'.encode())
    for path in paths:
        digest.update(f'{path}\n'.encode())
    return digest.hexdigest()


def _read_metadata(path: Path) -> Dict[str, str]:
    try:
        with safe_open(path, 'pt') as handle:
            return handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error type for a damaged header
        raise ValueError(f'{path}: unreadable safetensors file ({error})') from error


def _save(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str], path: Path) -> None:
    with atomic_path(path) as tmp:
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as error:  # its I/O errors (a full disk) are not OSErrors: make them one
            raise OSError(str(error)) from error


def _part(parts: Path, index: int) -> Path:
    return parts / f'part_{index:06d}.safetensors'
