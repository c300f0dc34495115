"""Host-side operator calls that the [PART] path adds per layer: the proxy for eager GPU overhead that a CPU can
measure (issue #13). On a GPU each top-level operator is at least one launch of a few microseconds of host time,
while the [PART] path's kernels do only a few microseconds of work each.

Counts top-level operator calls (torch profiler on CPU: ``aten::`` and custom-op events with no operator above
them) of an ``aaformer_tiny`` forward, and of a forward + backward, minus those of the same model with
``part_groups=()`` (a plain ViT), divided by the depth. Twice: as on a GPU (the registered operator in training, the
PyTorch code at inference), and as this CPU runs it (the C functions of ``cpu_part_rows``, where a compiler built
them, and a plain ``autograd.Function`` in training; on a CPU a dispatch costs microseconds, not a launch):

    python benchmarks/count_host_ops.py
"""
import argparse
from collections import Counter

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import aaformer_hf  # noqa: F401
from aaformer_hf.layers import auto_alignment, cpu_part_rows, part_rows

_OP_PREFIXES = ('aten::', 'aaformer::')


def is_op(event) -> bool:
    return event.name.startswith(_OP_PREFIXES)


def top_level_ops(events) -> Counter:
    """Operator events with no operator among their ancestors, by name."""
    counts = Counter()
    for event in events:
        if not is_op(event):
            continue
        parent = event.cpu_parent
        while parent is not None and not is_op(parent):
            parent = parent.cpu_parent
        if parent is None:
            counts[event.name] += 1
    return counts


def count(model: torch.nn.Module, x: torch.Tensor, backward: bool) -> Counter:
    def step():
        if backward:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    step()  # warm-up: lazy initialisation outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return top_level_ops(prof.events())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--depth', type=int, default=4)
    parser.add_argument('--show', action='store_true', help='list the extra operators by name')
    args = parser.parse_args()
    torch.manual_seed(0)
    size = dict(embed_dim=64, depth=args.depth, num_heads=2)
    x = torch.randn(2, 3, 256, 128)
    as_on_this_cpu = auto_alignment.part_rows_autograd
    for path, on_this_cpu in (('as on a GPU', False), ('on this CPU', True)):
        cpu_part_rows.enabled = on_this_cpu
        auto_alignment.part_rows_autograd = as_on_this_cpu if on_this_cpu else part_rows.part_rows
        print(path)
        for mode, backward in (('inference', False), ('forward + backward', True)):
            aaformer = count(timm.create_model('aaformer_tiny', **size), x, backward)
            plain = count(timm.create_model('aaformer_tiny', part_groups=(), **size), x, backward)
            extra = sum(aaformer.values()) - sum(plain.values())
            print(f'  {mode}: {sum(aaformer.values())} top-level operator calls with [PART]s, {sum(plain.values())} '
                  f'without; {extra / args.depth:.1f} extra per layer')
            if args.show:
                diff = aaformer - plain
                print('    ' + ', '.join(f'{name} x{n}' for name, n in diff.most_common()))
    print(f'C functions: {cpu_part_rows.status()}')


if __name__ == '__main__':
    main()
