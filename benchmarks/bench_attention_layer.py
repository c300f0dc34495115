"""One attention layer at inference, AAformer's against a ViT's at equal sequence length (issue #26's CPU part), side
by side in this one process: ViT-B + 5 register tokens' ``Attention``, AAformer's ``MultiHeadAutoAlignment`` as it
runs now (the [PART] rows written over the attention output in place, no copy of q, k, v) and as before
(``rows_in_place=False``: one contiguous qkv copy, the rows merged into a copy of the output). Layer 5 of
``aaformer_base`` at random init, its real input width and sequence (batch, 134 tokens, 768). Many short
interleaved runs; the minimum is the least disturbed by other work on the machine, the median is also printed.

    python benchmarks/bench_attention_layer.py --batch 4 --runs 60
"""
import argparse
import platform
import statistics
import time

import timm
import torch

import aaformer_hf  # noqa: F401  (registers the models with timm)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--runs', type=int, default=60, help='interleaved runs per contender (each of --calls)')
    parser.add_argument('--calls', type=int, default=5, help='layer calls per timed run')
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    ours = timm.create_model('aaformer_base', num_classes=0).eval().blocks[5].attn
    vit = timm.create_model('vit_base_patch16_224', img_size=(256, 128), num_classes=0,
                            reg_tokens=ours.num_parts).eval().blocks[5].attn
    x = torch.randn(args.batch, 1 + ours.num_parts + 128, 768)

    def aaformer(in_place: bool):
        def call():
            ours.rows_in_place = in_place
            ours(x)
        return call
    contenders = {f'ViT-B+{ours.num_parts}reg attention': lambda: vit(x), 'aaformer, rows in place': aaformer(True),
                  'aaformer, merged (before)': aaformer(False)}

    def timed(fn) -> float:
        start = time.perf_counter()
        for _ in range(args.calls):
            fn()
        return (time.perf_counter() - start) / args.calls * 1e3

    times = {name: [] for name in contenders}
    with torch.inference_mode():
        for fn in contenders.values():
            timed(fn)
        for run in range(args.runs):
            order = list(contenders.items())
            for name, fn in order if run % 2 == 0 else order[::-1]:
                times[name].append(timed(fn))
    print(f'{platform.processor() or platform.machine()}, torch {torch.__version__}, threads '
          f'{torch.get_num_threads()}, batch {args.batch}, {args.runs} interleaved runs of {args.calls} calls')
    base = min(times[next(iter(contenders))])
    for name, values in times.items():
        print(f'{name:28s} min {min(values):7.3f} ms ({min(values) / base:.3f}x)   median '
              f'{statistics.median(values):7.3f} ms')


if __name__ == '__main__':
    main()
