"""A straightforward numpy k-reciprocal re-ranking (Zhong et al., CVPR 2017), written the way the published algorithm
is usually written: the full (Q+G)^2 distance matrix, its full argsort, a dense V and loops over images. It is the
reference aaformer_hf.reid.reranking.re_rank is tested against on small problems; it is deliberately not clever (and
needs several (Q+G)^2 matrices: unusable at MSMT17 scale)."""
import numpy as np


def re_rank_reference(qf, gf, k1=20, k2=6, lambda_value=0.3):
    feats = np.concatenate([qf, gf]).astype(np.float64)
    num_query, n = len(qf), len(feats)
    sq = (feats ** 2).sum(1)
    dist = sq[:, None] + sq[None, :] - 2 * feats @ feats.T
    dist = dist / dist.max(axis=1, keepdims=True)  # each row by its maximum
    rank = np.argsort(dist, axis=1)

    def reciprocal(i, k):
        forward = rank[i, :k + 1]
        return np.array([j for j in forward if i in rank[j, :k + 1]], dtype=np.int64)

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expansion = list(r)
        for c in r:
            rc = reciprocal(c, int(round(k1 / 2)))
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                expansion.extend(rc)
        expansion = np.unique(expansion)
        weight = np.exp(-dist[i, expansion])
        v[i, expansion] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((num_query, n))
    for i in range(num_query):
        overlap = np.minimum(v[i][None, :], v).sum(axis=1)  # sum_k min(V[i, k], V[j, k]) for every j
        jaccard[i] = 1 - overlap / (2 - overlap)
    final = jaccard * (1 - lambda_value) + dist[:num_query] * lambda_value
    return final[:, num_query:]
