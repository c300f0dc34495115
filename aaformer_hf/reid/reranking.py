"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017),
without the (Q+G)^2 matrices.

The published algorithm builds the full (Q+G) x (Q+G) distance matrix, its full argsort and a dense (Q+G)^2 matrix V
of neighbourhood weights. At MSMT17 scale (93,820 images) each is 35 GB in float32. None of them is needed whole:

- only each image's k1+1 nearest neighbours (and its largest distance, for the normalisation) are ever read from
  the ranking: they are found by chunks of rows with ``topk``, so a chunk of distances exists at a time;
- V has at most a few dozen non-zeros per row (the expanded k-reciprocal set), so it is kept sparse, and so is its
  query-expanded version (a sparse average of k2 rows);
- the distances V needs (image to its expanded set) are recomputed from the features;
- the Jaccard distances are needed for query rows only, against the gallery: per chunk of queries, a sum of
  min(V[i, k], V[j, k]) over the few columns k where V[i] is non-zero, through a column index of V.

Memory is O((Q+G) * k1 * k2) for the sparse structures plus one (chunk, Q+G) block, plus the (Q, G) result itself
(3.8 GB in float32 at MSMT17 scale, against 35 GB for one (Q+G)^2 matrix).

Distances are squared Euclidean on the features as given (normalise them first for cosine-like behaviour), each row
divided by its maximum, as in the published code. Computation runs in ``dtype`` (float32 default) where the published
code keeps V in float16; that changes results by ~1e-3, not the algorithm.
"""
import bisect
import itertools
from typing import Optional, Union

import torch

__all__ = ['re_rank']


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _reciprocal_mask(knn: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(N, k+1) bool: whether knn[i, m] also has i among its k+1 nearest neighbours."""
    forward = knn[:, :k + 1]
    mask = torch.empty_like(forward, dtype=torch.bool)
    for start, end in _chunks(len(knn), chunk):
        rows = torch.arange(start, end, device=knn.device)
        backward = forward[forward[start:end]]  # (c, k+1, k+1)
        mask[start:end] = (backward == rows[:, None, None]).any(-1)
    return mask


def _bounded_chunks(costs, max_cost: int, max_rows: int):
    """Consecutive (start, end) row ranges of at most ``max_rows`` rows and ``max_cost`` summed cost (a row costing
    more than that gets a range of its own)."""
    cumulative = list(itertools.accumulate(costs))
    start = 0
    while start < len(costs):
        done = cumulative[start - 1] if start else 0
        end = bisect.bisect_right(cumulative, done + max_cost, lo=start)
        end = min(max(end, start + 1), start + max_rows)
        yield start, end
        start = end


def _pointers(sorted_keys: torch.Tensor, n: int) -> torch.Tensor:
    """CSR-style pointers: entries with key k are [ptr[k], ptr[k+1]) (keys as sorted by the caller)."""
    ptr = torch.zeros(n + 1, dtype=torch.long, device=sorted_keys.device)
    ptr[1:] = torch.bincount(sorted_keys, minlength=n).cumsum(0)
    return ptr


def _expand(ptr: torch.Tensor, keys: torch.Tensor):
    """All entries of the segments ``keys`` names: (which key of ``keys`` each belongs to, its position)."""
    counts = ptr[keys + 1] - ptr[keys]
    owner = torch.repeat_interleave(torch.arange(len(keys), device=keys.device), counts)
    offsets = torch.arange(len(owner), device=keys.device) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    return owner, ptr[keys][owner] + offsets


def _row_unique(values: torch.Tensor, valid: torch.Tensor):
    """Per row, the distinct valid values: returns (row, value) pairs, rows ascending."""
    big = torch.iinfo(values.dtype).max
    ordered = torch.where(valid, values, big).sort(dim=1).values
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    keep = first & (ordered != big)
    rows, cols = keep.nonzero(as_tuple=True)
    return rows, ordered[rows, cols]


@torch.no_grad()
def non_finite_rows(rows: torch.Tensor) -> int:
    """How many rows of a (N, D) tensor hold a NaN or an infinity."""
    return int((~torch.isfinite(rows)).any(dim=1).sum())


def re_rank(
        query_features: torch.Tensor,
        gallery_features: torch.Tensor,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        chunk_size: int = 512,
        max_pairs: int = 4_000_000,
        device: Optional[Union[str, torch.device]] = None,
        dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Re-ranked (Q, G) distances: (1 - λ) * Jaccard distance of k-reciprocal neighbourhoods + λ * original distance.

    Args:
        query_features, gallery_features: (Q, D) and (G, D).
        k1: neighbourhood size of the k-reciprocal sets (20).
        k2: neighbours averaged in the query expansion of V (6; 1 turns it off).
        lambda_value: weight λ of the original distance (0.3).
        chunk_size: rows per block; memory grows with chunk_size * (Q + G).
        max_pairs: at most this many (V[i, k], V[j, k]) pairs per block of the Jaccard step (~40 bytes each).
        device, dtype: where and in what precision to compute.

    Returns:
        (Q, G) tensor of distances in ``dtype``; pass it to ``evaluate(..., distmat=...)``.
    """
    device = torch.device(device) if device is not None else query_features.device
    feats = torch.cat([torch.as_tensor(query_features), torch.as_tensor(gallery_features)]).to(device, dtype)
    num_query, n = len(query_features), len(feats)
    bad = non_finite_rows(feats)
    if bad:
        raise ValueError(f'features are not finite (NaN or Inf) in {bad} of {n} rows (query and gallery)')
    if not 1 <= k1 < n or not 1 <= k2 <= k1 + 1:
        raise ValueError(f'need 1 <= k1 < Q+G ({n}) and 1 <= k2 <= k1 + 1, got k1={k1}, k2={k2}')
    squared = feats.pow(2).sum(1)

    def distances(rows: slice) -> torch.Tensor:  # squared Euclidean, rows x all
        return torch.addmm(squared[rows, None] + squared[None, :], feats[rows], feats.t(), alpha=-2)

    # 1. each image's k1+1 nearest neighbours (itself first) and its largest distance
    width = max(k1 + 1, k2)
    knn = torch.empty(n, width, dtype=torch.long, device=device)
    row_max = torch.empty(n, dtype=dtype, device=device)
    for start, end in _chunks(n, chunk_size):
        block = distances(slice(start, end))
        row_max[start:end] = block.amax(dim=1)
        knn[start:end] = block.topk(width, dim=1, largest=False, sorted=True).indices

    # 2. k-reciprocal sets R(i) (k1) and R(c) of half size for the expansion
    half = int(round(k1 / 2))
    reciprocal = _reciprocal_mask(knn, k1, chunk_size)  # (N, k1+1) over knn[:, :k1+1]
    reciprocal_half = _reciprocal_mask(knn, half, chunk_size)  # (N, half+1) over knn[:, :half+1]

    # 3. expansion: add R_half(c) of a member c of R(i) when more than 2/3 of it lies in R(i); weights exp(-d)
    rows_list, cols_list = [], []
    for start, end in _chunks(n, chunk_size):
        members, member_ok = knn[start:end, :k1 + 1], reciprocal[start:end]  # R(i): (c, k1+1)
        cand_sets = knn[members, :half + 1]  # R_half of each member: (c, k1+1, half+1)
        cand_ok = reciprocal_half[members] & member_ok[:, :, None]
        inside = (cand_sets[..., None] == torch.where(member_ok, members, -1)[:, None, None, :]).any(-1)
        overlap = (inside & cand_ok).sum(-1)
        accept = member_ok & (overlap > 2 / 3 * cand_ok.sum(-1))
        values = torch.cat([members, cand_sets.flatten(1)], dim=1)
        valid = torch.cat([member_ok, (cand_ok & accept[:, :, None]).flatten(1)], dim=1)
        r, c = _row_unique(values, valid)
        rows_list.append(r + start), cols_list.append(c)
    rows, cols = torch.cat(rows_list), torch.cat(cols_list)
    dot = torch.cat([(feats[r] * feats[c]).sum(1) for r, c in zip(rows.split(65536), cols.split(65536))])
    dist = (squared[rows] + squared[cols] - 2 * dot) / row_max[rows]
    weight = torch.exp(-dist)
    weight = weight / torch.zeros(n, dtype=dtype, device=device).index_add_(0, rows, weight)[rows]
    v_rows, v_cols, v_vals = rows, cols, weight  # V in COO, rows ascending

    # 4. query expansion: each row of V becomes the mean of its k2 nearest neighbours' rows
    if k2 > 1:
        row_ptr = _pointers(v_rows, n)
        owner, positions = _expand(row_ptr, knn[:, :k2].flatten())
        v = torch.sparse_coo_tensor(
            torch.stack([owner // k2, v_cols[positions]]), v_vals[positions] / k2, (n, n),
            check_invariants=False).coalesce()  # sums the k2 contributions per (row, column)
        (v_rows, v_cols), v_vals = v.indices(), v.values()

    # 5. Jaccard distances of the queries to the gallery through a column index of V
    by_col = torch.argsort(v_cols, stable=True)
    col_rows, col_vals = v_rows[by_col], v_vals[by_col]
    col_ptr, row_ptr = _pointers(v_cols, n), _pointers(v_rows, n)

    out = torch.empty(num_query, n - num_query, dtype=dtype, device=device)
    col_count = col_ptr[1:] - col_ptr[:-1]
    pairs_per_row = torch.zeros(n, dtype=torch.long, device=device).index_add_(0, v_rows, col_count[v_cols])
    for start, end in _bounded_chunks(pairs_per_row[:num_query].tolist(), max_pairs, chunk_size):
        lo, hi = int(row_ptr[start]), int(row_ptr[end])
        q_rows, q_cols, q_vals = v_rows[lo:hi] - start, v_cols[lo:hi], v_vals[lo:hi]  # non-zeros of V[i]
        pair_owner, positions = _expand(col_ptr, q_cols)  # every (V[i, k], V[j, k]) with both non-zero
        shared = torch.minimum(q_vals[pair_owner], col_vals[positions])
        overlap = torch.zeros((end - start) * n, dtype=dtype, device=device)
        overlap.index_add_(0, q_rows[pair_owner] * n + col_rows[positions], shared)
        overlap = overlap.view(end - start, n)[:, num_query:]
        jaccard = 1 - overlap / (2 - overlap)
        # recomputed rather than kept from step 1, which would hold Q x (Q+G) distances
        original = distances(slice(start, end))[:, num_query:] / row_max[start:end, None]
        out[start:end] = jaccard * (1 - lambda_value) + original * lambda_value
    return out
