# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Embeddings of person crops, at any scale: any model (a timm name, a saved folder, a Hub id), images from a folder,
a file list, a re-ID dataset split or any ``datasets`` split of images (Hub or local), written as one safetensors
file with the paths (and the identities and cameras when the file names or the dataset carry them).

Large jobs run in shards of ``shard_size`` crops written as ``OUT.parts/part_NNNNNN.safetensors``: a job that stops
resumes from the shards already written, and under ``accelerate launch`` each process takes every n-th shard; the
main process then joins them in input order into ``OUT`` and removes the parts. Files appear only when complete.
"""
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ._files import atomic_path

__all__ = ['load_inference_model', 'embed', 'collect_images', 'names_to_labels', 'extract_to_file',
           'load_embeddings', 'process_state', 'FORMAT']

FORMAT = 'aaformer-hf-embeddings/1'
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
    if getattr(model, 'num_cameras', 0):
        raise ValueError(f'{spec}: a model with a camera embedding (SIE) needs each image\'s camera id; '
                         'extract embeddings with a model trained without it')
    return model.to(device).eval()


def embed(model, pixels: torch.Tensor) -> torch.Tensor:
    """The re-ID embedding of any timm model: its pooled, pre-classifier feature (a family's BNNeck'd concatenation
    as configured)."""
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
        try:
            if self.rows is not None:
                return self.transform(self.rows[self.start + index]['image'].convert('RGB'))
            with Image.open(self.names[index]) as image:
                return self.transform(image.convert('RGB'))
        except OSError as error:
            raise OSError(f'{self.names[index]}: unreadable image ({error})') from error


def extract_to_file(model, paths: Sequence[Path], out: Path, model_name: str, batch_size: int = 64,
                    num_workers: int = 0, shard_size: int = 10000, flip: bool = False, overwrite: bool = False,
                    process_index: Optional[int] = None, num_processes: Optional[int] = None,
                    device: Optional[torch.device] = None, join: bool = True,
                    labels: Optional[Tuple[Sequence[int], Sequence[int]]] = None,
                    images=None) -> Optional[Path]:
    """Embed ``paths`` with ``model`` into ``out`` (see the module docstring). ``process_index``/``num_processes``
    default to accelerate's state (one process without ``accelerate launch``); ``join=False`` leaves the shards
    (for a caller that joins once every process is done); ``labels``: (pids, camids) of the images (e.g. from a
    dataset), else read from the file names when they all carry them; ``images``: a ``datasets`` split with an
    ``image`` column to embed instead of opening files (``load_image_split``), ``paths`` then naming its rows.
    Returns ``out`` on the process that wrote it."""
    from .data import build_transforms
    from .evaluation import flip_features

    out, paths = Path(out), [str(p) if images is not None else Path(p) for p in paths]
    if images is not None:
        if len(images) != len(paths):
            raise ValueError(f'{len(paths)} names for {len(images)} dataset rows')
        images = images.select_columns(['image'])  # decode nothing else
    state = process_state() if process_index is None or num_processes is None else None
    rank = state.process_index if state else process_index
    world = state.num_processes if state else num_processes
    if out.exists() and not overwrite:
        raise FileExistsError(f'{out}: already exists (pass --overwrite to replace it)')
    if labels is not None and not len(labels[0]) == len(labels[1]) == len(paths):
        raise ValueError(f'labels for {len(labels[0])} / {len(labels[1])} images, but {len(paths)} images')
    parts = Path(f'{out}.parts')
    shards = [paths[i:i + shard_size] for i in range(0, len(paths), shard_size)]
    transform = build_transforms(model.pretrained_cfg, train=False)
    device = device or (state.device if state else torch.device('cpu'))
    parts.mkdir(parents=True, exist_ok=True)
    mine = range(rank, len(shards), world)
    bar = tqdm(total=sum(len(shards[i]) for i in mine), desc='embedding', unit='img',
               disable=None if rank == 0 else True)
    for index in mine:
        part = _part(parts, index)
        key = _shard_key(shards[index], model_name, flip, getattr(images, '_fingerprint', ''))
        if part.is_file():
            if _read_metadata(part).get('key') != key:
                raise FileExistsError(f'{parts}: holds shards of another job (other images, model or flip); delete '
                                      'it or choose another output')
            bar.update(len(shards[index]))
            continue
        loader = DataLoader(_Images(shards[index], transform, images, index * shard_size), batch_size=batch_size,
                            num_workers=num_workers)
        feats = []
        with torch.inference_mode():
            for pixels in loader:
                pixels = pixels.to(device)
                feats.append((flip_features(lambda x: embed(model, x), pixels) if flip
                              else embed(model, pixels)).float().cpu())
                bar.update(len(pixels))
        _save({'embeddings': torch.cat(feats)}, {'key': key}, part)
    bar.close()
    if state:
        state.wait_for_everyone()
    if not join or rank != 0:
        return None
    return _join(parts, len(shards), paths, out, model_name, flip, labels)


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
    """An embeddings file as a dict: ``embeddings`` (N, D), ``paths``, ``model``, and ``pids``/``camids`` when
    present."""
    path = Path(path)
    metadata = _read_metadata(path)
    if metadata.get('format') != FORMAT:
        raise ValueError(f'{path}: not an aaformer-hf embeddings file (format {metadata.get("format")!r})')
    out: Dict[str, Any] = {'paths': json.loads(metadata['paths']), 'model': metadata.get('model'),
                           'flip': metadata.get('flip') == 'true'}
    with safe_open(path, 'pt') as handle:
        for name in handle.keys():
            out[name] = handle.get_tensor(name)
    return out


def _join(parts: Path, count: int, paths: List[Path], out: Path, model_name: str, flip: bool, labels) -> Path:
    feats = []
    for index in range(count):
        with safe_open(_part(parts, index), 'pt') as handle:
            feats.append(handle.get_tensor('embeddings'))
    tensors = {'embeddings': torch.cat(feats) if feats else torch.empty(0, 0)}
    labels = names_to_labels(paths) if labels is None else tuple(torch.as_tensor(v) for v in labels)
    if labels is not None:
        tensors['pids'], tensors['camids'] = labels
    metadata = {'format': FORMAT, 'model': model_name, 'flip': str(flip).lower(),
                'paths': json.dumps([str(p) for p in paths])}
    _save(tensors, metadata, out)
    shutil.rmtree(parts)
    return out


def _shard_key(paths: Sequence[Path], model_name: str, flip: bool, content: str = '') -> str:
    """What a shard holds; ``content``: a ``datasets`` fingerprint, so rows of another revision never resume."""
    digest = hashlib.sha256(f'{model_name}\n{flip}\n{content}\n'.encode())
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
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def _part(parts: Path, index: int) -> Path:
    return parts / f'part_{index:06d}.safetensors'
