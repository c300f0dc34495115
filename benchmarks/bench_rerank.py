"""k-reciprocal re-ranking: aaformer_hf's memory-bounded re_rank against the dense numpy reference
(benchmarks/reid_rerank_reference.py), each in its own subprocess (peak RSS is its own), on the synthetic problem of
bench_evaluation.py. The reference needs several (Q+G)^2 matrices, so it only runs at small sizes (``--reference``).

    python benchmarks/bench_rerank.py --queries 500 --gallery 2000 --reference     # both, and their difference
    python benchmarks/bench_rerank.py --queries 11659 --gallery 82161               # MSMT17 scale, re_rank only
    python benchmarks/bench_rerank.py --queries 11659 --gallery 82161 --device cuda # on the GPU (peak GPU memory)
"""
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_evaluation import gpu_report, gpu_text, problem, problem_parser, start_gpu  # noqa: E402


def run_one(which: str, args) -> dict:
    qf, gf, q_pids, g_pids, q_cams, g_cams = problem(args.queries, args.gallery, args.dim)
    device = args.device if which == 'fast' else 'cpu'
    gpu = start_gpu(device)
    if which == 'fast':
        import torch
        from aaformer_hf.reid.evaluation import evaluate, re_rank
        start = time.perf_counter()
        # the time includes bringing the (Q, G) result back from a GPU
        distmat = re_rank(torch.from_numpy(qf), torch.from_numpy(gf), device=device).cpu()
    else:
        from aaformer_hf.reid.evaluation import evaluate
        from benchmarks.reid_rerank_reference import re_rank_reference
        start = time.perf_counter()
        distmat = re_rank_reference(qf, gf)
    seconds = time.perf_counter() - start
    out = evaluate(None, None, q_pids, g_pids, q_cams, g_cams, distmat=distmat)
    if args.save:
        np.save(f'{args.save}_{which}.npy', np.asarray(distmat[:50], dtype=np.float64))
    return gpu_report({'seconds': seconds, 'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                       'mAP': out['mAP'], 'R1': float(out['cmc'][0]), **gpu}, device)


def main():
    parser = problem_parser(__doc__, 500, 2000)
    parser.add_argument('--reference', action='store_true', help='also run the dense numpy reference')
    parser.add_argument('--save', help='(internal) where to save the first re-ranked rows')
    parser.add_argument('--device', default='cpu', help="where re_rank runs (the reference always on the CPU)")
    args = parser.parse_args()
    if args.only:
        print(json.dumps(run_one(args.only, args)))
        return
    save = str(Path('/tmp') / f'rerank_{args.queries}_{args.gallery}')
    results = {}
    for which in ['fast'] + (['reference'] if args.reference else []):
        cmd = [sys.executable, __file__, '--only', which, '--queries', str(args.queries), '--gallery',
               str(args.gallery), '--dim', str(args.dim), '--save', save, '--device', args.device]
        results[which] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    n = args.queries + args.gallery
    print(f'{args.queries} queries x {args.gallery} gallery x {args.dim}-d; one (Q+G)^2 float32 matrix = '
          f'{n * n * 4 / 2 ** 30:.2f} GB')
    for name, r in results.items():
        print(f'{name:<10} {r["seconds"]:8.1f} s   peak RSS {r["peak_rss_gb"]:6.2f} GB   mAP {r["mAP"]:.6f}   '
              f'R1 {r["R1"]:.6f}{gpu_text(r)}')
    if 'reference' in results:
        diff = np.abs(np.load(f'{save}_fast.npy') - np.load(f'{save}_reference.npy')).max()
        speed = results['reference']['seconds'] / results['fast']['seconds']
        print(f'speed-up {speed:.1f}x; max |difference| of the first 50 re-ranked rows: {diff:.1e}')


if __name__ == '__main__':
    main()
