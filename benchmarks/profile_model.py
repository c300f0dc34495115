"""Profile one AAformer forward (kernels by device time, ops by host time) to see where the time goes.

    python benchmarks/profile_model.py --device cuda --batch 64
"""
import argparse
from contextlib import nullcontext

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import aaformer_hf  # noqa: F401


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--model', default='aaformer_base')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--bf16', action='store_true', help='bf16 autocast')
    args = parser.parse_args()
    device = torch.device(args.device)
    model = timm.create_model(args.model).to(device).eval()
    x = torch.randn(args.batch, 3, 256, 128, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with torch.no_grad(), autocast:
        for _ in range(3):
            model(x)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            model(x)
            if device.type == 'cuda':
                torch.cuda.synchronize()
    sort = 'cuda_time_total' if device.type == 'cuda' else 'cpu_time_total'
    print(prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60))
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=15, max_name_column_width=60))


if __name__ == '__main__':
    main()
