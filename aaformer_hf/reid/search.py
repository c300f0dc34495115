# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Nearest gallery embeddings for query embeddings (``aaformer-hf search``): exact in PyTorch, or through FAISS.

- ``backend='torch'``: exact, in query chunks sized so one chunk's distances stay near 256 MB whatever the gallery;
  on the GPU when there is one (``device='auto'``), results back on the CPU.
- ``backend='faiss'`` (``pip install "aaformer-hf[search]"``): FAISS's exact flat index by default, or any
  ``index_factory`` string (e.g. ``'IVF1024,Flat'`` with ``nprobe``) for approximate search on large galleries;
  the index is moved to every GPU FAISS sees (a faiss-gpu build) when ``device`` allows it.

Distances follow the evaluator's: 'cosine' = 1 - cos, 'euclidean' = squared L2.
"""
import re
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['search', 'recall_at', 'faiss_index', 'faiss_query']


def search(query: torch.Tensor, gallery: torch.Tensor, top: int = 10, metric: str = 'cosine',
           backend: str = 'torch', index: str = 'Flat', nprobe: int = 16, chunk_bytes: int = 256 * 2 ** 20,
           device: str = 'auto') -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``top`` nearest gallery rows of each query row: distances (Q, k) ascending and indices (Q, k), on the
    CPU. ``device``: 'auto' (a GPU when present), 'cpu', or a torch device such as 'cuda:1' (torch backend)."""
    if metric not in ('cosine', 'euclidean'):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f'query (Q, D) and gallery (G, D) must share D; got {tuple(query.shape)} and '
                         f'{tuple(gallery.shape)}')
    if not len(gallery):
        raise ValueError('the gallery is empty')
    for name, x in (('query', query), ('gallery', gallery)):
        if not torch.isfinite(x).all():
            raise ValueError(f'{name} embeddings hold NaN or Inf')
    if backend not in ('torch', 'faiss'):
        raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")
    top = min(top, len(gallery))
    if backend == 'faiss':
        query, gallery = _prepared(query, gallery, metric, 'cpu')
        return _faiss_search(query, gallery, top, metric, index, nprobe, use_gpus=device != 'cpu')
    try:
        target = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if device == 'auto' else device)
    except RuntimeError as error:
        raise ValueError(f"device must be 'auto', 'cpu' or a torch device such as 'cuda:0', got {device!r}") from error
    distances, indices = _torch_search(*_prepared(query, gallery, metric, target), top, metric, chunk_bytes)
    return distances.cpu(), indices.cpu()


def _prepared(query, gallery, metric, device):
    query, gallery = query.to(device, torch.float32), gallery.to(device, torch.float32)
    if metric == 'cosine':
        query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
    return query, gallery


def _torch_search(query, gallery, top, metric, chunk_bytes):
    rows = max(1, chunk_bytes // (4 * len(gallery)))
    gallery_sq = gallery.pow(2).sum(1) if metric == 'euclidean' else None
    distances, indices = [], []
    for start in range(0, len(query), rows):
        q = query[start:start + rows]
        products = q @ gallery.T
        if metric == 'cosine':
            dist = 1 - products
        else:
            dist = (q.pow(2).sum(1, keepdim=True) + gallery_sq - 2 * products).clamp(min=0)
        d, i = dist.topk(top, dim=1, largest=False, sorted=True)
        distances.append(d), indices.append(i)
    return torch.cat(distances), torch.cat(indices)


def _faiss_search(query, gallery, top, metric, index: str, nprobe: int, use_gpus: bool = True):
    return faiss_query(faiss_index(gallery, metric, index, nprobe, use_gpus), query, top, metric)


def faiss_index(gallery: torch.Tensor, metric: str = 'cosine', index: str = 'Flat', nprobe: int = 16,
                use_gpus: bool = True):
    """A FAISS index (``index_factory`` string ``index``) built and filled once with the (G, D) ``gallery`` (for
    'cosine', already L2-normalised), for ``faiss_query`` to search many times."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError('backend faiss needs faiss: pip install "aaformer-hf[search]" (faiss-cpu)') from error
    measure = faiss.METRIC_INNER_PRODUCT if metric == 'cosine' else faiss.METRIC_L2
    try:
        built = faiss.index_factory(gallery.shape[1], index, measure)
    except RuntimeError as error:
        raise ValueError(f'index {index!r}: not an index faiss can build for {gallery.shape[1]}-d embeddings '
                         f'({_faiss_reason(error)}); see faiss\'s index_factory strings, e.g. Flat or IVF1024,Flat'
                         ) from error
    lists = faiss.extract_index_ivf(built).nlist if 'IVF' in index else 0
    if lists and len(gallery) < lists:
        raise ValueError(f'index {index!r}: {lists} inverted lists need at least {lists} gallery embeddings to train '
                         f'(faiss advises 39 per list), the gallery has {len(gallery)}; use fewer lists, e.g. '
                         f'IVF{max(1, len(gallery) // 39)},Flat, or the exact Flat')
    on_gpus = use_gpus and hasattr(faiss, 'get_num_gpus') and faiss.get_num_gpus() > 0  # a faiss-gpu build
    if on_gpus:
        built = faiss.index_cpu_to_all_gpus(built)
    g = np.ascontiguousarray(gallery.numpy())
    if not built.is_trained:
        try:
            built.train(g)
        except RuntimeError as error:
            raise ValueError(f'index {index!r}: faiss could not train it on {len(gallery)} gallery embeddings '
                             f'({_faiss_reason(error)}); try Flat or fewer lists') from error
    built.add(g)
    if on_gpus and 'IVF' in index:
        faiss.GpuParameterSpace().set_index_parameter(built, 'nprobe', nprobe)
    elif hasattr(built, 'nprobe'):
        built.nprobe = nprobe
    return built


def faiss_query(built, query: torch.Tensor, top: int, metric: str = 'cosine') -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``top`` nearest rows of a ``faiss_index`` for each (Q, D) query row (for 'cosine', L2-normalised):
    distances as ``search`` gives them, and indices (-1 where an approximate index found fewer than ``top``)."""
    scores, found = built.search(np.ascontiguousarray(query.float().numpy()), top)
    scores = torch.from_numpy(scores)
    distances = 1 - scores if metric == 'cosine' else scores
    return distances, torch.from_numpy(found).long()


def _faiss_reason(error: Exception) -> str:
    """faiss's C++ message without its source location ("Error in <signature> at <file>:<line>: ")."""
    return re.sub(r'^Error in .*? at \S+:\d+: ', '', str(error).strip()) or 'rejected'


def recall_at(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Share of the exact top-k that an approximate search also returned (recall@k)."""
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact))
    return hits / exact.numel()
