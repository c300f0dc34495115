"""Human-parsing maps beside a re-ID dataset, for π-VL's part prompts and alignment.

A map is a single-channel PNG of LIP labels (20 classes, SCHP's order: 0 background ... 19 right shoe) at the size
of its image, stored at ``<root>/parsing/<image path relative to root>`` with the suffix ``.png`` (Market-1501:
``<root>/parsing/bounding_box_train/0002_c1s1_000451_03.png``). ``add_parsing_column`` adds its path to a split as
a ``parsing`` column after checking every map once: missing, unreadable, wrongly sized or out-of-range maps are an
error that counts and lists them, unless ``missing='keep'`` is asked for missing ones (their column is None and
training leaves those images out of the part losses).

``region_masks`` turns maps into patch masks over named groups of labels (``SPREID_REGIONS``: the [PART]s of the
AAformer paper's SPReID row, Table IV).
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Literal, Optional, Tuple

import datasets
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .datasets import ReIDDatasetError

__all__ = ['NUM_PARSING_CLASSES', 'SPREID_REGIONS', 'parsing_path', 'add_parsing_column', 'check_parsing_map',
           'label_counts_on_grid', 'region_masks']

NUM_PARSING_CLASSES = 20

# SPReID's five regions (Kalayeh et al., CVPR 2018: foreground, head, upper body, lower body, shoes) as LIP labels.
# The AAformer paper names the method only; which LIP labels make each region is this project's reading of SPReID.
SPREID_REGIONS = {
    'foreground': tuple(range(1, NUM_PARSING_CLASSES)),
    'head': (1, 2, 4, 13),  # hat, hair, sunglasses, face
    'upper_body': (3, 5, 6, 7, 10, 11, 14, 15),  # glove, upper-clothes, dress, coat, jumpsuits, scarf, arms
    'lower_body': (8, 9, 12, 16, 17),  # socks, pants, skirt, legs
    'shoes': (18, 19),
}


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
            'with a human parser (LIP labels in SCHP\'s order: aaformer-hf parse), or train those images without '
            "the part losses (examples/train.py --parsing_missing keep; in Python missing='keep')")
    column: List[Optional[str]] = [None if r == 'missing' else str(p) for p, r in zip(paths, reasons)]
    return split.add_column('parsing', column, feature=datasets.Value('string'))


def _listed(paths: List[str]) -> str:
    return ', '.join(paths[:3]) + (', ...' if len(paths) > 3 else '')


def label_counts_on_grid(parsing: torch.Tensor, grid: Tuple[int, int],
                         num_classes: int = NUM_PARSING_CLASSES) -> torch.Tensor:
    """How many pixels of each label every cell of an equal ``grid`` holds: (B, H, W) labels -> (B, h, w, C)."""
    (B, H, W), (h, w) = parsing.shape, grid
    if H % h or W % w:
        raise ValueError(f'a {H}x{W} parsing map does not split into a {h}x{w} grid of equal cells')
    rows = torch.arange(H, device=parsing.device) // (H // h)
    cols = torch.arange(W, device=parsing.device) // (W // w)
    cell = (torch.arange(B, device=parsing.device)[:, None, None] * h + rows[None, :, None]) * w + cols[None, None, :]
    counts = torch.bincount((cell * num_classes + parsing.long()).flatten(), minlength=B * h * w * num_classes)
    return counts.view(B, h, w, num_classes)


def region_masks(parsing: torch.Tensor, grid: Tuple[int, int], regions=SPREID_REGIONS,
                 min_pixels: int = 1) -> torch.Tensor:
    """Patch masks per region: (B, H, W) LIP labels -> (B, R, h * w) bool, row-major over the ``grid``.

    A patch belongs to EVERY region of which it holds at least ``min_pixels`` pixels - the AAformer paper's SPReID
    row: "if a patch contains multiple semantics, we assign the patch to all the semantics it contains" (1 pixel by
    default; the paper gives no threshold). A region absent from an image has an empty mask.
    """
    counts = label_counts_on_grid(parsing, grid)
    membership = torch.zeros(NUM_PARSING_CLASSES, len(regions), dtype=counts.dtype, device=counts.device)
    for r, labels in enumerate(regions.values()):
        membership[list(labels), r] = 1
    per_region = counts @ membership  # (B, h, w, R) pixels of each region per patch
    return (per_region >= min_pixels).flatten(1, 2).transpose(1, 2)
