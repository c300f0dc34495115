"""PK sampler: batch structure, determinism, replacement for small identities, and two simulated processes."""
import collections

import pytest

from aaformer_hf.data import PKSampler

# 23 identities; identity i has (i % 6) + 1 images
PIDS = [pid for pid in range(23) for _ in range(pid % 6 + 1)]


def batches(sampler, batch_size):
    items = list(sampler)
    return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


def test_batches_hold_p_identities_times_k_images():
    sampler = PKSampler(PIDS, batch_size=12, num_instances=4, seed=0)
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
                assert set(picks) <= {i for i, p in enumerate(PIDS) if p == pid}  # with replacement


def test_deterministic_per_seed_and_epoch():
    a, b = PKSampler(PIDS, 8, 2, seed=3), PKSampler(PIDS, 8, 2, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)


def test_two_processes_get_disjoint_whole_identities():
    ranks = [PKSampler(PIDS, batch_size=8, num_instances=2, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(4)
    per_rank = [batches(s, 8) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == 23 // (4 * 2)  # same number of steps on both
    ids = [{PIDS[i] for batch in out for i in batch} for out in per_rank]
    assert not ids[0] & ids[1]  # an identity lives on one process only
    assert len(ids[0] | ids[1]) == 2 * 2 * 4  # 16 of 23 identities this epoch; the 7 others wait
    for out in per_rank:
        for batch in out:
            assert set(collections.Counter(PIDS[i] for i in batch).values()) == {2}
    # over epochs, every identity gets its turn
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
