"""Re-ID datasets in their standard on-disk layouts, as ``datasets.DatasetDict`` (train / query / gallery).

Columns: ``image`` (``datasets.Image``, decoded lazily and always to RGB), ``pid``, ``camid`` (0-based) and
``path``. Training identities are relabelled 0..C-1, the original ids kept in a ``pid_original`` column; query and
gallery keep their original ids. As in every toolkit, junk images (pid -1) are dropped and distractors (pid 0) stay
in the gallery.

So far: Market-1501, DukeMTMC-reID, Occluded-Duke (DukeMTMC's file names) and MSMT17 V1/V2. CUHK03-NP, custom
folders and Hub datasets follow (issue #3).
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


def _msmt_list(list_file: Path, image_dir: Path) -> List[Tuple[str, int, int]]:
    """MSMT17 list lines: ``0000/0000_000_01_0303morning_0015_0.jpg 0`` (path under the image folder, pid); the
    camera is the file name's third field."""
    if not list_file.is_file():
        raise ReIDDatasetError(f'{list_file}: list file not found')
    records = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            relative, pid = line.split()
            cam = int(Path(relative).name.split('_')[2])
            pid = int(pid)
        except (ValueError, IndexError):
            raise ReIDDatasetError(f'{list_file}:{number}: expected "<path> <pid>" with an MSMT17 file name, got '
                                   f'{line!r}') from None
        records.append((str(image_dir / relative), pid, cam - 1))
    if not records:
        raise ReIDDatasetError(f'{list_file}: no images listed')
    return records


def _msmt17(root: Path, include_val: bool = False) -> datasets.DatasetDict:
    """MSMT17 V1 (``train/``, ``test/``) or V2 (``mask_train_v2/``, ``mask_test_v2/``) with its list files.

    ``include_val`` adds ``list_val.txt`` (identities of the training set) to training. Off by default, as in
    torchreid and fast-reid; TransReID and CLIP-ReID turn it on, which is one reason papers' numbers differ.
    """
    v2 = (root / 'mask_train_v2').is_dir()
    train_dir, test_dir = (root / 'mask_train_v2', root / 'mask_test_v2') if v2 else (root / 'train', root / 'test')
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            raise ReIDDatasetError(f'{folder}: folder not found (expected MSMT17 V1 train/ test/ or V2 mask_*_v2/)')
    train = _msmt_list(root / 'list_train.txt', train_dir)
    if include_val:
        train += _msmt_list(root / 'list_val.txt', train_dir)
    return datasets.DatasetDict({
        'train': _to_dataset(train, relabel=True),
        'query': _to_dataset(_msmt_list(root / 'list_query.txt', test_dir), relabel=False),
        'gallery': _to_dataset(_msmt_list(root / 'list_gallery.txt', test_dir), relabel=False),
    })


_LOADERS: Dict[str, Callable[..., datasets.DatasetDict]] = {
    'market1501': lambda root: _standard_layout(root, _market_name),
    'dukemtmc': lambda root: _standard_layout(root, _duke_name),
    'occluded_duke': lambda root: _standard_layout(root, _duke_name),
    'msmt17': _msmt17,
}


def load_reid_dataset(name: str, root, **options) -> datasets.DatasetDict:
    """Load a re-ID dataset from ``root`` as a ``DatasetDict`` with splits ``train``, ``query`` and ``gallery``.

    ``root`` holds ``bounding_box_train/``, ``query/`` and ``bounding_box_test/`` (Market-1501, DukeMTMC-reID,
    Occluded-Duke) or MSMT17's image folders and list files. Options: ``include_val`` (MSMT17 only).
    """
    if name not in _LOADERS:
        raise ValueError(f'unknown dataset {name!r}; available: {", ".join(sorted(_LOADERS))}')
    root = Path(root)
    if not root.is_dir():
        raise ReIDDatasetError(f'{root}: dataset folder not found')
    try:
        return _LOADERS[name](root, **options)
    except TypeError as error:
        if options and 'unexpected keyword' in str(error):
            raise ValueError(f'unknown option(s) {sorted(options)} for dataset {name!r}') from None
        raise
