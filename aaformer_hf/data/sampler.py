"""P x K identity sampling for triplet-style re-ID training ("In Defense of the Triplet Loss", Hermans et al.)."""
import math
from collections import defaultdict
from typing import Iterator, List, Optional, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ['PKSampler']


class PKSampler(Sampler[int]):
    """Batches of P identities x K images, deterministic for a seed and epoch, and correct across processes.

    Each epoch every identity appears at most once, as one group of K images (drawn without replacement when it has
    at least K images, with replacement otherwise): the identities are shuffled and dealt to processes whole, so no
    identity is split across processes and every batch of a process holds P complete groups of its own. When the
    number of identities is not a multiple of P x processes, the remainder (fewer than P x processes identities, a
    different set each epoch) waits for a later epoch, so that every process runs the same number of full batches. The sampler
    yields indices; wrap it in a ``BatchSampler`` of ``batch_size`` or pass ``batch_size`` to the ``DataLoader``.

    Args:
        pids: identity of every dataset item.
        batch_size: P * K.
        num_instances: K, images per identity in a batch.
        seed: base seed; the epoch's order depends only on (seed, epoch).
        num_replicas, rank: the process group (default: a single process).
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int = 4, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if num_instances < 1 or batch_size % num_instances:
            raise ValueError(
                f'batch_size ({batch_size}) must be a positive multiple of num_instances ({num_instances})')
        if not 0 <= rank < num_replicas:
            raise ValueError(f'rank ({rank}) must be in [0, num_replicas={num_replicas})')
        self.num_instances = num_instances
        self.ids_per_batch = batch_size // num_instances
        self.seed, self.epoch = seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        groups = defaultdict(list)
        for index, pid in enumerate(pids):
            groups[int(pid)].append(index)
        self.groups: List[List[int]] = [groups[pid] for pid in sorted(groups)]
        self.batches_per_epoch = len(self.groups) // (self.ids_per_batch * num_replicas)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f'{len(self.groups)} identities cannot fill one batch of {self.ids_per_batch} identities on each of '
                f'{num_replicas} process(es)')

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch * self.ids_per_batch * self.num_instances

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.groups), generator=generator).tolist()
        used = self.batches_per_epoch * self.ids_per_batch * self.num_replicas
        mine = order[:used][self.rank::self.num_replicas]  # whole identities, dealt round-robin
        for identity in mine:
            items = self.groups[identity]
            if len(items) >= self.num_instances:
                picks = torch.randperm(len(items), generator=generator)[:self.num_instances]
            else:
                picks = torch.randint(len(items), (self.num_instances,), generator=generator)
            yield from (items[i] for i in picks.tolist())
