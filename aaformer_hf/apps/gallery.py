# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""A searchable gallery for the web app (``aaformer-hf app``): crops, their embeddings, and identities and cameras
when known - from a folder of crops, a re-ID dataset's gallery split, or an embeddings file written by
``aaformer-hf extract``.

A folder or dataset gallery is embedded once by ``extract_to_file`` (the same pipeline, progress bar and speed as
``aaformer-hf extract``) into a cache file keyed by what its embeddings depend on: the model's weights and
preprocessing (``job_fingerprint``) and the crops (resolved path, size, modification time of each). A changed model
or gallery is embedded anew; an unchanged one loads in a moment. A query then costs one forward and one search.
"""
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..files import cache_root
from .extract import collect_images, extract_to_file, job_fingerprint, load_embeddings, names_to_labels

__all__ = ['Gallery', 'Ranked', 'default_cache_dir', 'gallery_from_images', 'gallery_from_dataset',
           'gallery_from_embeddings', 'labelled_crops', 'dataset_split', 'embeddings_with_crops', 'FAISS_FROM']

FAISS_FROM = 200_000  # gallery size from which the app searches an IVF index when FAISS is installed (exact below)
FAISS_NPROBE = 32  # inverted lists searched per query (of 4 sqrt(N))


def default_cache_dir() -> Path:
    """``$AAFORMER_HF_CACHE/galleries``, by default ``~/.cache/aaformer-hf/galleries``."""
    return cache_root() / 'galleries'


@dataclass
class Ranked:
    """One query's top-k: gallery indices and cosine distances in rank order; ``correct`` per result when the query's
    identity is known (else None); ``left_out``: gallery crops the evaluation protocol left out for this query."""
    indices: List[int]
    distances: List[float]
    correct: Optional[List[bool]]
    left_out: int


@dataclass
class Gallery:
    """Crops (files), their (N, D) embeddings, and (N,) identities and cameras when known. ``queries``: example query
    crops with their (pid, camid) or None each, for the app's strip of examples. ``flip``: the embeddings average each
    crop's and its mirror's (queries must then be embedded so too)."""
    paths: List[Path]
    embeddings: torch.Tensor
    pids: Optional[torch.Tensor] = None
    camids: Optional[torch.Tensor] = None
    queries: List[Tuple[Path, Optional[Tuple[int, int]]]] = field(default_factory=list)
    source: str = ''
    flip: bool = False

    def __post_init__(self) -> None:
        if not len(self.paths):
            raise ValueError(f'{self.source}: the gallery is empty')
        self._unit = F.normalize(self.embeddings.float(), dim=1)
        self._index, self.method = None, 'exact'
        if len(self) >= FAISS_FROM and _faiss_installed():  # built once; each query then searches a few lists
            from ..reid.search import faiss_index
            lists = int(4 * len(self) ** 0.5)
            self._index = faiss_index(self._unit, 'cosine', f'IVF{lists},Flat', min(FAISS_NPROBE, lists),
                                      use_gpus=False)
            self.method = f'approximate: FAISS IVF{lists},Flat, {min(FAISS_NPROBE, lists)} lists searched'

    def __len__(self) -> int:
        return len(self.paths)

    def rank(self, query: torch.Tensor, k: int, identity: Optional[Tuple[int, int]] = None) -> Ranked:
        """The ``k`` nearest crops to one (D,) query embedding by cosine distance (1 - cos). With the query's
        ``identity`` (pid, camid) and gallery labels, the evaluation protocol applies (Market-1501's, as
        ``reid.evaluate``): crops of the same identity under the same camera, and junk (pid -1), are left out, and
        each result is marked correct when it shows the same identity."""
        labelled = identity is not None and self.pids is not None
        keep = None
        if labelled:
            pid, cam = identity
            keep = ~(((self.pids == pid) & (self.camids == cam)) | (self.pids == -1))
        left_out = 0 if keep is None else int((~keep).sum())
        k = max(0, min(k, len(self) - left_out))
        if k == 0:
            return Ranked([], [], [] if labelled else None, left_out)
        query = F.normalize(query.float().reshape(1, -1), dim=1)
        if self._index is not None:
            from ..reid.search import faiss_query
            distances, indices = faiss_query(self._index, query, k + left_out)
            found = indices[0] >= 0
            distances, indices = distances[0][found], indices[0][found]
            if keep is not None:
                chosen = keep[indices]
                distances, indices = distances[chosen], indices[chosen]
        else:
            distances = 1 - self._unit @ query[0]
            if keep is not None:
                distances = distances.masked_fill(~keep, float('inf'))
            distances, indices = torch.topk(distances, k, largest=False, sorted=True)
        indices, distances = indices[:k].tolist(), distances[:k].tolist()
        correct = [bool(self.pids[i] == identity[0]) for i in indices] if labelled else None
        return Ranked(indices, distances, correct, left_out)

    def label(self, index: int) -> Optional[Tuple[int, int]]:
        return None if self.pids is None else (int(self.pids[index]), int(self.camids[index]))


def _faiss_installed() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _content_key(model, paths: Sequence[Path], flip: bool) -> str:
    """What the gallery's embeddings depend on: the model (``job_fingerprint``) and each crop's resolved path, size
    and modification time."""
    digest = hashlib.sha256(job_fingerprint(model, flip).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f'{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
    return digest.hexdigest()[:32]


def _embedded(model, model_name: str, paths: Sequence[Path], labels, cache_dir: Optional[Path], batch_size: int,
              num_workers: int, flip: bool) -> dict:
    paths = [Path(p).resolve() for p in paths]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f'{_content_key(model, paths, flip)}.safetensors'
    if not cached.is_file():
        extract_to_file(model, paths, cached, model_name, batch_size=batch_size, num_workers=num_workers, flip=flip,
                        labels=labels, process_index=0, num_processes=1)
    return load_embeddings(cached)


def _labels_tensors(saved: dict):
    return saved.get('pids'), saved.get('camids')


def labelled_crops(paths: Sequence, labels=None) -> List[Tuple[Path, Optional[Tuple[int, int]]]]:
    """Each crop with its (pid, camid): from ``labels`` (pids, camids) when given, else from the file names when
    they all follow a re-ID naming convention (``names_to_labels``), else None."""
    labels = labels if labels is not None else names_to_labels(paths)
    if labels is None:
        return [(Path(p), None) for p in paths]
    return [(Path(p), (int(pid), int(cam))) for p, pid, cam in zip(paths, *labels)]


def dataset_split(split) -> Tuple[List[Path], list, list]:
    """A re-ID loader split's files, the dataset's own identity numbers (not the training labels) and cameras."""
    ids = 'pid_original' if 'pid_original' in split.column_names else 'pid'
    split = split.select_columns(['path', ids, 'camid'])
    return [Path(p) for p in split['path']], split[ids], split['camid']


def embeddings_with_crops(path: Path) -> dict:
    """An embeddings file of ``aaformer-hf extract`` (``load_embeddings``) whose crops are all files here: the app
    and a Space show them."""
    saved = load_embeddings(Path(path))
    missing = [p for p in saved['paths'] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f'{path}: {len(missing)} of its {len(saved["paths"])} crops are not files here '
                                f'(first: {missing[0]}); the crops themselves are shown')
    return saved


def gallery_from_images(model, model_name: str, source: Path, queries: Optional[Path] = None,
                        cache_dir: Optional[Path] = None, batch_size: int = 64, num_workers: int = 0,
                        flip: bool = False) -> Gallery:
    """A folder of crops (or a text file listing them); identities and cameras from the file names when they all
    follow a re-ID naming convention. ``queries``: a folder of example query crops, labelled likewise."""
    paths = collect_images(Path(source))
    saved = _embedded(model, model_name, paths, None, cache_dir, batch_size, num_workers, flip)
    examples = labelled_crops(collect_images(Path(queries))) if queries is not None else []
    return Gallery([Path(p) for p in saved['paths']], saved['embeddings'], *_labels_tensors(saved), examples,
                   source=str(source), flip=flip)


def gallery_from_dataset(model, model_name: str, name: str, root: Path, cache_dir: Optional[Path] = None,
                         batch_size: int = 64, num_workers: int = 0, flip: bool = False) -> Gallery:
    """A re-ID dataset (``load_reid_dataset``): its gallery split searched, its query split as the examples, both
    with the dataset's identities and cameras."""
    from ..data import load_reid_dataset

    if name == 'hub':
        raise ValueError('--dataset hub: the app shows crops from files; extract the split first and pass the '
                         'embeddings file, or use a re-ID dataset folder')
    data = load_reid_dataset(name, root)
    paths, pids, cams = dataset_split(data['gallery'])
    saved = _embedded(model, model_name, paths, (pids, cams), cache_dir, batch_size, num_workers, flip)
    query_paths, *query_labels = dataset_split(data['query'])
    return Gallery([Path(p) for p in saved['paths']], saved['embeddings'], *_labels_tensors(saved),
                   labelled_crops(query_paths, query_labels), source=f'{name}:{root}', flip=flip)


def gallery_from_embeddings(model, model_name: str, path: Path, queries: Optional[Path] = None) -> Gallery:
    """An embeddings file of ``aaformer-hf extract``: refused when written by another model (its recorded job
    fingerprint, else its recorded model name, differs) or when its crops are not files here (the app shows them)."""
    saved = embeddings_with_crops(path)
    recorded = saved.get('model_job')
    if recorded is not None:
        if recorded != job_fingerprint(model, saved['flip']):
            raise ValueError(f'{path}: embedded by another model ({saved["model"]}, other weights or '
                             f'preprocessing) than {model_name}: distances between two models mean nothing')
    elif saved['model'] != model_name and _resolved(saved['model']) != _resolved(model_name):
        raise ValueError(f'{path}: holds embeddings of {saved["model"]}, not of {model_name}: distances between two '
                         'models mean nothing')
    examples = labelled_crops(collect_images(Path(queries))) if queries is not None else []
    return Gallery([Path(p) for p in saved['paths']], saved['embeddings'], *_labels_tensors(saved), examples,
                   source=str(path), flip=saved['flip'])


def _resolved(spec: Optional[str]) -> Optional[str]:
    if spec is None:
        return None
    path = Path(spec.removeprefix('local-dir:'))
    return str(path.resolve()) if path.exists() else spec
