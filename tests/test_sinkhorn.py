"""Part assignment (Eq. 3-5) against independent references: POT's Sinkhorn solver, a plain exp-domain SwAV-order
loop written here in float64, and hand-computed stripes."""
import numpy as np
import ot
import pytest
import torch

from aaformer_hf.layers import (
    MultiHeadAutoAlignment, nearest_assign, sinkhorn_assign, sinkhorn_plan, stripe_assignment,
)


def swav_reference(scores: np.ndarray, epsilon: float, iters: int) -> np.ndarray:
    """SwAV's distributed_sinkhorn for one (P, N) problem, literally: exp, global normalisation, then rows (each part
    1/P) and columns (each patch 1/N), in float64 without any stabilisation."""
    q = np.exp(scores.astype(np.float64) / epsilon)
    q /= q.sum()
    p, n = q.shape
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= p
        q /= q.sum(axis=0, keepdims=True)
        q /= n
    return q


def groups_of(plan: torch.Tensor, sizes):
    start = 0
    for size in sizes:
        yield plan[..., start:start + size, :]
        start += size


@pytest.mark.parametrize('log_domain', [True, False])
@pytest.mark.parametrize('sizes', [(2, 3), (6,), (3, 3), (1, 4)])
def test_converged_plan_matches_pot(sizes, log_domain):
    torch.manual_seed(0)
    n, eps = 40, 0.05
    scores = torch.rand(sum(sizes), n, dtype=torch.float64) * 2 - 1
    plan = sinkhorn_plan(scores, sizes, epsilon=eps, num_iters=3000, log_domain=log_domain).double()
    for group_plan, group_scores in zip(groups_of(plan, sizes), groups_of(scores, sizes)):
        p_g = group_scores.shape[0]
        reference = ot.sinkhorn(
            np.full(p_g, 1 / p_g), np.full(n, 1 / n), -group_scores.numpy(), reg=eps, method='sinkhorn_log',
            numItermax=20000, stopThr=1e-12)
        np.testing.assert_allclose(group_plan.numpy(), reference, atol=1e-6)


@pytest.mark.parametrize('iters', [1, 2, 3])
def test_few_iterations_follow_swav_order(iters):
    torch.manual_seed(1)
    sizes = (2, 3)
    scores = torch.rand(4, sum(sizes), 128) * 2 - 1  # cosine range: the float64 exp-domain reference cannot overflow
    plan = sinkhorn_plan(scores, sizes, epsilon=0.05, num_iters=iters)
    for b in range(scores.shape[0]):
        for group_plan, group_scores in zip(groups_of(plan[b], sizes), groups_of(scores[b], sizes)):
            reference = swav_reference(group_scores.numpy(), 0.05, iters)
            np.testing.assert_allclose(group_plan.numpy(), reference, rtol=1e-4, atol=1e-9)


def test_marginals():
    torch.manual_seed(2)
    sizes, n = (2, 3), 128
    scores = torch.rand(3, 12, sum(sizes), n) * 2 - 1
    for iters, row_tol in [(3, 0.2), (500, 1e-5)]:
        plan = sinkhorn_plan(scores, sizes, num_iters=iters)
        for group_plan, p_g in zip(groups_of(plan, sizes), sizes):
            # the last step normalises columns: exact after any number of iterations
            torch.testing.assert_close(group_plan.sum(-2), torch.full_like(group_plan.sum(-2), 1 / n))
            # rows converge to 1/P_g
            rows = group_plan.sum(-1) * p_g
            assert (rows - 1).abs().max() < row_tol


def test_assignment_is_rounded_plan_and_partitions_patches():
    torch.manual_seed(3)
    sizes = (2, 3)
    scores = torch.rand(2, 4, sum(sizes), 128) * 2 - 1
    assigned = sinkhorn_assign(scores, sizes)
    plan = sinkhorn_plan(scores, sizes)
    assert assigned.dtype == torch.bool and assigned.shape == scores.shape
    for group_assigned, group_plan in zip(groups_of(assigned, sizes), groups_of(plan, sizes)):
        assert (group_assigned.sum(-2) == 1).all()  # every patch in exactly one part of every group
        assert torch.equal(group_assigned.float().argmax(-2), group_plan.argmax(-2))


def test_groups_are_independent_problems():
    torch.manual_seed(4)
    scores = torch.rand(2, 5, 64) * 2 - 1
    joint = sinkhorn_plan(scores, (2, 3))
    torch.testing.assert_close(joint[:, :2], sinkhorn_plan(scores[:, :2], (2,)))
    torch.testing.assert_close(joint[:, 2:], sinkhorn_plan(scores[:, 2:], (3,)))


def test_transport_balances_parts_where_nearest_collapses():
    # every patch prefers part 0, as happens when one prototype dominates: nearest-neighbour gives it everything,
    # the equal-partition constraint spreads patches over both parts
    torch.manual_seed(5)
    scores = torch.stack([torch.full((64,), 0.9), torch.rand(64) * 0.5])
    assert nearest_assign(scores, (2,))[0].all()
    sizes = sinkhorn_assign(scores, (2,)).sum(-1)
    assert sizes.min() > 16


@pytest.mark.parametrize('scale', [1e-30, 1.0, 1e3, 1e8])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_stable_for_any_finite_scores(scale, dtype):
    torch.manual_seed(6)
    scores = ((torch.randn(2, 3, 5, 128) * scale).clamp(-6e4, 6e4)).to(dtype)
    plan = sinkhorn_plan(scores, (2, 3))
    assert torch.isfinite(plan).all()
    assigned = sinkhorn_assign(scores, (2, 3))
    for group in groups_of(assigned, (2, 3)):
        assert (group.sum(-2) == 1).all()


def test_extreme_gaps_do_not_produce_nan():
    # with raw scores exp(s / 0.05) overflows fp32 (s > 4.4) and underflows whole columns: the log domain copes
    scores = torch.zeros(1, 3, 16)
    scores[0, 0] = 1e6
    scores[0, 1, :8] = -1e6
    plan = sinkhorn_plan(scores, (3,))
    assert torch.isfinite(plan).all()


def test_nearest_is_argmax_within_each_group():
    torch.manual_seed(7)
    scores = torch.randn(3, 5, 20)
    assigned = nearest_assign(scores, (2, 3))
    assert torch.equal(assigned[:, :2].float().argmax(1), scores[:, :2].argmax(1))
    assert torch.equal(assigned[:, 2:].float().argmax(1), scores[:, 2:].argmax(1))


def test_stripes_by_hand():
    mask = stripe_assignment((2, 3), (16, 8))
    rows = mask.view(5, 16, 8)
    assert rows.all(-1).logical_or(~rows.any(-1)).all()  # whole patch rows only
    bands = [rows[p].any(-1).nonzero().flatten().tolist() for p in range(5)]
    assert bands == [list(range(0, 8)), list(range(8, 16)),
                     [0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]


def test_bad_groups_raise():
    with pytest.raises(ValueError, match='hold 5 parts'):
        sinkhorn_assign(torch.randn(4, 10), (2, 3))
    with pytest.raises(ValueError, match='positive'):
        sinkhorn_assign(torch.randn(2, 10), (2, 0))
    with pytest.raises(ValueError, match='num_iters'):
        MultiHeadAutoAlignment(16, num_heads=2, part_groups=(2,), sinkhorn_iters=0).assign(
            torch.randn(1, 2, 2, 8), torch.randn(1, 2, 10, 8))


@pytest.mark.parametrize('sizes', [(2, 3), (6,)])
def test_exp_domain_equals_log_domain_for_cosine_scores(sizes):
    torch.manual_seed(8)
    scores = torch.rand(4, 12, sum(sizes), 128) * 2 - 1
    for iters in (1, 3, 50):
        torch.testing.assert_close(
            sinkhorn_plan(scores, sizes, num_iters=iters, log_domain=False),
            sinkhorn_plan(scores, sizes, num_iters=iters), rtol=1e-4, atol=1e-9)
    assert torch.equal(sinkhorn_assign(scores, sizes, log_domain=False), sinkhorn_assign(scores, sizes))
    # and against the plain float64 reference, extreme cosines included
    scores[0, 0, 0] = 1.0
    scores[0, 0, 1] = -1.0
    plan = sinkhorn_plan(scores, sizes, log_domain=False)
    np.testing.assert_allclose(plan[0, 0, :sizes[0]].numpy(), swav_reference(scores[0, 0, :sizes[0]].numpy(), 0.05, 3),
                               rtol=1e-4, atol=1e-12)


def test_exp_domain_never_nan_even_outside_its_exact_range():
    scores = torch.rand(2, 5, 128) * 2 - 1
    plan = sinkhorn_plan(scores, (2, 3), epsilon=0.005, log_domain=False)  # e^(-400) underflows: clamped, not NaN
    assert torch.isfinite(plan).all()
