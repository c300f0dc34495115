"""AAformer vs timm's ViT-B/16 at 256x128: inference, training step, and the Sinkhorn's share of the forward.

Both models run in this one process on the same device, dtype and batch, interleaved round by round, and the script
prints medians and ratios. Targets (issue #2): inference <= 1.06x ViT-B, training step <= 1.10x, Sinkhorn <= 2% of
the forward.

    python benchmarks/bench_model.py                          # CPU, fp32, batch 8
    python benchmarks/bench_model.py --device cuda --dtype bf16 --batch 64 --compile
"""
import argparse
import platform
import statistics
import time
from contextlib import nullcontext

import timm
import torch

import aaformer_hf  # noqa: F401


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
    parser.add_argument('--compile', action='store_true', help='torch.compile both models (inductor)')
    parser.add_argument('--model', default='aaformer_base')
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    baseline = timm.create_model('vit_base_patch16_224', img_size=(256, 128), num_classes=0).to(device)
    model = timm.create_model(args.model, num_classes=0).to(device)
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == 'bf16' else nullcontext()
    x = torch.randn(args.batch, 3, 256, 128, device=device)

    def runners(net):
        fwd_net = torch.compile(net) if args.compile else net

        @torch.no_grad()
        def infer():
            net.eval()
            with autocast():
                fwd_net(x)

        def train_step():
            net.train()
            with autocast():
                out = fwd_net(x)
            out.float().pow(2).mean().backward()
            net.zero_grad(set_to_none=True)

        return infer, train_step

    base_infer, base_train = runners(baseline)
    ours_infer, ours_train = runners(model)
    for fn in (base_infer, ours_infer, base_train, ours_train):  # warm-up (and compilation)
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
    rows = {'inference': [], 'train step': [], 'sinkhorn share': []}
    for r in range(args.rounds):
        # alternate which model runs first, so drift in machine state does not favour one
        if r % 2:
            o_inf, b_inf = timed(ours_infer, device, args.repeats), timed(base_infer, device, args.repeats)
            o_tr, b_tr = timed(ours_train, device, args.repeats), timed(base_train, device, args.repeats)
        else:
            b_inf, o_inf = timed(base_infer, device, args.repeats), timed(ours_infer, device, args.repeats)
            b_tr, o_tr = timed(base_train, device, args.repeats), timed(ours_train, device, args.repeats)
        sk = timed(assign_all, device, args.repeats)
        rows['inference'].append((b_inf, o_inf))
        rows['train step'].append((b_tr, o_tr))
        rows['sinkhorn share'].append((o_inf, sk))

    print(f'machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads '
          f'{torch.get_num_threads()}, device {device}'
          + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else ''))
    print(f'batch {args.batch}, dtype {args.dtype}, compile {args.compile}, {args.rounds} interleaved rounds, '
          f'{args.model} vs vit_base_patch16_224 @256x128')
    for name in ('inference', 'train step'):
        base_t = statistics.median(r[0] for r in rows[name])
        ours_t = statistics.median(r[1] for r in rows[name])
        ratio = statistics.median(r[1] / r[0] for r in rows[name])
        print(f'{name:<12} ViT-B {base_t * 1e3:9.2f} ms   {args.model} {ours_t * 1e3:9.2f} ms   ratio {ratio:.3f}x')
    share = statistics.median(r[1] / r[0] for r in rows['sinkhorn share'])
    sk_t = statistics.median(r[1] for r in rows['sinkhorn share'])
    print(f'assignment (scores + Sinkhorn + rounding, all {len(blocks)} layers) {sk_t * 1e3:.2f} ms = '
          f'{100 * share:.2f}% of the {args.model} forward')


if __name__ == '__main__':
    main()
