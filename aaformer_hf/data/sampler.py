"""P x K identity sampling for triplet-style re-ID training ("In Defense of the Triplet Loss", Hermans et al.)."""
from collections import defaultdict
from typing import Iterator, List, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ['PKSampler', 'EPOCH_MODES']

EPOCH_MODES = ('images', 'identities')


class PKSampler(Sampler[int]):
    """Batches of P identities x K images, deterministic for a seed and epoch, and correct across processes.

    ``epoch='images'`` (default) is the epoch of the toolkits AAformer and π-VL train with (BoT, TransReID,
    CLIP-ReID: ``RandomIdentitySampler``): about every training image once. Each identity's images are shuffled and
    cut into groups of K; the last short group is topped up with images of the same identity (drawn without
    replacement from its other images when it has at least K, so a group never repeats an image then; with
    replacement otherwise). Each step draws P x processes identities that still have groups left, uniformly at
    random, takes one group of each and deals P whole groups to every process. Where the toolkits stop as soon as
    fewer than P identities have groups left (so the epoch length varies by draw and identities with many images
    lose their last groups), this sampler also draws, once the end of the epoch nears, the identities whose groups
    would otherwise be left over: every epoch then has the same, largest possible number of steps (``steps``: the
    largest T with sum_i min(groups_i, T) >= P x processes x T) and leaves out fewer than P x processes groups.

    ``epoch='identities'`` shows each identity at most once, as one group of K (drawn without replacement when it
    has at least K images, with replacement otherwise); identities are shuffled and dealt to processes whole, the
    remainder (fewer than P x processes identities, a different set each epoch) waits for a later epoch. About 4x
    (Market-1501) to 7x (MSMT17) shorter than the standard epoch.

    Either way an identity's K images of a step are on one process, every process runs the same number of full
    batches, and the order depends only on (seed, epoch). The sampler yields indices; wrap it in a ``BatchSampler``
    of ``batch_size`` or pass ``batch_size`` to the ``DataLoader``.

    Args:
        pids: identity of every dataset item.
        batch_size: P * K (this process's batch).
        num_instances: K, images per identity in a batch.
        seed: base seed; the epoch's order depends only on (seed, epoch).
        num_replicas, rank: the process group (default: a single process).
        epoch: ``'images'`` (standard) or ``'identities'`` (one group per identity).
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int = 4, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, epoch: str = 'images') -> None:
        if num_instances < 1 or batch_size < 1 or batch_size % num_instances:
            raise ValueError(
                f'batch_size ({batch_size}) must be a positive multiple of num_instances ({num_instances})')
        if not 0 <= rank < num_replicas:
            raise ValueError(f'rank ({rank}) must be in [0, num_replicas={num_replicas})')
        if epoch not in EPOCH_MODES:
            raise ValueError(f'epoch must be one of {EPOCH_MODES}, got {epoch!r}')
        self.num_instances = num_instances
        self.ids_per_batch = batch_size // num_instances
        self.seed, self.epoch, self.mode = seed, 0, epoch
        self.num_replicas, self.rank = num_replicas, rank
        groups = defaultdict(list)
        for index, pid in enumerate(pids):
            groups[int(pid)].append(index)
        self.groups: List[List[int]] = [groups[pid] for pid in sorted(groups)]
        per_step = self.ids_per_batch * num_replicas
        if epoch == 'identities':
            self.batches_per_epoch = len(self.groups) // per_step
        else:
            self.group_counts = torch.tensor([-(-len(items) // num_instances) for items in self.groups])
            self.batches_per_epoch = _most_steps(self.group_counts, per_step)
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
        if self.mode == 'identities':
            yield from self._one_group_per_identity(generator)
        else:
            yield from self._every_image(generator)

    def _one_group_per_identity(self, generator: torch.Generator) -> Iterator[int]:
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

    def _every_image(self, generator: torch.Generator) -> Iterator[int]:
        per_step = self.ids_per_batch * self.num_replicas
        queues = [self._groups_of(items, generator) for items in self.groups]
        left = self.group_counts.clone()
        for step in range(self.batches_per_epoch):
            remaining = self.batches_per_epoch - step
            # identities with at least as many groups as steps remain must mostly be drawn now, or the remaining
            # steps could not all be filled; draw just enough of them (`forced`), the rest uniformly
            capped = left.clamp(max=remaining)
            slack = int(capped.sum()) - per_step * remaining
            saturated = torch.nonzero(left >= remaining).flatten()
            forced = saturated[torch.randperm(len(saturated), generator=generator)[:max(0, len(saturated) - slack)]]
            available = left > 0
            available[forced] = False
            others = torch.nonzero(available).flatten()
            others = others[torch.randperm(len(others), generator=generator)[:per_step - len(forced)]]
            chosen = torch.cat([forced, others])
            chosen = chosen[torch.randperm(len(chosen), generator=generator)]  # forced ones on any process
            left[chosen] -= 1
            taken = [queues[identity].pop() for identity in chosen.tolist()]  # on every process, in step
            for group in taken[self.rank::self.num_replicas]:
                yield from group

    def _groups_of(self, items: List[int], generator: torch.Generator) -> List[List[int]]:
        """An identity's images shuffled into groups of K (the last topped up), in the order they are taken."""
        k = self.num_instances
        shuffled = [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]
        groups = [shuffled[i:i + k] for i in range(0, len(shuffled), k)]
        short = k - len(groups[-1])
        if short:
            if len(items) >= k:  # from the identity's other images: a group never repeats an image
                others = shuffled[:len(shuffled) - len(groups[-1])]
                groups[-1] += [others[i] for i in torch.randperm(len(others), generator=generator)[:short].tolist()]
            else:
                groups[-1] += [items[i] for i in torch.randint(len(items), (short,), generator=generator).tolist()]
        return groups[::-1]  # popped from the end


def _most_steps(group_counts: torch.Tensor, per_step: int) -> int:
    """The largest T such that T steps of ``per_step`` distinct identities, identity i used at most
    ``group_counts[i]`` times, exist: sum_i min(count_i, T) >= per_step * T (the left side grows by at most the
    number of identities per unit of T, the right by per_step, so the condition holds up to some T and then fails)."""
    low, high = 0, int(group_counts.sum()) // per_step
    while low < high:
        middle = (low + high + 1) // 2
        if int(group_counts.clamp(max=middle).sum()) >= per_step * middle:
            low = middle
        else:
            high = middle - 1
    return low
