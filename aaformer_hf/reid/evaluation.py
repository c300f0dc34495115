"""Re-ID evaluation: CMC, mAP and mINP under the Market-1501 protocol, memory-bounded and fast.

The protocol is the one torchreid, fast-reid, TransReID and CLIP-ReID share: rank the whole gallery by distance to
each query (ties in gallery order, as a stable sort leaves them), discard gallery items with the query's identity
*and* camera (they are "junk", not retrieval), skip (and count) queries left with no positive, and average over the
remaining "valid" queries:

- CMC@k: share of valid queries whose first positive is within the top k;
- mAP: mean over valid queries of non-interpolated average precision, (1/#pos) Σ_k precision@k · rel_k;
- mINP: mean of #pos / (rank of the last positive), the "inverse negative penalty" of fast-reid / the ReID survey.

How it stays small and fast: queries go in chunks, so only a (chunk, gallery) block of distances exists at a time,
never the full distance matrix, its argsort or a match matrix (at MSMT17 scale 3.8, 7.7 and 3.8 GB). And nothing is
sorted: the metrics only need each positive's rank, i.e. how many non-junk items come before it. A query's positives
and junk are found from a per-identity index of the gallery (a few dozen items), and only gallery items no farther
than the query's farthest positive are compared with the positives' distances. The products run in float32;
every comparison closer than a bound on float32 rounding is decided again in float64, so rankings are exact.
"""
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .reranking import non_finite_rows, re_rank

__all__ = ['evaluate', 'summarise', 'pairwise_distance', 'flip_features', 're_rank']

ArrayLike = Union[torch.Tensor, np.ndarray]

# compare candidates with positives while that costs fewer than this many comparisons per distance, else sort
_COMPARE_BUDGET = 2


def _tensor(x: ArrayLike, device, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """``x`` on ``device`` in ``dtype`` (None: its own floating dtype, float64 for integers)."""
    t = torch.as_tensor(x if isinstance(x, torch.Tensor) else np.asarray(x)).to(device)
    return t.to(dtype if dtype is not None else (t.dtype if t.is_floating_point() else torch.float64))


def _labels(x: ArrayLike, name: str, device) -> torch.Tensor:
    """Identity or camera labels as int64; non-integral values are an error, not truncated."""
    t = torch.as_tensor(x if isinstance(x, torch.Tensor) else np.asarray(x)).to(device)
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f'{name} must be integers, got non-integral values such as {t[t != t.round()][0].item()}')
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f'{name} must be integers, got {t.dtype}')
    return t.long()


class _GalleryDistance:
    """Distances from query chunks to one gallery in ``dtype``; the gallery's norms are computed once.

    Below float64 (and with ``exact_ties``) near-ties can be decided exactly: ``tolerance`` bounds the rounding error
    of each row's distances (a priori, from the dot-product error bound), and ``exact`` recomputes single pairs in
    float64 from the gallery as given, the way a float64 reference does (||q||^2 + ||g||^2 - 2 q.g, or 1 - cos).
    """

    def __init__(self, gallery: torch.Tensor, metric: str, dtype: torch.dtype, exact_ties: bool = True) -> None:
        if metric not in ('euclidean', 'cosine'):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        self.metric, self.dtype = metric, dtype
        working = gallery.to(dtype)
        if metric == 'cosine':
            working = F.normalize(working, dim=1)
        self.gallery_t = working.t()
        self.gallery_sq = working.pow(2).sum(1).unsqueeze(0) if metric == 'euclidean' else None
        self.source = None
        self.error_factor = 0.0
        if exact_ties and dtype != torch.float64:
            unit, dim = torch.finfo(dtype).eps / 2, gallery.shape[1]
            if dim * unit > 0.01:
                raise ValueError(f'{dtype} is too coarse for {dim}-d features; use float32 or float64')
            # |error| <= (gamma_D + 5u) (|q| + |g|)^2 for q.g, both squared norms, the sum and the casts to dtype
            self.error_factor = (dim * unit / (1 - dim * unit) + 6 * unit) * 1.01
            # the gallery as given is the exact source: rows become float64 when needed, never the whole matrix
            self.source, self._exact_full = gallery, None
            self.exact_sq = torch.cat([rows.double().pow(2).sum(1) for rows in gallery.split(16384)])
            self.max_norm = self.exact_sq.max().sqrt()

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        """(c, G) distances; below float64, distances up to a per-row constant (rankings within a row only compare
        entries of that row), which saves two passes over the block."""
        query = query.to(self.dtype)
        if self.metric == 'cosine':
            return 1 - F.normalize(query, dim=1) @ self.gallery_t
        if self.source is not None:
            return torch.addmm(self.gallery_sq, query, self.gallery_t, beta=1, alpha=-2)  # ||q||^2 left out
        dist = query.pow(2).sum(1, keepdim=True) + self.gallery_sq
        return torch.addmm(dist, query, self.gallery_t, beta=1, alpha=-2).clamp_(min=0)

    def tolerance(self, query_exact: torch.Tensor) -> torch.Tensor:
        """(c,) bound on |computed - exact| of every distance of each query row."""
        if self.metric == 'cosine':  # unit vectors
            return torch.full(query_exact.shape[:1], 4 * self.error_factor, dtype=torch.float64,
                              device=query_exact.device)
        return self.error_factor * (query_exact.norm(dim=1) + self.max_norm) ** 2

    def _exact_rows(self, cols: torch.Tensor) -> torch.Tensor:
        rows = self.source[cols].double()
        return rows / self.exact_sq[cols].sqrt().unsqueeze(-1) if self.metric == 'cosine' else rows

    def exact_block(self, query_exact: torch.Tensor) -> torch.Tensor:
        """float64 distances of float64 query rows to the whole gallery (the float64 gallery is made on first use)."""
        if self._exact_full is None:
            self._exact_full = self._exact_rows(torch.arange(len(self.source), device=self.source.device))
        gallery_t = self._exact_full.t()
        if self.metric == 'cosine':
            return 1 - query_exact @ gallery_t
        dist = query_exact.pow(2).sum(1, keepdim=True) + self.exact_sq.unsqueeze(0)
        return torch.addmm(dist, query_exact, gallery_t, beta=1, alpha=-2).clamp_(min=0)

    def exact(self, query_exact: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """float64 distances of query rows (n, D) (float64, already normalised for cosine) to gallery items ``cols``
        (n,): (n,). Elementwise products and a last-dim sum, so a pair gets the same bits whenever it is met."""
        dot = (self._exact_rows(cols) * query_exact).sum(-1)
        if self.metric == 'cosine':
            return 1 - dot
        return query_exact.pow(2).sum(-1) + self.exact_sq[cols] - 2 * dot


def pairwise_distance(query: torch.Tensor, gallery: torch.Tensor, metric: str = 'euclidean') -> torch.Tensor:
    """(Q, D) x (G, D) -> (Q, G) distances: 'euclidean' (squared, as the toolkits rank by) or 'cosine' (1 - cos)."""
    return _GalleryDistance(gallery, metric, gallery.dtype, exact_ties=False)(query)


def flip_features(embed, images: torch.Tensor) -> torch.Tensor:
    """Flip test: the mean of an image's and its horizontal mirror's features, ``embed`` being any feature function."""
    return (embed(images) + embed(images.flip(-1))) / 2


class _IdentityIndex:
    """Gallery items grouped by identity, to list a query's same-identity items without scanning the gallery."""

    def __init__(self, g_pids: torch.Tensor) -> None:
        self.order = torch.argsort(g_pids, stable=True)  # gallery order within an identity
        self.sorted_pids = g_pids[self.order]

    def same_identity(self, q_pids: torch.Tensor):
        """(c,) query ids -> (c, L) gallery indices of items with that id (ascending), and their (c, L) validity."""
        start = torch.searchsorted(self.sorted_pids, q_pids, right=False)
        count = torch.searchsorted(self.sorted_pids, q_pids, right=True) - start
        width = max(int(count.max()), 1)
        slot = torch.arange(width, device=q_pids.device).unsqueeze(0)
        valid = slot < count.unsqueeze(1)
        position = (start.unsqueeze(1) + slot).clamp(max=len(self.order) - 1)
        return self.order[position], valid


def _precedes(item_dist, item_index, pos_dist, pos_index):
    """[item comes before positive] in a stable ranking by distance: closer, or as close and earlier in the gallery.
    Shapes broadcast; the result is bool."""
    return (item_dist < pos_dist) | ((item_dist == pos_dist) & (item_index < pos_index))


def _positive_ranks(dist, same_index, same_valid, q_cams, g_cams, exact=None):
    """Ranks (1-based, among non-junk items) of every positive of each query: (c, m) ascending, 0 where padding,
    for the rows of ``dist`` (c, G) whose same-identity items are ``same_index`` / ``same_valid`` (c, L).

    ``exact``: None when ``dist`` is exact (float64), else (tolerance (c,), f(rows (n,), cols (n,)) -> float64
    distances (n,)) to decide every comparison closer than the tolerance exactly. Returns None when the positives
    are spread so widely that only sorting is cheap and ``dist`` is not exact (the caller then recomputes the block
    in float64).
    """
    c = dist.shape[0]
    same_approx = dist.gather(1, same_index)
    if exact is None:
        same_dist = same_approx
    else:
        tolerance, exact_distance = exact
        valid_row, valid_slot = same_valid.nonzero(as_tuple=True)
        same_dist = torch.full(same_index.shape, float('inf'), dtype=torch.float64, device=dist.device)
        same_dist[valid_row, valid_slot] = exact_distance(valid_row, same_index[valid_row, valid_slot])
    junk = same_valid & (g_cams[same_index] == q_cams.unsqueeze(1))
    positive = same_valid & ~junk
    num_pos = positive.sum(dim=1)
    # positives in ranking order: by distance, ties by gallery index (same_index is ascending, the sort stable)
    pos_dist = torch.where(positive, same_dist, float('inf'))
    by_dist = pos_dist.argsort(dim=1, stable=True)
    m = max(int(num_pos.max()), 1)
    by_dist = by_dist[:, :m]
    pos_dist, pos_index = pos_dist.gather(1, by_dist), same_index.gather(1, by_dist)
    pos_approx = torch.where(positive, same_approx, float('inf')).gather(1, by_dist)
    present = torch.arange(m, device=dist.device).unsqueeze(0) < num_pos.unsqueeze(1)

    # items that can precede some positive: no farther than the farthest positive of their row
    margin = 0 if exact is None else 2 * tolerance.to(dist.dtype)  # two distances, each off by <= tolerance
    farthest = torch.where(present, pos_approx, float('-inf')).amax(dim=1) + margin
    rows, cols = (dist <= farthest.unsqueeze(1)).nonzero(as_tuple=True)
    if len(rows) * m <= _COMPARE_BUDGET * dist.numel():
        # the usual case (positives near the top): compare the few candidates with each positive
        item = dist[rows, cols].unsqueeze(1)
        if exact is None:
            precedes = _precedes(item, cols.unsqueeze(1), pos_dist[rows], pos_index[rows])
        else:
            gap, pair_margin = item - pos_approx[rows], margin[rows].unsqueeze(1)
            precedes = gap < -pair_margin
            unsure_item, unsure_pos = ((gap.abs() <= pair_margin) & present[rows]).nonzero(as_tuple=True)
            if len(unsure_item):
                row, col = rows[unsure_item], cols[unsure_item]
                precedes[unsure_item, unsure_pos] = _precedes(
                    exact_distance(row, col), col, pos_dist[row, unsure_pos], pos_index[row, unsure_pos])
        before = torch.zeros(c, m, dtype=torch.long, device=dist.device)
        before.index_add_(0, rows, precedes.long())
    elif exact is not None:
        return None
    else:
        # positives spread over the whole gallery (e.g. an untrained model): a stable sort of the block is cheaper
        order = dist.argsort(dim=1, stable=True)
        position = torch.empty_like(order)
        position.scatter_(1, order, torch.arange(dist.shape[1], device=dist.device).expand_as(order))
        before = position.gather(1, pos_index)  # items before each positive in the stable ranking
    # those counts include junk items, which the protocol removes
    junk_dist = torch.where(junk, same_dist, float('inf'))
    before -= _precedes(junk_dist.unsqueeze(2), same_index.unsqueeze(2), pos_dist.unsqueeze(1),
                        pos_index.unsqueeze(1)).sum(dim=1)
    return torch.where(present, before + 1, 0)


def _accumulate(totals, ranks, max_rank):
    """Add CMC hits, AP and INP of queries whose positives' ranks are given ((c, m), ascending, 0-padded)."""
    present = ranks > 0
    num_pos = present.sum(dim=1)
    hits = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64).unsqueeze(0)
    # AP = mean over positives of (positives so far / rank); mINP = #pos / rank of the last positive
    precision = torch.where(present, hits / ranks.clamp(min=1), 0.0)
    totals['ap'] += (precision.sum(dim=1) / num_pos).sum().item()
    last = ranks.gather(1, (num_pos - 1).unsqueeze(1)).squeeze(1)
    totals['inp'] += (num_pos.double() / last).sum().item()
    positions = torch.arange(1, max_rank + 1, device=ranks.device)
    totals['cmc'] += (ranks[:, :1] <= positions.unsqueeze(0)).sum(dim=0)
    totals['valid'] += ranks.shape[0]


@torch.no_grad()
def evaluate(
        query_features: ArrayLike,
        gallery_features: ArrayLike,
        q_pids: ArrayLike,
        g_pids: ArrayLike,
        q_camids: ArrayLike,
        g_camids: ArrayLike,
        metric: str = 'euclidean',
        normalize: bool = False,
        max_rank: int = 50,
        chunk_size: int = 256,
        device: Optional[Union[str, torch.device]] = None,
        dtype: torch.dtype = torch.float32,
        distmat: Optional[ArrayLike] = None,
) -> Dict[str, Union[np.ndarray, float, int]]:
    """Rank the gallery for every query and score it under the Market-1501 protocol.

    Args:
        query_features, gallery_features: (Q, D) and (G, D) features (torch or numpy).
        q_pids, g_pids, q_camids, g_camids: identities and cameras, (Q,) and (G,).
        metric: 'euclidean' or 'cosine'.
        normalize: L2-normalise the features first.
        max_rank: length of the CMC curve.
        chunk_size: queries per block; memory grows with chunk_size * G.
        device: where to compute (default: the query features' device).
        dtype: precision of the distance matrix products. Rankings are exact either way (as a float64 reference
            ranks): with float32 (default, about twice as fast as float64 on CPU) every comparison closer than a
            rigorous bound on float32 rounding is decided again in float64 from the features.
        distmat: a precomputed (Q, G) distance matrix to rank by instead of distances of the features (e.g. from
            ``re_rank``); the features are then not used and may be None.

    Returns:
        dict with ``cmc`` (numpy float array, CMC@1..max_rank), ``mAP``, ``mINP``, ``num_valid_queries`` and
        ``num_skipped_queries`` (queries without any positive after junk removal).
    """
    if max_rank < 1 or chunk_size < 1:
        raise ValueError('max_rank and chunk_size must be >= 1')
    device = torch.device(device) if device is not None else (
        query_features.device if isinstance(query_features, torch.Tensor) else torch.device('cpu'))
    if distmat is not None:
        distmat = torch.as_tensor(distmat).to(device)  # kept in its own dtype; rows become float64 when used
        if distmat.ndim != 2:
            raise ValueError(f'distmat must be (Q, G), got {tuple(distmat.shape)}')
        # stand-in features: only their shapes are used
        query_features, gallery_features = torch.empty(distmat.shape[0], 1), torch.empty(distmat.shape[1], 1)
    # the features as given (upcast to float64 where needed) are the exact reference; products run in `dtype`
    qf = _tensor(query_features, device, torch.float64)
    gf = _tensor(gallery_features, device, None)  # not copied to float64: rows are upcast when needed
    q_pids, g_pids = _labels(q_pids, 'q_pids', device), _labels(g_pids, 'g_pids', device)
    q_cams, g_cams = _labels(q_camids, 'q_camids', device), _labels(g_camids, 'g_camids', device)
    for name, t, n in (('q_pids', q_pids, len(qf)), ('q_camids', q_cams, len(qf)),
                       ('g_pids', g_pids, len(gf)), ('g_camids', g_cams, len(gf))):
        if t.shape != (n,):
            raise ValueError(f'{name} must have shape ({n},), got {tuple(t.shape)}')
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f'features must be (Q, D) and (G, D), got {tuple(qf.shape)} and {tuple(gf.shape)}')
    if len(qf) == 0 or len(gf) == 0:
        raise ValueError(f'nothing to evaluate: {len(qf)} query and {len(gf)} gallery items'
                         + (' (the gallery is empty)' if len(gf) == 0 else ' (no query)'))
    if distmat is not None:
        bad = non_finite_rows(distmat)
        if bad:
            raise ValueError(f'distmat has non-finite (NaN or Inf) distances in {bad} of {len(distmat)} query rows')
    else:  # a NaN sorts as neither near nor far: metrics would be meaningless (an all-NaN model scores R1 = 1)
        bad_q, bad_g = non_finite_rows(qf), non_finite_rows(gf)
        if bad_q or bad_g:
            raise ValueError(f'features are not finite (NaN or Inf) in {bad_q} of {len(qf)} query rows and {bad_g} '
                             f'of {len(gf)} gallery rows; the model that produced them has diverged or overflowed')
    if normalize:
        qf, gf = F.normalize(qf, dim=1), F.normalize(gf.double(), dim=1)

    max_rank = min(max_rank, gf.shape[0])
    distance = _GalleryDistance(gf, metric, dtype) if distmat is None else None
    exact_queries = F.normalize(qf, dim=1) if metric == 'cosine' else qf
    index = _IdentityIndex(g_pids)
    totals = dict(cmc=torch.zeros(max_rank, dtype=torch.float64, device=device), ap=0.0, inp=0.0, valid=0)
    for start in range(0, qf.shape[0], chunk_size):
        end = min(start + chunk_size, qf.shape[0])
        same_index, same_valid = index.same_identity(q_pids[start:end])
        has_positive = (same_valid & (g_cams[same_index] != q_cams[start:end, None])).any(dim=1)
        if not has_positive.any():
            continue
        rows = has_positive.nonzero().squeeze(1) + start
        args = same_index[rows - start], same_valid[rows - start], q_cams[rows], g_cams
        if distance is None:
            ranks = _positive_ranks(distmat[rows].double(), *args)
        elif distance.source is None:  # float64: the distances are exact
            ranks = _positive_ranks(distance(qf[rows]), *args)
        else:
            exact = exact_queries[rows]
            ranks = _positive_ranks(distance(qf[rows]), *args, exact=(
                distance.tolerance(exact), lambda r, c: distance.exact(exact[r], c)))
            if ranks is None:  # positives spread widely: sort this block's float64 distances instead
                ranks = _positive_ranks(distance.exact_block(exact), *args)
        _accumulate(totals, ranks, max_rank)
    num_valid = totals['valid']
    if num_valid == 0:
        raise ValueError('no query has a positive in the gallery (after same-camera removal): nothing to evaluate')
    return {
        'cmc': (totals['cmc'] / num_valid).cpu().numpy(),
        'mAP': totals['ap'] / num_valid,
        'mINP': totals['inp'] / num_valid,
        'num_valid_queries': num_valid,
        'num_skipped_queries': qf.shape[0] - num_valid,
    }


def summarise(result: Dict[str, Any]) -> Dict[str, Any]:
    """``evaluate``'s result as the numbers re-ID papers report: R1/R5/R10 (the last CMC value when the curve is
    shorter), mAP, mINP and the number of valid queries, as plain Python numbers."""
    cmc = result['cmc']
    return {'rank1': float(cmc[0]), 'rank5': float(cmc[min(4, len(cmc) - 1)]),
            'rank10': float(cmc[min(9, len(cmc) - 1)]), 'mAP': float(result['mAP']), 'mINP': float(result['mINP']),
            'num_valid_queries': int(result['num_valid_queries'])}
