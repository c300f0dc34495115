"""Re-ID evaluation: a hand-computed case, and the chunked evaluator against the straightforward numpy reference."""
import numpy as np
import pytest
import torch

from aaformer_hf import evaluation
from aaformer_hf.reid.evaluation import evaluate, flip_features
from benchmarks.reid_eval_reference import evaluate_reference


def test_hand_computed_case():
    # 1-D features (second coordinate 0): distance grows with |x_query - x_gallery|
    g_x = [0.5, 1.0, 2.0, 3.0, 4.0, 5.0]
    g_pids = [1, 2, 1, 0, 1, 3]  # pid 0 is a distractor
    g_cams = [0, 1, 1, 1, 2, 0]
    q_x = [0.0, 1.1, 2.5, 5.0]
    q_pids = [1, 2, 4, 3]
    q_cams = [0, 0, 1, 0]
    as_feats = lambda xs: np.stack([np.asarray(xs), np.zeros(len(xs))], 1)  # noqa: E731
    out = evaluate(as_feats(q_x), as_feats(g_x), q_pids, g_pids, q_cams, g_cams, max_rank=6)
    # query 0: g0 is same pid + same camera (junk) -> ranking g1-, g2+, g3-, g4+, g5- : AP (1/2 + 2/4)/2, INP 2/4
    # query 1: g1 (pid 2, other camera) first: AP 1, INP 1
    # query 2: pid 4 is not in the gallery; query 3: its only match g5 shares its camera -> both skipped
    assert out['num_valid_queries'] == 2 and out['num_skipped_queries'] == 2
    assert out['mAP'] == pytest.approx((0.5 + 1.0) / 2)
    assert out['mINP'] == pytest.approx((0.5 + 1.0) / 2)
    np.testing.assert_allclose(out['cmc'], [0.5, 1, 1, 1, 1, 1])


@pytest.mark.parametrize('budget', [0, 10 ** 9])  # force the sorting path, then the comparing path
@pytest.mark.parametrize('clustered', [False, True])
@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
@pytest.mark.parametrize('chunk_size', [1, 7, 1000])
def test_matches_numpy_reference(metric, chunk_size, clustered, budget, monkeypatch):
    monkeypatch.setattr(evaluation, '_COMPARE_BUDGET', budget)
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, 12, 40), rng.integers(0, 12, 300)
    centres = rng.normal(size=(12, 16)) * (3 if clustered else 0)  # clustered: positives near the top
    qf, gf = centres[q_pids] + rng.normal(size=(40, 16)), centres[g_pids] + rng.normal(size=(300, 16))
    q_cams, g_cams = rng.integers(0, 4, 40), rng.integers(0, 4, 300)
    fast = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric, chunk_size=chunk_size)
    ref = evaluate_reference(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric)
    assert fast['num_valid_queries'] == ref['num_valid_queries']
    np.testing.assert_allclose(fast['cmc'], ref['cmc'], atol=1e-6)
    assert fast['mAP'] == pytest.approx(ref['mAP'], abs=1e-6)
    assert fast['mINP'] == pytest.approx(ref['mINP'], abs=1e-6)


def test_normalize_equals_cosine_ranking():
    rng = np.random.default_rng(1)
    qf, gf = rng.normal(size=(20, 8)) * 5, rng.normal(size=(100, 8))
    pids = dict(q_pids=rng.integers(0, 5, 20), g_pids=rng.integers(0, 5, 100))
    cams = dict(q_camids=rng.integers(0, 2, 20), g_camids=rng.integers(0, 2, 100))
    a = evaluate(qf, gf, **pids, **cams, normalize=True)
    b = evaluate(qf, gf, **pids, **cams, metric='cosine')
    assert a['mAP'] == pytest.approx(b['mAP'], abs=1e-6)


def test_flip_features_averages_the_mirror():
    images = torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).view(2, 3, 4, 2)
    embed = lambda x: x[..., 0].flatten(1)  # noqa: E731  a feature that sees only the left column
    torch.testing.assert_close(flip_features(embed, images), (images[..., 0] + images[..., 1]).flatten(1) / 2)


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match='g_camids'):
        evaluate(np.zeros((2, 4)), np.zeros((3, 4)), [1, 2], [1, 2, 3], [0, 0], [0, 1])
    with pytest.raises(ValueError, match='no query has a positive'):
        evaluate(np.zeros((1, 4)), np.zeros((2, 4)), [1], [2, 3], [0], [0, 1])
    with pytest.raises(ValueError, match='q_pids must be integers, got non-integral values such as 1.5'):
        evaluate(np.zeros((2, 4)), np.zeros((3, 4)), [1.5, 2], [1, 2, 3], [0, 0], [0, 1, 1])
    assert evaluate(np.eye(2, 4), np.eye(3, 4), [1.0, 2.0], [1, 2, 3], [0, 0], [1, 1, 1])['mAP'] == 1.0
    with pytest.raises(ValueError, match=r'0 gallery items \(the gallery is empty\)'):
        evaluate(np.zeros((2, 4)), np.zeros((0, 4)), [1, 2], [], [0, 0], [])


@pytest.mark.parametrize('bad_value', [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused_with_row_counts(bad_value):
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(5, 4)), rng.normal(size=(9, 4))
    labels = ([1, 2, 3, 1, 2], [1, 2, 3] * 3, [0] * 5, [1] * 9)
    assert evaluate(qf, gf, *labels)['num_valid_queries'] == 5
    qf[[1, 3], 2] = bad_value
    gf[4, 0] = bad_value
    with pytest.raises(ValueError, match=r'not finite \(NaN or Inf\) in 2 of 5 query rows and 1 of 9 gallery rows'):
        evaluate(qf, gf, *labels)
    with pytest.raises(ValueError, match='not finite'):  # an all-NaN model must not evaluate "perfectly"
        evaluate(np.full((5, 4), np.nan), np.full((9, 4), np.nan), *labels)
    with pytest.raises(ValueError, match='not finite'):  # normalising first hides nothing
        evaluate(torch.from_numpy(qf).float(), torch.from_numpy(gf).float(), *labels, normalize=True)
    distmat = rng.random((5, 9))
    distmat[0, 3] = bad_value
    with pytest.raises(ValueError, match='non-finite .* in 1 of 5 query rows'):
        evaluate(None, None, *labels, distmat=distmat)
    with pytest.raises(ValueError, match=r'not finite \(NaN or Inf\) in 3 of 14 rows'):
        evaluation.re_rank(torch.from_numpy(qf), torch.from_numpy(gf), k1=3, k2=2)


@pytest.mark.parametrize('budget', [0, 10 ** 9])
def test_exact_ties_are_ordered_by_gallery_index_like_a_stable_sort(budget, monkeypatch):
    monkeypatch.setattr(evaluation, '_COMPARE_BUDGET', budget)
    rng = np.random.default_rng(2)
    # small integer features: every distance is exact in float64 whatever the BLAS, so ties are real ties in both
    # implementations (duplicated images, and many coincidences besides)
    base = rng.integers(-3, 4, size=(60, 8)).astype(np.float64)
    gf = np.concatenate([base, base[:30]])
    g_pids = np.concatenate([rng.integers(0, 6, 60), rng.integers(0, 6, 30)])
    g_cams = rng.integers(0, 3, 90)
    qf = rng.integers(-3, 4, size=(15, 8)).astype(np.float64)
    q_pids, q_cams = rng.integers(0, 6, 15), rng.integers(0, 3, 15)
    fast = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    ref = evaluate_reference(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    np.testing.assert_allclose(fast['cmc'], ref['cmc'], atol=1e-12)
    assert fast['mAP'] == pytest.approx(ref['mAP'], abs=1e-12)
    assert fast['mINP'] == pytest.approx(ref['mINP'], abs=1e-12)


@pytest.mark.parametrize('k1,k2,lam', [(20, 6, 0.3), (5, 1, 0.5), (7, 3, 0.0)])
def test_re_rank_matches_reference(k1, k2, lam):
    from aaformer_hf.reid.evaluation import re_rank
    from benchmarks.reid_rerank_reference import re_rank_reference
    rng = np.random.default_rng(k1)
    ids = rng.integers(0, 12, 110)
    centres = rng.normal(size=(12, 16))
    feats = centres[ids] + 0.8 * rng.normal(size=(110, 16))
    qf, gf = feats[:25], feats[25:]
    expected = re_rank_reference(qf, gf, k1=k1, k2=k2, lambda_value=lam)
    got = re_rank(torch.from_numpy(qf), torch.from_numpy(gf), k1=k1, k2=k2, lambda_value=lam, chunk_size=16,
                  dtype=torch.float64)
    assert got.shape == (25, 85)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9, rtol=0)
    # float32 and the evaluator on the re-ranked distances
    got32 = re_rank(torch.from_numpy(qf).float(), torch.from_numpy(gf).float(), k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(got32.numpy(), expected, atol=1e-5, rtol=0)
    cams = rng.integers(0, 3, 110)
    fast = evaluate(None, None, ids[:25], ids[25:], cams[:25], cams[25:], distmat=got)
    by_reference = evaluate_reference_on_distances(expected, ids[:25], ids[25:], cams[:25], cams[25:])
    assert fast['mAP'] == pytest.approx(by_reference['mAP'], abs=1e-12)
    np.testing.assert_allclose(fast['cmc'][:10], by_reference['cmc'][:10], atol=1e-12)


def evaluate_reference_on_distances(distmat, q_pids, g_pids, q_cams, g_cams):
    from unittest import mock
    import benchmarks.reid_eval_reference as reference
    with mock.patch.object(reference, 'distance_matrix', lambda *args, **kwargs: distmat):
        return reference.evaluate_reference(None, None, q_pids, g_pids, q_cams, g_cams)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_float32_products_still_rank_exactly(metric):
    """Near-ties that float32 cannot resolve (large norms, differences far below float32 resolution) are decided in
    float64: the default float32 evaluator equals the float64 reference, where plain float32 distances do not."""
    rng = np.random.default_rng(5)
    dim, pairs = 16, 40
    base = rng.normal(size=(pairs, dim)) * 1000
    step = rng.normal(size=(pairs, dim))
    # for each query a negative and a positive at nearly the same distance, in random order: the gap (~1e-4 of the
    # distance) is far above float64's rounding of ||q||^2 + ||g||^2 - 2 q.g at these norms and far below float32's
    qf = base
    first, second = base + step, base + step * (1 + rng.choice([-1, 1], size=(pairs, 1)) * 1e-5)
    gf = np.concatenate([first, second, rng.normal(size=(200, dim)) * 1000])
    q_pids = np.arange(pairs)
    g_pids = np.concatenate([np.arange(pairs) + 1000, np.arange(pairs), rng.integers(2000, 2100, 200)])
    q_cams, g_cams = np.zeros(pairs, int), np.ones(len(gf), int)
    ref = evaluate_reference(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric)
    fast = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric)
    assert fast['mAP'] == pytest.approx(ref['mAP'], abs=1e-12) and 0.6 < ref['mAP'] < 0.9
    np.testing.assert_allclose(fast['cmc'], ref['cmc'], atol=1e-12)
    naive = evaluation.pairwise_distance(torch.tensor(qf, dtype=torch.float32), torch.tensor(gf, dtype=torch.float32),
                                         metric)
    plain32 = evaluate(None, None, q_pids, g_pids, q_cams, g_cams, distmat=naive)
    assert abs(plain32['mAP'] - ref['mAP']) > 0.05  # the case really is beyond float32


@pytest.mark.parametrize('chunk_size', [1, 5, 64])
@pytest.mark.parametrize('budget', [0, 10 ** 9])
def test_duplicate_images_tie_by_gallery_index(chunk_size, budget, monkeypatch):
    """Duplicated gallery images (identical features, so exactly equal distances) rank in gallery order, as a stable
    sort leaves them, also when their float32 distances must be re-decided in float64."""
    monkeypatch.setattr(evaluation, '_COMPARE_BUDGET', budget)
    rng = np.random.default_rng(7)
    base = rng.normal(size=(80, 12))
    base_pids = rng.integers(0, 8, 80)
    order = rng.permutation(120)  # the copies are scattered through the gallery
    gf, g_pids = np.concatenate([base, base[:40]])[order], np.concatenate([base_pids, base_pids[:40]])[order]
    g_cams = rng.integers(0, 3, 120)
    qf, q_pids, q_cams = rng.normal(size=(25, 12)), rng.integers(0, 8, 25), rng.integers(0, 3, 25)
    from benchmarks.reid_eval_reference import distance_matrix
    dist = distance_matrix(qf, gf)
    copies = [(np.flatnonzero(order == i)[0], np.flatnonzero(order == 80 + i)[0]) for i in range(40)]
    assert all(np.array_equal(dist[:, a], dist[:, b]) for a, b in copies)  # real ties for the reference too
    ref = evaluate_reference(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    fast = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, chunk_size=chunk_size, max_rank=20)
    assert fast['mAP'] == pytest.approx(ref['mAP'], abs=1e-12)
    np.testing.assert_allclose(fast['cmc'], ref['cmc'], atol=1e-12)


def test_summarise_reads_the_reported_ranks_off_the_cmc_curve():
    from aaformer_hf.reid.evaluation import summarise
    result = dict(cmc=np.arange(1, 11) / 10, mAP=np.float64(0.25), mINP=0.125, num_valid_queries=np.int64(7))
    assert summarise(result) == dict(rank1=0.1, rank5=0.5, rank10=1.0, mAP=0.25, mINP=0.125, num_valid_queries=7)
    # a curve shorter than 10 (max_rank < 10): R5 and R10 are its last value
    assert summarise(dict(result, cmc=np.array([0.5, 0.75, 0.8])))['rank5'] == 0.8
    assert type(summarise(result)['mAP']) is float and type(summarise(result)['num_valid_queries']) is int


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (the device machine runs it)')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_evaluation_on_the_gpu_matches_the_reference_in_bounded_memory(dtype):
    """CUDA features in, the numpy reference's numbers out; the peak GPU memory of the chunked evaluator stays near
    the features plus one (chunk, gallery) block of float64 distances and its sort, far below a (Q, G) matrix."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, 12000)
    centres = rng.normal(size=(300, 64))
    feats = (centres[ids] + 1.5 * rng.normal(size=(12000, 64))).astype(np.float32)
    cams = rng.integers(0, 6, 12000)
    q, g = slice(0, 2000), slice(2000, None)
    reference = evaluate_reference(feats[q], feats[g], ids[q], ids[g], cams[q], cams[g])
    qf, gf = torch.from_numpy(feats[q]).cuda(), torch.from_numpy(feats[g]).cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fast = evaluate(qf, gf, torch.from_numpy(ids[q]).cuda(), torch.from_numpy(ids[g]).cuda(),
                    torch.from_numpy(cams[q]).cuda(), torch.from_numpy(cams[g]).cuda(), chunk_size=128, dtype=dtype)
    extra = torch.cuda.max_memory_allocated() - base
    np.testing.assert_allclose(fast['cmc'], reference['cmc'], atol=1e-12)
    assert fast['mAP'] == pytest.approx(reference['mAP'], abs=1e-12)
    assert fast['mINP'] == pytest.approx(reference['mINP'], abs=1e-12)
    block = 128 * 10000 * 8
    assert extra < 12 * block + 2 * gf.numel() * 8, extra  # a (Q, G) float64 matrix would be 2000 * 10000 * 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (the device machine runs it)')
def test_re_rank_on_the_gpu_matches_the_reference():
    from aaformer_hf.reid.evaluation import re_rank
    from benchmarks.reid_rerank_reference import re_rank_reference
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 40, 600)
    feats = rng.normal(size=(40, 32))[ids] + 0.8 * rng.normal(size=(600, 32))
    qf, gf = feats[:100], feats[100:]
    expected = re_rank_reference(qf, gf)
    got = re_rank(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda(), chunk_size=64, dtype=torch.float64)
    assert got.device.type == 'cuda'
    np.testing.assert_allclose(got.cpu().numpy(), expected, atol=1e-9, rtol=0)
