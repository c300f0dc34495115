"""Profile one AAformer forward, or training step (kernels by device time, ops by host time) to see where the time
goes: on a GPU, device time well below host time means launch-bound (issue #13).

    python benchmarks/profile_model.py --device cuda --batch 64 --bf16
    python benchmarks/profile_model.py --device cuda --batch 64 --bf16 --train_step --triton_kernels --trace t.json
"""
import argparse
from contextlib import nullcontext

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import aaformer_hf  # noqa: F401
from aaformer_hf.layers import part_rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--model', default='aaformer_base')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--bf16', action='store_true', help='bf16 autocast')
    parser.add_argument('--train_step', action='store_true', help='forward + backward instead of inference')
    parser.add_argument('--triton_kernels', action='store_true', help="the [PART] rows' fused Triton kernels (CUDA)")
    parser.add_argument('--trace', help='also write a Chrome trace (chrome://tracing, perfetto) to this file')
    args = parser.parse_args()
    part_rows.use_triton_kernels = args.triton_kernels
    device = torch.device(args.device)
    model = timm.create_model(args.model).to(device).train(args.train_step)
    x = torch.randn(args.batch, 3, 256, 128, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext():
            out = model(x)
        if args.train_step:
            out.float().pow(2).mean().backward()
            model.zero_grad(set_to_none=True)

    with nullcontext() if args.train_step else torch.no_grad():
        for _ in range(3):
            step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            step()
            if device.type == 'cuda':
                torch.cuda.synchronize()
    if args.trace:
        prof.export_chrome_trace(args.trace)
    sort = 'cuda_time_total' if device.type == 'cuda' else 'cpu_time_total'
    print(prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60))
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=15, max_name_column_width=60))


if __name__ == '__main__':
    main()
