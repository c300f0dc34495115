"""Training and evaluation loaders for re-ID ``datasets``: PK batches whose augmentation is a pure function of
(seed, epoch, position).

Seeding every item's augmentation from its position in the epoch (not from a worker's RNG stream) makes a resumed run
see exactly the images an uninterrupted one would, whatever the number of workers and wherever it resumed.
"""
import random
from typing import Callable, Iterator, Optional, Tuple

import datasets
import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torch.utils.data import DataLoader, Dataset, Sampler

from .images import as_rgb
from .sampler import PKSampler

__all__ = ['ReIDItems', 'SeededEpochSampler', 'train_loader', 'eval_loader']


class ReIDItems(Dataset):
    """A re-ID ``datasets.Dataset`` as (pixels, pid, camid) items. A key is an index, or (index, seed) to run the
    transform under that seed (the caller's RNG state is left as it was).

    With ``parsing=True`` (the split has a ``parsing`` column, ``aaformer_hf.data.parsing``) items are (pixels,
    pid, camid, parsing, has_parsing): the parsing map transformed with the image (same flip, crop) as an int64
    (H, W) label map, and False with an all-background map for an image whose map is missing.
    """

    def __init__(self, dataset: datasets.Dataset, transform: Callable, parsing: bool = False) -> None:
        if parsing and 'parsing' not in dataset.column_names:
            raise ValueError('parsing=True needs a parsing column (aaformer_hf.data.parsing.add_parsing_column)')
        self.dataset, self.transform, self.parsing = dataset, transform, parsing

    def __len__(self) -> int:
        return len(self.dataset)

    def _load(self, index: int):
        try:
            row = self.dataset[index]
            row['image'] = as_rgb(row['image'], row.get('path', f'row {index}'))  # 16/32-bit refused, as everywhere
            return row
        except Exception as error:  # name the file: PIL's own message does not
            has_path = 'path' in self.dataset.column_names
            # only the path column: reading the row again would decode the failing image again
            path = self.dataset.select_columns(['path'])[index]['path'] if has_path else '?'
            raise RuntimeError(f'cannot load item {index} ({path}): {error}') from error

    def _inputs(self, row) -> tuple:
        if not self.parsing:
            return (row['image'],)
        image = row['image']
        if row['parsing'] is None:
            labels = torch.zeros(image.size[1], image.size[0], dtype=torch.uint8)
        else:
            with Image.open(row['parsing']) as parsing:
                labels = torch.from_numpy(np.array(parsing, dtype=np.uint8))
        return image, tv_tensors.Mask(labels.unsqueeze(0))

    def __getitem__(self, key) -> tuple:
        index, seed = key if isinstance(key, tuple) else (key, None)
        row = self._load(int(index))
        inputs = self._inputs(row)
        if seed is None:
            out = self.transform(*inputs)
        else:
            python_state = random.getstate()  # timm's RandomErasing draws from `random`, torchvision from torch
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed also seeds every accelerator (~0.4 ms an item)
                torch.default_generator.manual_seed(seed)
                random.seed(seed)
                out = self.transform(*inputs)
            random.setstate(python_state)
        if not self.parsing:
            return out, row['pid'], row['camid']
        pixels, parsing = out
        return pixels, row['pid'], row['camid'], parsing.as_subclass(torch.Tensor)[0].long(), \
            row['parsing'] is not None


class SeededEpochSampler(Sampler):
    """This process's items of one PK epoch as (index, seed) keys, from batch ``start_batch`` on."""

    def __init__(self, pk: PKSampler, seed: int) -> None:
        self.pk, self.seed = pk, seed
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self.pk.set_epoch(epoch)

    @property
    def batch_size(self) -> int:
        return self.pk.ids_per_batch * self.pk.num_instances

    def __len__(self) -> int:
        return len(self.pk) - self.start_batch * self.batch_size

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        skip = self.start_batch * self.batch_size
        base = ((self.seed * 1_000_003 + self.epoch) * 4_099 + self.pk.rank) * 10_000_019
        for position, index in enumerate(self.pk):
            if position >= skip:
                yield index, (base + position) % 2 ** 63


def _loader_kwargs(num_workers: int, seed: int) -> dict:
    return dict(num_workers=num_workers, pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
                # an explicit generator: creating an iterator must not draw from the global RNG (exact resume)
                generator=torch.Generator().manual_seed(seed))


def train_loader(dataset: datasets.Dataset, transform: Callable, batch_size: int, num_instances: int, seed: int,
                 num_workers: int, num_replicas: int = 1, rank: int = 0, epoch: str = 'images',
                 parsing: bool = False) -> Tuple[DataLoader, SeededEpochSampler]:
    """PK batches of ``batch_size`` (over all processes) for this process; returns the loader and its sampler.
    ``parsing``: items carry their parsing maps (``ReIDItems``)."""
    if batch_size % (num_instances * num_replicas):
        raise ValueError(f'batch_size ({batch_size}) must be divisible by num_instances x processes '
                         f'({num_instances} x {num_replicas})')
    per_process = batch_size // num_replicas
    pk = PKSampler(dataset['pid'], per_process, num_instances, seed=seed, num_replicas=num_replicas, rank=rank,
                   epoch=epoch)
    sampler = SeededEpochSampler(pk, seed)
    loader = DataLoader(ReIDItems(dataset, transform, parsing), batch_size=per_process, sampler=sampler, drop_last=True,
                        **_loader_kwargs(num_workers, seed))
    return loader, sampler


def eval_loader(dataset: datasets.Dataset, transform: Callable, batch_size: int, num_workers: int,
                seed: Optional[int] = 0, parsing: bool = False) -> DataLoader:
    return DataLoader(ReIDItems(dataset, transform, parsing), batch_size=batch_size, shuffle=False,
                      **_loader_kwargs(num_workers, seed))
