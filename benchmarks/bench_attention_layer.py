"""One attention layer, AAformer's against a ViT's at equal sequence length (issue #26's CPU part), side by side in
this one process: ViT-B + 5 register tokens' ``Attention``, AAformer's ``MultiHeadAutoAlignment`` as it runs at
inference (the [PART] rows written over the attention output in place) and with its rows merged into a copy of the
output (``rows_in_place=False``, the training path's forward), each with its [PART] rows in one C function
(``cpu_part_rows``, the default where a compiler works) and in PyTorch; with ``--train``, a forward and backward of
each instead. Layer 5 of ``aaformer_base`` at random init, its real input width and sequence (batch, 134 tokens, 768).
Many short interleaved runs; the minimum is the least disturbed by other work on the machine, the median of the
per-run differences to the ViT layer is also printed (milliseconds a layer adds; x 12 for the model).

    python benchmarks/bench_attention_layer.py --batch 4 --runs 60
    python benchmarks/bench_attention_layer.py --batch 4 --runs 30 --train
"""
import argparse
import platform
import statistics
import time

import timm
import torch

import aaformer_hf  # noqa: F401  (registers the models with timm)
from aaformer_hf.layers import cpu_part_rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--runs', type=int, default=60, help='interleaved runs per contender (each of --calls)')
    parser.add_argument('--calls', type=int, default=5, help='layer calls per timed run')
    parser.add_argument('--train', action='store_true', help='time forward + backward (a training step\'s share)')
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    ours = timm.create_model('aaformer_base', num_classes=0).train(args.train).blocks[5].attn
    vit = timm.create_model('vit_base_patch16_224', img_size=(256, 128), num_classes=0,
                            reg_tokens=ours.num_parts).train(args.train).blocks[5].attn
    x = torch.randn(args.batch, 1 + ours.num_parts + 128, 768, requires_grad=args.train)
    grad = torch.randn_like(x)

    def step(layer):
        out = layer(x)
        if args.train:
            (out[0] if isinstance(out, tuple) else out).backward(grad)

    def aaformer(in_place: bool, c_function: bool):
        def call():
            ours.rows_in_place = in_place
            cpu_part_rows.enabled = c_function
            step(ours)
        return call
    contenders = {f'ViT-B+{ours.num_parts}reg attention': lambda: step(vit)}
    for c_function, rows in ((True, 'C'), (False, 'PyTorch')):
        if args.train:
            contenders[f'aaformer, {rows} rows'] = aaformer(True, c_function)
        else:
            contenders.update({f'aaformer, {rows} rows in place': aaformer(True, c_function),
                               f'aaformer, {rows} rows merged': aaformer(False, c_function)})

    def timed(fn) -> float:
        start = time.perf_counter()
        for _ in range(args.calls):
            fn()
        return (time.perf_counter() - start) / args.calls * 1e3

    times = {name: [] for name in contenders}
    with torch.inference_mode(not args.train):
        for fn in contenders.values():
            timed(fn)
        for run in range(args.runs):
            order = list(contenders.items())
            for name, fn in order if run % 2 == 0 else order[::-1]:
                times[name].append(timed(fn))
    print(f'{platform.processor() or platform.machine()}, torch {torch.__version__}, threads '
          f'{torch.get_num_threads()}, batch {args.batch}, {args.runs} interleaved runs of {args.calls} calls, '
          + ('forward + backward' if args.train else 'inference') + f'; C function: {cpu_part_rows.status()}')
    reference = times[next(iter(contenders))]
    for name, values in times.items():
        added = statistics.median(t - r for t, r in zip(values, reference))
        print(f'{name:34s} min {min(values):7.3f} ms ({min(values) / min(reference):.3f}x)   median '
              f'{statistics.median(values):7.3f} ms   added per layer (median of runs) {added:6.3f} ms')


if __name__ == '__main__':
    main()
