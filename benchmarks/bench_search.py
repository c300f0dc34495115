"""Gallery search at 10^4-10^6 embeddings: exact PyTorch search against FAISS (exact flat index, and IVF), side by
side in one process, with the IVF's recall@k against the exact result.

    python benchmarks/bench_search.py                       # 10^4 and 10^5, D = 1280 (π-VL's embedding)
    python benchmarks/bench_search.py --sizes 1000000 --queries 1000

Galleries are clustered random vectors (identities with several views, as re-ID galleries are), float32.
Build = index construction (IVF training + adding); search = all queries, top-k. Needs faiss-cpu.
"""
import argparse
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from aaformer_hf.reid.search import recall_at, search


def clustered(n: int, dim: int, per_identity: int, generator: torch.Generator) -> torch.Tensor:
    centres = torch.randn(max(1, n // per_identity), dim, generator=generator)
    return centres.repeat_interleave(per_identity, 0)[:n] + 0.5 * torch.randn(n, dim, generator=generator)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[10_000, 100_000])
    parser.add_argument('--dim', type=int, default=1280)
    parser.add_argument('--queries', type=int, default=1000)
    parser.add_argument('--top', type=int, default=10)
    parser.add_argument('--nprobe', type=int, default=16)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, D = {args.dim}, {args.queries} queries, '
          f'top {args.top}, cosine')
    print('| gallery | torch exact (s) | faiss Flat (s) | ratio | faiss IVF: index | build (s) | search (s) | '
          'recall@k | peak RSS (GB) |\n|---:|---:|---:|---:|---|---:|---:|---:|---:|')
    for size in args.sizes:
        gallery = clustered(size, args.dim, 10, generator)
        query = gallery[torch.randperm(size, generator=generator)[:args.queries]] + \
            0.3 * torch.randn(args.queries, args.dim, generator=generator)
        # normalised once, in place: at 10^6 x 1280 every copy of the gallery is 5 GB (cosine is unchanged)
        gallery.div_(gallery.norm(dim=1, keepdim=True))
        query = F.normalize(query, dim=1)
        (_, exact), torch_s = timed(lambda: search(query, gallery, args.top))
        (_, flat), flat_s = timed(lambda: search(query, gallery, args.top, backend='faiss'))
        lists = max(16, round(size ** 0.5))  # FAISS's rule of thumb starts near sqrt(N) lists
        import faiss
        g, q = gallery.numpy(), np.ascontiguousarray(query.numpy())  # g: a view, no copy
        index = faiss.index_factory(args.dim, f'IVF{lists},Flat', faiss.METRIC_INNER_PRODUCT)
        _, build_s = timed(lambda: (index.train(g), index.add(g)))
        index.nprobe = args.nprobe
        (_, ivf), ivf_s = timed(lambda: index.search(q, args.top))
        print(f'| {size:,} | {torch_s:.2f} | {flat_s:.2f} | {torch_s / flat_s:.2f} | IVF{lists}, nprobe '
              f'{args.nprobe} | {build_s:.1f} | {ivf_s:.2f} | {recall_at(torch.from_numpy(ivf), exact):.3f} | '
              f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.1f} |')
        assert recall_at(flat, exact) > 0.999, 'faiss Flat should be exact'


if __name__ == '__main__':
    main()
