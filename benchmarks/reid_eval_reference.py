"""A straightforward numpy implementation of the Market-1501 protocol, written the way the common toolkits do it
(full distance matrix, full argsort, full match matrix, a loop over queries). It is the reference the fast
evaluator (aaformer_hf.reid.evaluation.evaluate) is tested and benchmarked against; it is deliberately not clever."""
import numpy as np


def distance_matrix(qf: np.ndarray, gf: np.ndarray, metric: str = 'euclidean') -> np.ndarray:
    qf, gf = qf.astype(np.float64), gf.astype(np.float64)
    if metric == 'cosine':
        qf = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gf = gf / np.linalg.norm(gf, axis=1, keepdims=True)
        return 1 - qf @ gf.T
    return (qf ** 2).sum(1)[:, None] + (gf ** 2).sum(1)[None, :] - 2 * qf @ gf.T


def evaluate_reference(qf, gf, q_pids, g_pids, q_camids, g_camids, metric='euclidean', max_rank=50):
    distmat = distance_matrix(np.asarray(qf), np.asarray(gf), metric)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    indices = np.argsort(distmat, axis=1, kind='stable')
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(len(q_pids)):
        order = indices[i]
        remove = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        raw = matches[i][~remove]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        last = np.where(raw == 1)[0].max()
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = raw.cumsum() / np.arange(1, len(raw) + 1)
        all_ap.append((precision * raw).sum() / raw.sum())
    if not all_cmc:
        raise ValueError('no valid query')
    width = min(max_rank, min(len(c) for c in all_cmc))
    cmc = np.asarray([c[:width] for c in all_cmc], dtype=np.float64).mean(0)
    return {'cmc': cmc, 'mAP': float(np.mean(all_ap)), 'mINP': float(np.mean(all_inp)),
            'num_valid_queries': len(all_cmc)}
