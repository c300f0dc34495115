"""PK sampler: the standard epoch (every image about once) against hand counts, batch structure, determinism,
top-ups, two simulated processes; and the one-group-per-identity epoch."""
import collections

import pytest

from aaformer_hf.data import PKSampler

# 23 identities; identity i has (i % 6) + 1 images
PIDS = [pid for pid in range(23) for _ in range(pid % 6 + 1)]
# a small uneven set for hand counts: 7 identities with 1, 3, 4, 5, 9, 13 and 2 images
UNEVEN_COUNTS = [1, 3, 4, 5, 9, 13, 2]
UNEVEN = [pid for pid, n in enumerate(UNEVEN_COUNTS) for _ in range(n)]


def batches(sampler, batch_size):
    items = list(sampler)
    return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


def images_of(pids, pid):
    return [i for i, p in enumerate(pids) if p == pid]


@pytest.mark.parametrize('ids_per_batch, steps', [
    # groups of K=4: ceil(n/4) = 1, 1, 1, 2, 3, 4, 1 (13 groups). P=2: 6 steps use 12 groups (7 would need 14).
    # P=3: 4 steps use 12 groups; 5 would need 15.
    (2, 6), (3, 4)])
def test_standard_epoch_length_is_the_hand_count(ids_per_batch, steps):
    sampler = PKSampler(UNEVEN, batch_size=4 * ids_per_batch, num_instances=4, seed=1)
    assert sampler.batches_per_epoch == steps
    for epoch in range(10):
        sampler.set_epoch(epoch)
        out = batches(sampler, 4 * ids_per_batch)
        assert len(out) == steps and len(sampler) == steps * 4 * ids_per_batch
        for batch in out:
            counts = collections.Counter(UNEVEN[i] for i in batch)
            assert len(counts) == ids_per_batch and set(counts.values()) == {4}


def test_one_identity_with_most_images_limits_the_epoch():
    # groups 10, 1, 1, 1 with P=2: every step needs two different identities, so 3 steps (the big one can fill only
    # one slot a step), not 13 // 2 = 6
    pids = [0] * 40 + [1] * 4 + [2] * 4 + [3] * 4
    sampler = PKSampler(pids, batch_size=8, num_instances=4)
    assert sampler.batches_per_epoch == 3
    for batch in batches(sampler, 8):
        assert collections.Counter(pids[i] for i in batch)[0] == 4  # the big identity is in every step


def test_every_image_once_except_top_ups():
    sampler = PKSampler(UNEVEN, batch_size=8, num_instances=4, seed=0)
    for epoch in range(20):
        sampler.set_epoch(epoch)
        out = batches(sampler, 8)
        used = collections.Counter(i for batch in out for i in batch)
        groups_left_out = 13 - 6 * 2
        per_identity = collections.Counter(UNEVEN[i] for i in used.elements())
        complete = 0
        for pid, n in enumerate(UNEVEN_COUNTS):
            groups = -(-n // 4)
            appearances = per_identity[pid]
            assert appearances % 4 == 0
            if appearances == groups * 4:  # all its groups used: every image at least once, repeats = top-ups
                complete += 1
                assert {i for i in used if UNEVEN[i] == pid} == set(images_of(UNEVEN, pid))
            else:
                assert appearances == (groups - 1) * 4
        assert complete == len(UNEVEN_COUNTS) - groups_left_out
        # within a group of an identity with >= K images no image repeats (top-ups come from its other images)
        for batch in out:
            for pid in {UNEVEN[i] for i in batch}:
                group = [i for i in batch if UNEVEN[i] == pid]
                if UNEVEN_COUNTS[pid] >= 4:
                    assert len(set(group)) == 4
                else:
                    assert set(group) == set(images_of(UNEVEN, pid))  # all its images, topped up by repeats


def test_standard_epoch_at_scale_uses_every_image():
    # 751 identities with 2..30 images, like Market-1501's training set; 16 x 4 batches
    counts = [2 + (pid * 7) % 29 for pid in range(751)]
    pids = [pid for pid, n in enumerate(counts) for _ in range(n)]
    sampler = PKSampler(pids, batch_size=64, num_instances=4, seed=3)
    total_groups = sum(-(-n // 4) for n in counts)
    assert sampler.batches_per_epoch == total_groups // 16  # no identity dominates: all but < 16 groups
    used = set(sampler)
    assert len(used) >= len(pids) - 15 * 4


def test_deterministic_per_seed_and_epoch():
    for mode in ('images', 'identities'):
        a, b = PKSampler(PIDS, 8, 2, seed=3, epoch=mode), PKSampler(PIDS, 8, 2, seed=3, epoch=mode)
        assert list(a) == list(b)
        a.set_epoch(1)
        assert list(a) != list(b)
        b.set_epoch(1)
        assert list(a) == list(b)
        assert list(PKSampler(PIDS, 8, 2, seed=4, epoch=mode)) != list(b)


def test_two_processes_standard_epoch():
    ranks = [PKSampler(UNEVEN, batch_size=4, num_instances=4, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    single = PKSampler(UNEVEN, batch_size=8, num_instances=4, seed=5)
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch == single.batches_per_epoch == 6
    for epoch in range(10):
        for sampler in ranks + [single]:
            sampler.set_epoch(epoch)
        per_rank = [batches(s, 4) for s in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == 6
        for step, (a, b) in enumerate(zip(*per_rank)):
            assert len({UNEVEN[i] for i in a}) == len({UNEVEN[i] for i in b}) == 1  # one whole group each
            assert UNEVEN[a[0]] != UNEVEN[b[0]]  # an identity's group of a step lives on one process
        # together the processes draw what one process with the whole batch would (same groups, same images)
        together = sorted(i for out in per_rank for batch in out for i in batch)
        assert together == sorted(single)


def test_identities_epoch_one_group_per_identity():
    sampler = PKSampler(PIDS, batch_size=12, num_instances=4, seed=0, epoch='identities')
    out = batches(sampler, 12)
    assert len(out) == 23 // 3 == sampler.batches_per_epoch and len(list(sampler)) == len(sampler)
    seen = []
    for batch in out:
        counts = collections.Counter(PIDS[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {4}
        seen += list(counts)
    assert len(seen) == len(set(seen))  # no identity twice in an epoch
    for batch in out:
        for pid in {PIDS[i] for i in batch}:
            picks = [i for i in batch if PIDS[i] == pid]
            if pid % 6 + 1 >= 4:
                assert len(set(picks)) == 4  # enough images: no repeats
            else:
                assert set(picks) <= set(images_of(PIDS, pid))  # with replacement


def test_identities_epoch_two_processes_get_disjoint_whole_identities():
    ranks = [PKSampler(PIDS, batch_size=8, num_instances=2, seed=5, num_replicas=2, rank=r, epoch='identities')
             for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(4)
    per_rank = [batches(s, 8) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == 23 // (4 * 2)  # same number of steps on both
    ids = [{PIDS[i] for batch in out for i in batch} for out in per_rank]
    assert not ids[0] & ids[1]  # an identity lives on one process only
    assert len(ids[0] | ids[1]) == 2 * 2 * 4  # 16 of 23 identities this epoch; the 7 others wait
    seen = set()
    for epoch in range(20):
        for sampler in ranks:
            sampler.set_epoch(epoch)
            seen |= {PIDS[i] for i in sampler}
    assert seen == set(range(23))


def test_bad_arguments():
    with pytest.raises(ValueError, match='multiple of num_instances'):
        PKSampler(PIDS, batch_size=10, num_instances=4)
    with pytest.raises(ValueError, match='cannot fill one batch'):
        PKSampler(PIDS, batch_size=4 * 30, num_instances=4)
    with pytest.raises(ValueError, match='cannot fill one batch'):
        PKSampler(PIDS, batch_size=4 * 30, num_instances=4, epoch='identities')
    with pytest.raises(ValueError, match="epoch must be one of"):
        PKSampler(PIDS, batch_size=8, num_instances=4, epoch='all')
