"""Check that an AAformer compiles as one graph on a device (no graph breaks, no recompiles across calls) and that
the compiled model matches eager.

    python benchmarks/check_compile.py --device cuda --dtype bf16
"""
import argparse
from contextlib import nullcontext

import timm
import torch
import torch._dynamo as dynamo

import aaformer_hf  # noqa: F401


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='fp32', choices=['fp32', 'bf16'])
    parser.add_argument('--model', default='aaformer_tiny')
    parser.add_argument('--backend', default='inductor')
    args = parser.parse_args()
    device = torch.device(args.device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == 'bf16' else nullcontext()

    torch.manual_seed(0)
    model = timm.create_model(args.model).to(device).eval()
    x = torch.randn(4, 3, 256, 128, device=device)
    for grad in (False, True):
        with torch.set_grad_enabled(grad), autocast():
            explanation = dynamo.explain(model)(x)
        print(f'grad={grad}: {explanation.graph_count} graph(s), {explanation.graph_break_count} break(s)')
        for reason in explanation.break_reasons:
            print('  break:', reason.reason, reason.user_stack[-1] if reason.user_stack else '')
    dynamo.reset()
    compiled = torch.compile(model, backend=args.backend, fullgraph=True)
    with torch.no_grad(), autocast():
        eager_out, compiled_out = model(x), compiled(x)
        compiled(x)
    diff = (eager_out.float() - compiled_out.float()).abs().max().item()
    print(f'fullgraph compile ({args.backend}) ok; max |eager - compiled| = {diff:.3g}; '
          f'finite: {bool(torch.isfinite(compiled_out).all())}')


if __name__ == '__main__':
    main()
