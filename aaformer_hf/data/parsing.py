"""Human-parsing maps beside a re-ID dataset, for π-VL's part prompts and alignment.

A map is a single-channel PNG of LIP labels (20 classes, SCHP's order: 0 background ... 19 right shoe) at the size
of its image, stored at ``<root>/parsing/<image path relative to root>`` with the suffix ``.png`` (Market-1501:
``<root>/parsing/bounding_box_train/0002_c1s1_000451_03.png``). ``add_parsing_column`` adds its path to a split as
a ``parsing`` column after checking every map once: missing, unreadable, wrongly sized or out-of-range maps are an
error that counts and lists them, unless ``missing='keep'`` is asked for missing ones (their column is None and
training leaves those images out of the part losses).
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Literal, Optional, Tuple

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .datasets import ReIDDatasetError

__all__ = ['NUM_PARSING_CLASSES', 'parsing_path', 'add_parsing_column', 'check_parsing_map']

NUM_PARSING_CLASSES = 20


def parsing_path(image_path: str, root) -> Path:
    """Where the parsing map of ``image_path`` (a file under ``root``) lives."""
    relative = Path(image_path).resolve().relative_to(Path(root).resolve())
    return Path(root) / 'parsing' / relative.with_suffix('.png')


def check_parsing_map(path: Path, image_size: Optional[Tuple[int, int]] = None) -> Optional[str]:
    """None if ``path`` is a readable single-channel map of labels 0..19 (of ``image_size`` (W, H) when given),
    else the reason."""
    try:
        with Image.open(path) as parsing:
            if parsing.mode not in ('L', 'P'):
                return f'mode {parsing.mode}; expected a single-channel (L or P) label image'
            if image_size is not None and parsing.size != tuple(image_size):
                return f'size {parsing.size[0]}x{parsing.size[1]}, its image is {image_size[0]}x{image_size[1]}'
            top = int(np.asarray(parsing).max())
    except FileNotFoundError:
        return 'missing'
    except Exception as error:  # PIL raises many types
        return f'{type(error).__name__}: {error}'
    if top >= NUM_PARSING_CLASSES:
        return f'label {top}; LIP labels are 0..{NUM_PARSING_CLASSES - 1}'
    return None


def _image_size(path: str) -> Tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def add_parsing_column(split: datasets.Dataset, root, missing: Literal['error', 'keep'] = 'error',
                       workers: int = 8) -> datasets.Dataset:
    """``split`` with a ``parsing`` column (the map's path, None where missing and ``missing='keep'``).

    Every map is opened once here, so a bad one fails now, naming it, not mid-training.
    """
    if missing not in ('error', 'keep'):
        raise ValueError(f"missing must be 'error' or 'keep', got {missing!r}")
    if 'path' not in split.column_names:
        raise ReIDDatasetError('parsing maps are found beside image files; this dataset has no path column')
    images = split['path']
    paths = [parsing_path(p, root) for p in images]

    def check(i: int) -> Optional[str]:
        return check_parsing_map(paths[i], _image_size(images[i]))

    with ThreadPoolExecutor(workers) as pool:
        reasons = list(tqdm(pool.map(check, range(len(paths))), total=len(paths), desc='checking parsing maps',
                            leave=False, disable=True if len(paths) < 1000 else None))
    absent = [str(paths[i]) for i, r in enumerate(reasons) if r == 'missing']
    bad = [f'{paths[i]} ({r})' for i, r in enumerate(reasons) if r not in (None, 'missing')]
    if bad:
        raise ReIDDatasetError(f'{len(bad)} bad parsing map(s): {"; ".join(bad[:5])}{" ..." if len(bad) > 5 else ""}')
    if absent and missing == 'error':
        raise ReIDDatasetError(
            f'{len(absent)} of {len(paths)} images have no parsing map (expected at {_listed(absent)}); write them '
            'with a human parser (LIP labels in SCHP\'s order), or train those images without the part losses '
            "(missing='keep')")
    column: List[Optional[str]] = [None if r == 'missing' else str(p) for p, r in zip(paths, reasons)]
    return split.add_column('parsing', column, feature=datasets.Value('string'))


def _listed(paths: List[str]) -> str:
    return ', '.join(paths[:3]) + (', ...' if len(paths) > 3 else '')
