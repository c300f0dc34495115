"""AAformer vs timm's ViT-B/16 at 256x128: inference, training step, and the Sinkhorn's share of the forward.

All models run in this one process on the same device, dtype and batch, interleaved round by round, and the script
prints medians and ratios. Besides plain ViT-B (129 tokens) it times ViT-B with as many register tokens as AAformer
has [PART]s (134 tokens, plain attention), which separates the cost of the longer sequence from that of MAA. Targets (issue #2): inference <= 1.06x ViT-B, training step <= 1.10x, Sinkhorn <= 2% of
the forward.

    python benchmarks/bench_model.py                          # CPU, fp32, batch 8
    python benchmarks/bench_model.py --device cuda --dtype bf16 --batch 64 --compile
    python benchmarks/bench_model.py --device cuda --dtype bf16 --batch 64 --compile --compile_mode reduce-overhead
    python benchmarks/bench_model.py --device cuda --dtype bf16 --batch 64 --triton_kernels compare

``--compile_mode reduce-overhead`` is torch.compile with CUDA graphs (every contender, so the baseline is graphed
too). ``--triton_kernels on`` runs AAformer's [PART] rows through the fused Triton kernels
(``aaformer_hf.layers.part_rows.use_triton_kernels``); ``compare`` times the model both ways side by side. On a CPU
``--cpu_kernel compare`` times the [PART] rows in one C function (``cpu_part_rows``, the default) against PyTorch.

    python benchmarks/bench_model.py --rounds 11 --repeats 2 --batch 4 --cpu_kernel compare
"""
import argparse
import copy
import platform
import statistics
import time
from contextlib import nullcontext

import timm
import torch

import aaformer_hf  # noqa: F401
from aaformer_hf.layers import cpu_part_rows, part_rows


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device, repeats):
    """Median seconds of ``repeats`` calls (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='fp32', choices=['fp32', 'bf16'], help='bf16 = autocast')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--rounds', type=int, default=7, help='interleaved rounds; the median is reported')
    parser.add_argument('--repeats', type=int, default=3, help='calls per model per round')
    parser.add_argument('--compile', action='store_true', help='torch.compile every model (inductor)')
    parser.add_argument('--compile_mode', default='default', choices=['default', 'reduce-overhead', 'max-autotune'],
                        help="torch.compile's mode; reduce-overhead = CUDA graphs")
    parser.add_argument('--triton_kernels', default='off', choices=['off', 'on', 'compare'],
                        help="AAformer's [PART] rows through the fused Triton kernels (CUDA), or both ways")
    parser.add_argument('--cpu_kernel', default='on', choices=['off', 'on', 'compare'],
                        help="AAformer's [PART] rows on a CPU in one C function (cpu_part_rows, the default where a "
                             'compiler works) or in PyTorch, or both ways')
    parser.add_argument('--model', default='aaformer_base')
    parser.add_argument('--compare_plain_rows', action='store_true',
                        help='also time the same model with its [PART] rows in plain PyTorch instead of the one '
                             'registered operator (aaformer::part_rows)')
    parser.add_argument('--compare_merged_rows', action='store_true',
                        help='also time the same model merging its [PART] rows into a copy of the attention output '
                             'at inference, as before issue #26 (default: written in place)')
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=0).to(device)
    vit = dict(model_name='vit_base_patch16_224', img_size=(256, 128), num_classes=0)
    # the same sequence length with plain attention: ViT-B plus register tokens in place of the [PART]s, to separate
    # the cost of longer sequences from the cost of the auto-alignment
    contenders = {
        'ViT-B': timm.create_model(**vit).to(device),
        f'ViT-B+{model.num_parts}reg': timm.create_model(**vit, reg_tokens=model.num_parts).to(device),
        args.model: model,
    }
    if args.compare_plain_rows:
        plain = copy.deepcopy(model)
        for blk in plain.blocks:
            blk.attn.part_rows_op = False
        contenders[f'{args.model} plain rows'] = plain
    if args.compare_merged_rows:
        merged = copy.deepcopy(model)
        for blk in merged.blocks:
            blk.attn.rows_in_place = False
        contenders[f'{args.model} merged rows'] = merged
    # which contenders run the fused Triton kernels (a module switch, set before each call)
    kernels_on = {name: False for name in contenders}
    if args.triton_kernels == 'on':
        kernels_on[args.model] = True
    elif args.triton_kernels == 'compare':
        contenders[f'{args.model} triton'] = copy.deepcopy(model)
        kernels_on[f'{args.model} triton'] = True
    # which contenders run the C function for the [PART] rows on a CPU (a module switch too)
    c_function = {name: args.cpu_kernel != 'off' for name in contenders}
    if args.cpu_kernel == 'compare':
        contenders[f'{args.model} PyTorch rows'] = copy.deepcopy(model)
        c_function[f'{args.model} PyTorch rows'] = False
        kernels_on[f'{args.model} PyTorch rows'] = False

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == 'bf16' else nullcontext()
    x = torch.randn(args.batch, 3, 256, 128, device=device)

    graphed = args.compile and args.compile_mode == 'reduce-overhead'

    def runners(name, net):
        fwd_net = torch.compile(net, mode=args.compile_mode) if args.compile else net

        def begin():
            part_rows.use_triton_kernels = kernels_on[name]
            cpu_part_rows.enabled = c_function[name]
            if graphed:  # a new iteration: earlier graph outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()

        @torch.no_grad()
        def infer():
            begin()
            net.eval()
            with autocast():
                fwd_net(x)

        def train_step():
            begin()
            net.train()
            with autocast():
                out = fwd_net(x)
            out.float().pow(2).mean().backward()
            net.zero_grad(set_to_none=True)

        return dict(inference=infer, train_step=train_step)

    runs = {name: runners(name, net) for name, net in contenders.items()}
    for fns in runs.values():  # warm-up (and compilation)
        for fn in fns.values():
            fn()
            fn()

    # the assignment alone, on each layer's real [PART] queries and patch keys
    blocks = model.blocks
    p = model.num_parts
    captured = []

    def capture(module, inputs, out):
        qkv = out.reshape(x.shape[0], -1, 3, module_heads, out.shape[-1] // 3 // module_heads).permute(2, 0, 3, 1, 4)
        captured.append((qkv[0][:, :, 1:1 + p].detach(), qkv[1][:, :, 1 + p:].detach()))

    module_heads = blocks[0].attn.num_heads
    hooks = [blk.attn.qkv.register_forward_hook(capture) for blk in blocks]
    with torch.no_grad(), autocast():
        model.eval()(x)
    for h in hooks:
        h.remove()

    def assign_all():
        for blk, (q, k) in zip(blocks, captured):
            blk.attn.assign(q, k)

    assign_all()
    names = list(runs)
    times = {(name, task): [] for name in names for task in ('inference', 'train_step')}
    share = []
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]  # alternate the order so machine drift favours no one
        for task in ('inference', 'train_step'):
            for name in order:
                times[name, task].append(timed(runs[name][task], device, args.repeats))
        share.append(timed(assign_all, device, args.repeats) / times[args.model, 'inference'][-1])

    print(f'machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads '
          f'{torch.get_num_threads()}, device {device}'
          + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else ''))
    print(f'batch {args.batch}, dtype {args.dtype}, compile {args.compile} ({args.compile_mode}), triton kernels '
          f'{args.triton_kernels}, {args.rounds} interleaved rounds, 256x128; ratios are medians of per-round ratios')
    cpu_part_rows.enabled = args.cpu_kernel != 'off'
    print(f'C function for the [PART] rows ({args.cpu_kernel}): {cpu_part_rows.status()}')
    for task in ('inference', 'train_step'):
        base = times[names[0], task]
        cells = []
        for name in names:
            ratio = statistics.median(t / b for t, b in zip(times[name, task], base))
            cells.append(f'{name} {statistics.median(times[name, task]) * 1e3:8.2f} ms ({ratio:.3f}x)')
        print(f'{task:<11} ' + '   '.join(cells))

    def at_equal_length(name, task):
        """Median of the per-round ratios to the equal-length ViT, and their quartiles (the spread)."""
        ratios = [a / b for a, b in zip(times[name, task], times[names[1], task])]
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        return f'{statistics.median(ratios):.3f}x (quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})'
    print(f'{args.model} / {names[1]} (cost of auto-alignment at equal length): inference '
          f'{at_equal_length(args.model, "inference")}, train step {at_equal_length(args.model, "train_step")}')
    for name in names[3:]:  # the model's variants, at equal length too
        print(f'{name} / {names[1]}: inference {at_equal_length(name, "inference")}, train step '
              f'{at_equal_length(name, "train_step")}')
    print(f'assignment (scores + Sinkhorn + rounding, all {len(blocks)} layers, eager) = '
          f'{100 * statistics.median(share):.2f}% of the {args.model} forward')


if __name__ == '__main__':
    main()
