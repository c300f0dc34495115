"""Re-ID datasets in their standard on-disk layouts, as ``datasets.DatasetDict`` (train / query / gallery).

Columns: ``image`` (``datasets.Image``, decoded lazily and always to RGB), ``pid``, ``camid`` (0-based) and
``path``. Training identities are relabelled 0..C-1, the original ids kept in a ``pid_original`` column; query and
gallery keep their original ids. As in every toolkit, junk images (pid -1) are dropped and distractors (pid 0) stay
in the gallery.

So far: Market-1501 and DukeMTMC-reID (and Occluded-Duke, which uses DukeMTMC's file names). MSMT17, CUHK03-NP,
custom folders and Hub datasets follow (issue #3).
"""
import re
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import datasets

__all__ = ['load_reid_dataset', 'ReIDDatasetError']

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')


class ReIDDatasetError(ValueError):
    """A dataset folder or file that does not match its layout; the message names the path."""


def _market_name(path: Path) -> Tuple[int, int]:
    # 0002_c1s1_000451_03.jpg: person 2, camera 1 (sequence 1, frame 451, box 3); -1_c1s1_...: junk
    match = re.match(r'^(-?\d+)_c(\d+)s\d+_\d+_\d+$', path.stem)
    if not match:
        raise ReIDDatasetError(f'{path}: file name does not follow the Market-1501 pattern PPPP_cCsS_FFFFFF_BB')
    return int(match.group(1)), int(match.group(2))


def _duke_name(path: Path) -> Tuple[int, int]:
    # 0005_c2_f0046985.jpg: person 5, camera 2, frame 46985
    match = re.match(r'^(-?\d+)_c(\d+)_f\d+$', path.stem)
    if not match:
        raise ReIDDatasetError(f'{path}: file name does not follow the DukeMTMC-reID pattern PPPP_cC_fFFFFFFF')
    return int(match.group(1)), int(match.group(2))


def _scan(folder: Path, parse: Callable[[Path], Tuple[int, int]]) -> List[Tuple[str, int, int]]:
    if not folder.is_dir():
        raise ReIDDatasetError(f'{folder}: folder not found')
    records = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        pid, cam = parse(path)
        if pid == -1:  # junk detections, dropped by every toolkit
            continue
        records.append((str(path), pid, cam - 1))
    if not records:
        raise ReIDDatasetError(f'{folder}: no images')
    return records


def _to_dataset(records: List[Tuple[str, int, int]], relabel: bool) -> datasets.Dataset:
    paths, pids, cams = zip(*records)
    columns = {'image': list(paths), 'pid': list(pids), 'camid': list(cams), 'path': list(paths)}
    features = {'image': datasets.Image(mode='RGB'), 'pid': datasets.Value('int64'), 'camid': datasets.Value('int64'),
                'path': datasets.Value('string')}
    if relabel:
        mapping = {pid: label for label, pid in enumerate(sorted(set(pids)))}
        columns['pid_original'] = list(pids)
        columns['pid'] = [mapping[pid] for pid in pids]
        features['pid_original'] = datasets.Value('int64')
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _standard_layout(root: Path, parse) -> datasets.DatasetDict:
    return datasets.DatasetDict({
        'train': _to_dataset(_scan(root / 'bounding_box_train', parse), relabel=True),
        'query': _to_dataset(_scan(root / 'query', parse), relabel=False),
        'gallery': _to_dataset(_scan(root / 'bounding_box_test', parse), relabel=False),
    })


_LOADERS: Dict[str, Callable[[Path], datasets.DatasetDict]] = {
    'market1501': lambda root: _standard_layout(root, _market_name),
    'dukemtmc': lambda root: _standard_layout(root, _duke_name),
    'occluded_duke': lambda root: _standard_layout(root, _duke_name),
}


def load_reid_dataset(name: str, root) -> datasets.DatasetDict:
    """Load a re-ID dataset from ``root`` (the folder holding ``bounding_box_train/``, ``query/`` and
    ``bounding_box_test/``) as a ``DatasetDict`` with splits ``train``, ``query`` and ``gallery``."""
    if name not in _LOADERS:
        raise ValueError(f'unknown dataset {name!r}; available: {", ".join(sorted(_LOADERS))}')
    root = Path(root)
    if not root.is_dir():
        raise ReIDDatasetError(f'{root}: dataset folder not found')
    return _LOADERS[name](root)
