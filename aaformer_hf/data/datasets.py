"""Re-ID datasets in their standard on-disk layouts, as ``datasets.DatasetDict`` (train / query / gallery).

Columns: ``image`` (``datasets.Image``, decoded lazily and always to RGB), ``pid``, ``camid`` (0-based) and
``path``. Training identities are relabelled 0..C-1, the original ids kept in a ``pid_original`` column; query and
gallery keep their original ids. As in every toolkit, junk images (pid -1) are dropped and distractors (pid 0) stay
in the gallery.

Layouts: Market-1501, DukeMTMC-reID, Occluded-Duke (DukeMTMC's file names), MSMT17 V1/V2, CUHK03-NP (labeled or
detected), a custom folder layout (``folder``) and any ``datasets`` repo, on the Hub or saved locally, that has
``train``/``query``/``gallery`` splits with ``image``/``pid``/``camid`` columns (``hub``).

Every image is opened and fully decoded once at load time (threads, with a progress bar), so an unreadable or
truncated file fails here, naming its path, rather than in epoch 37. ``skip_bad_images=True`` drops such files
instead and logs how many and which; ``verify_images=False`` skips the check.
"""
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import datasets
from tqdm.auto import tqdm

from .images import image_problem

__all__ = ['load_reid_dataset', 'load_image_split', 'ReIDDatasetError', 'DATASET_NAMES']

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')
# layouts whose training and test identities share one numbering (so a shared id is a leak); MSMT17's list files
# number training and test identities separately
_DISJOINT_IDS = ('market1501', 'dukemtmc', 'occluded_duke', 'cuhk03', 'folder', 'hub')


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


def _cuhk03_name(path: Path) -> Tuple[int, int]:
    # CUHK03-NP: 0001_c1_1.png: person 1, camera 1 (of the pair), image 1
    match = re.match(r'^(\d+)_c(\d+)_\d+$', path.stem)
    if not match:
        raise ReIDDatasetError(f'{path}: file name does not follow the CUHK03-NP pattern PPPP_cC_N')
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
        if cam < 1:
            raise ReIDDatasetError(f'{path}: camera {cam} in the file name; these layouts number cameras from 1')
        records.append((str(path), pid, cam - 1))
    if not records:
        raise ReIDDatasetError(f'{folder}: no images')
    return records


def _label_map(pids) -> Dict[int, int]:
    """Original identity -> training label 0..C-1, in the order of the ids."""
    return {pid: label for label, pid in enumerate(sorted(set(pids)))}


def _to_dataset(records: List[Tuple[str, int, int]], relabel: bool) -> datasets.Dataset:
    paths, pids, cams = zip(*records)
    columns = {'image': list(paths), 'pid': list(pids), 'camid': list(cams), 'path': list(paths)}
    features = {'image': datasets.Image(mode='RGB'), 'pid': datasets.Value('int64'), 'camid': datasets.Value('int64'),
                'path': datasets.Value('string')}
    if relabel:
        mapping = _label_map(pids)
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
        if cam < 1 or pid < 0:
            raise ReIDDatasetError(f'{list_file}:{number}: camera {cam} / pid {pid}; MSMT17 numbers cameras from 1 '
                                   'and identities from 0')
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


def _cuhk03(root: Path, variant: str = 'labeled') -> datasets.DatasetDict:
    """CUHK03-NP, the 767/700-identity protocol of Zhong et al. (CVPR 2017), in the Market layout under
    ``labeled/`` (hand-drawn boxes) or ``detected/`` (DPM boxes); ``root`` may also be that subfolder itself.

    ``variant`` defaults to 'labeled' (fast-reid's default; torchreid defaults to detected): papers report both,
    so say which one a number is for.
    """
    if variant not in ('labeled', 'detected'):
        raise ValueError(f"cuhk03 variant must be 'labeled' or 'detected', got {variant!r}")
    folder = root / variant if (root / variant).is_dir() else root
    if not (folder / 'bounding_box_train').is_dir():
        raise ReIDDatasetError(f'{root / variant}: folder not found (expected CUHK03-NP\'s {variant}/ with '
                               'bounding_box_train/, query/, bounding_box_test/)')
    return _standard_layout(folder, _cuhk03_name)


def _folder_split(folder: Path) -> List[Tuple[str, int, int]]:
    if not folder.is_dir():
        raise ReIDDatasetError(f'{folder}: folder not found')
    records = []
    for path in sorted(folder.glob('*/*/*')):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        pid_name, cam_name = path.parent.parent.name, path.parent.name
        if not (pid_name.isdigit() and cam_name.isdigit()):
            raise ReIDDatasetError(f'{path}: expected <split>/<pid>/<camid>/<image> with non-negative integer pid '
                                   'and camid folders')
        records.append((str(path), int(pid_name), int(cam_name)))
    if not records:
        raise ReIDDatasetError(f'{folder}: no images (expected <pid>/<camid>/<image> below it)')
    return records


def _folder(root: Path) -> datasets.DatasetDict:
    """A custom layout: ``root/{train,query,gallery}/<pid>/<camid>/<image>``, pid and camid (0-based) being
    non-negative integer folder names. Query and gallery identities must share ids; pid 0 is an ordinary identity
    here (no junk/distractor convention)."""
    return datasets.DatasetDict({split: _to_dataset(_folder_split(root / split), relabel=split == 'train')
                                 for split in ('train', 'query', 'gallery')})


def _relabel(ds: datasets.Dataset) -> datasets.Dataset:
    """pid := rank of pid_original among the split's distinct ids (0..C-1)."""
    mapping = _label_map(ds['pid_original'])
    return ds.map(lambda pid: {'pid': mapping[pid]}, input_columns='pid_original', desc='relabel')


def _load_datasets_repo(source: str, **load_options) -> datasets.DatasetDict:
    """Every split of a ``datasets`` repo: a Hub id or local path, or a folder written by ``save_to_disk``."""
    path = Path(source)
    if (path / 'dataset_dict.json').is_file():
        return datasets.load_from_disk(str(path))
    return datasets.load_dataset(source, **load_options)


def load_image_split(source, split: str, image_column: str = 'image', **load_options) -> datasets.Dataset:
    """One split of any ``datasets`` repo of images (Hub id, local repo or ``save_to_disk`` folder; any split and
    columns, no re-ID layout needed), its image column renamed ``image`` and decoded as stored: readers convert each
    with ``data.images.as_rgb``, which refuses 16/32-bit images instead of clipping them to white. ``load_options``
    go to ``datasets.load_dataset`` (e.g. ``revision``)."""
    loaded = _load_datasets_repo(str(source), **load_options)
    if split not in loaded:
        raise ReIDDatasetError(f'{source}: no split {split!r}; found {sorted(loaded)}')
    ds = loaded[split]
    feature = ds.features.get(image_column)
    if not isinstance(feature, datasets.Image):
        found = [name for name, f in ds.features.items() if isinstance(f, datasets.Image)]
        raise ReIDDatasetError(f'{source} [{split}]: column {image_column!r} is not an image column (image columns: '
                               f'{found or "none"})')
    if image_column != 'image':
        ds = ds.remove_columns([c for c in ('image',) if c in ds.column_names]).rename_column(image_column, 'image')
    return ds.cast_column('image', datasets.Image())  # decoded in its own mode, whatever the repo declared


def _from_datasets_repo(source: str, **load_options) -> datasets.DatasetDict:
    """A ``datasets`` repo (Hub id or local path; a folder written by ``save_to_disk`` also works) with splits
    train/query/gallery and columns image/pid/camid. Training ids are relabelled 0..C-1 as for the other layouts."""
    loaded = _load_datasets_repo(source, **load_options)
    missing = {'train', 'query', 'gallery'} - set(loaded)
    if missing:
        raise ReIDDatasetError(f'{source}: missing split(s) {sorted(missing)}; found {sorted(loaded)}')
    out = {}
    for split in ('train', 'query', 'gallery'):
        ds = loaded[split]
        lacking = {'image', 'pid', 'camid'} - set(ds.column_names)
        if lacking:
            raise ReIDDatasetError(f'{source} [{split}]: missing column(s) {sorted(lacking)}')
        for column in ('pid', 'camid'):
            dtype = getattr(ds.features[column], 'dtype', None)
            if dtype is None or not dtype.startswith(('int', 'uint')):
                raise ReIDDatasetError(f'{source} [{split}]: column {column!r} must hold integers, has {dtype}')
        ds = ds.cast_column('image', datasets.Image())  # converted to RGB on reading (data.images.as_rgb)
        if split == 'train':
            ds = _relabel(ds.add_column('pid_original', list(ds['pid'])))
        out[split] = ds
    return datasets.DatasetDict(out)


_LOADERS: Dict[str, Callable[..., datasets.DatasetDict]] = {
    'market1501': lambda root: _standard_layout(root, _market_name),
    'dukemtmc': lambda root: _standard_layout(root, _duke_name),
    'occluded_duke': lambda root: _standard_layout(root, _duke_name),
    'msmt17': _msmt17,
    'cuhk03': _cuhk03,
    'folder': _folder,
}
DATASET_NAMES = tuple(sorted(_LOADERS)) + ('hub',)


def _verify_images(dsd: datasets.DatasetDict, skip: bool, workers: int = 8) -> datasets.DatasetDict:
    out = {}
    for split, ds in dsd.items():
        if 'path' not in ds.column_names:  # images embedded in a datasets repo: decoded on access instead
            out[split] = ds
            continue
        paths = ds['path']
        with ThreadPoolExecutor(workers) as pool:
            reasons = list(tqdm(pool.map(image_problem, paths), total=len(paths), desc=f'checking {split} images',
                                leave=False, disable=True if len(paths) < 1000 else None))
        bad = [(p, r) for p, r in zip(paths, reasons) if r is not None]
        if bad and not skip:
            listing = '; '.join(f'{p} ({r})' for p, r in bad[:5])
            raise ReIDDatasetError(
                f'{len(bad)} unreadable or truncated image(s) in {split}: {listing}{" ..." if len(bad) > 5 else ""} '
                '(to drop them: examples/train.py --dataset_options \'{"skip_bad_images": true}\'; in Python '
                'skip_bad_images=True)')
        if bad:
            logger.warning('skipped %d unreadable or truncated image(s) in %s: %s', len(bad), split,
                           ', '.join(p for p, _ in bad))
            keep = [i for i, r in enumerate(reasons) if r is None]
            if not keep:
                raise ReIDDatasetError(f'{split}: every image is unreadable')
            ds = ds.select(keep)
            if split == 'train':  # dropped images may take identities with them: relabel again
                ds = _relabel(ds)
        out[split] = ds
    return datasets.DatasetDict(out)


def load_reid_dataset(name: str, root, verify_images: bool = True, skip_bad_images: bool = False,
                      allow_shared_ids: bool = False, **options) -> datasets.DatasetDict:
    """Load a re-ID dataset as a ``DatasetDict`` with splits ``train``, ``query`` and ``gallery``.

    Args:
        name: one of ``DATASET_NAMES``: market1501, dukemtmc, occluded_duke, msmt17, cuhk03, folder, hub.
        root: the dataset folder (for ``hub``: a Hub dataset id or a local ``datasets`` folder).
        verify_images: decode every image file once now, so a bad file fails here with its path.
        skip_bad_images: drop unreadable/truncated files instead of failing (they are counted and logged). 16- and
            32-bit images (PIL modes I;16, I, F) count as bad: PIL's RGB conversion would clip them to white.
        allow_shared_ids: accept training identities that also appear in query/gallery. Off: that is an error
            (train/test leakage), except for Market/Duke's distractor id 0 and for MSMT17, whose list files number
            the two splits separately.
        options: ``include_val`` (msmt17), ``variant`` ('labeled' | 'detected', cuhk03), or ``datasets.load_dataset``
            keyword arguments (hub, e.g. ``revision``).
    """
    if name == 'hub':
        dsd = _from_datasets_repo(str(root), **options)
    else:
        if name not in _LOADERS:
            raise ValueError(f'unknown dataset {name!r}; available: {", ".join(DATASET_NAMES)}')
        root = Path(root)
        if not root.is_dir():
            raise ReIDDatasetError(f'{root}: dataset folder not found')
        try:
            dsd = _LOADERS[name](root, **options)
        except TypeError as error:
            if options and 'unexpected keyword' in str(error):
                raise ValueError(f'unknown option(s) {sorted(options)} for dataset {name!r}') from None
            raise
    if name in _DISJOINT_IDS and not allow_shared_ids:
        _check_disjoint_identities(dsd, root, distractor=0 if name in ('market1501', 'dukemtmc', 'occluded_duke')
                                   else None)
    return _verify_images(dsd, skip_bad_images) if verify_images else dsd


def _check_disjoint_identities(dsd: datasets.DatasetDict, root, distractor: Optional[int]) -> None:
    """Training identities must not reappear in query or gallery: that would be train/test leakage."""
    train = set(dsd['train']['pid_original'])
    shared = (train & (set(dsd['query']['pid']) | set(dsd['gallery']['pid']))) - {distractor}
    if shared:
        listed = ', '.join(str(pid) for pid in sorted(shared)[:10])
        raise ReIDDatasetError(
            f'{root}: {len(shared)} identities are in both the training and the test split ({listed}'
            f'{" ..." if len(shared) > 10 else ""}); re-ID protocols keep them disjoint. Pass allow_shared_ids=True '
            'if the two splits number identities independently')
