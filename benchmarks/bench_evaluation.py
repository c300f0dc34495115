"""The chunked evaluator against the straightforward numpy reference (benchmarks/reid_eval_reference.py) on a
synthetic problem of MSMT17's shape: 11,659 queries x 82,161 gallery, 768-d, 3,060 identities, 15 cameras.

Each implementation runs in its own subprocess, so its peak resident memory (ru_maxrss) is its own; both see the same
seeded data. ``--queries`` scales the query set down (the reference needs ~20 GB at full scale).

    python benchmarks/bench_evaluation.py --queries 1000
    python benchmarks/bench_evaluation.py --no_reference        # full scale, the fast evaluator only
    python benchmarks/bench_evaluation.py --no_reference --devices cpu,cuda   # and on the GPU (peak GPU memory)
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def problem(num_queries: int, num_gallery: int, dim: int, seed: int = 0):
    """Identity centres plus noise, scaled so a query's positives rank like a decent model's (mAP ~0.9, mINP ~0.35,
    positives spread over the first few hundred ranks)."""
    rng = np.random.default_rng(seed)
    ids = 3060
    centres = rng.normal(size=(ids, dim)).astype(np.float32)
    g_pids, q_pids = rng.integers(0, ids, num_gallery), rng.integers(0, ids, num_queries)
    gf = centres[g_pids] + 2.0 * rng.normal(size=(num_gallery, dim)).astype(np.float32)
    qf = centres[q_pids] + 2.0 * rng.normal(size=(num_queries, dim)).astype(np.float32)
    return qf, gf, q_pids, g_pids, rng.integers(0, 15, num_queries), rng.integers(0, 15, num_gallery)


def start_gpu(device: str) -> dict:
    """On a CUDA device, its context started (outside the timed region) and its name; {} on the CPU."""
    if not device.startswith('cuda'):
        return {}
    import torch
    torch.zeros(1, device=device)
    return {'device_name': torch.cuda.get_device_name(device)}


def gpu_report(result: dict, device: str) -> dict:
    """``result`` plus the peak GPU memory of this process when it ran on a CUDA device."""
    if device.startswith('cuda'):
        import torch
        result['peak_gpu_gb'] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result


def gpu_text(result: dict) -> str:
    return f'   peak GPU {result["peak_gpu_gb"]:.2f} GB ({result["device_name"]})' if 'peak_gpu_gb' in result else ''


def run_one(which: str, num_queries: int, num_gallery: int, dim: int, dtype: str = 'float32',
            device: str = 'cpu') -> dict:
    sys.path.insert(0, str(ROOT))
    data = problem(num_queries, num_gallery, dim)
    gpu = start_gpu(device)
    if which == 'fast':  # imports outside the timed region
        import torch
        from aaformer_hf.reid.evaluation import evaluate
        # numpy features in, as from an embeddings file: the time includes the copy to the device
        run = lambda: evaluate(*data, dtype=getattr(torch, dtype), device=device)  # noqa: E731
    else:
        from benchmarks.reid_eval_reference import evaluate_reference
        run = lambda: evaluate_reference(*data)  # noqa: E731
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return gpu_report({'seconds': seconds, 'peak_rss_gb': peak_rss_gb, **gpu, 'mAP': out['mAP'], 'mINP': out['mINP'],
                       'cmc': [float(c) for c in out['cmc'][:10]], 'valid': out['num_valid_queries']}, device)


def problem_parser(doc: str, queries: int, gallery: int) -> argparse.ArgumentParser:
    """Arguments shared by the evaluation benchmarks: the problem's size, and the hidden subprocess switch."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--queries', type=int, default=queries)
    parser.add_argument('--gallery', type=int, default=gallery)
    parser.add_argument('--dim', type=int, default=768)
    parser.add_argument('--only', help=argparse.SUPPRESS)
    return parser


def main():
    parser = problem_parser(__doc__, 11659, 82161)
    parser.add_argument('--dtypes', default='float32,float64', help='matrix-product precisions of the fast evaluator')
    parser.add_argument('--no_reference', action='store_true', help='skip the reference (it needs ~20 GB at full scale)')
    parser.add_argument('--devices', default='cpu', help='where the fast evaluator runs, comma-separated (cpu,cuda)')
    args = parser.parse_args()
    if args.only:
        which, _, rest = args.only.partition(':')
        dtype, _, device = rest.partition('@')
        print(json.dumps(run_one(which, args.queries, args.gallery, args.dim, dtype or 'float32', device or 'cpu')))
        return
    results = {}
    fast = [f'fast:{d}@{device}' for device in args.devices.split(',') for d in args.dtypes.split(',')]
    for which in fast + ([] if args.no_reference else ['reference']):
        cmd = [sys.executable, __file__, '--only', which, '--queries', str(args.queries), '--gallery',
               str(args.gallery), '--dim', str(args.dim)]
        results[which] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    # data generation is in both processes' peak RSS; its own footprint is printed for reference
    data_gb = (args.queries + args.gallery) * args.dim * 4 / 2 ** 30
    ref = results.get('reference')
    print(f'{args.queries} queries x {args.gallery} gallery x {args.dim}-d (features {data_gb:.2f} GB)')
    for name, r in results.items():
        line = (f'{name:<20} {r["seconds"]:8.1f} s   peak RSS {r["peak_rss_gb"]:6.2f} GB   mAP {r["mAP"]:.8f}   '
                f'mINP {r["mINP"]:.8f}   R1 {r["cmc"][0]:.6f}') + gpu_text(r)
        if ref is not None:
            diff = max(abs(r['mAP'] - ref['mAP']), abs(r['mINP'] - ref['mINP']),
                       max(abs(a - b) for a, b in zip(r['cmc'], ref['cmc'])))
            line += f'   {ref["seconds"] / r["seconds"]:5.1f}x   max |diff to reference| {diff:.1e}'
        print(line)


if __name__ == '__main__':
    main()
