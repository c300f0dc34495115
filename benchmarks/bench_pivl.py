"""π-VL's inference cost against its baseline, in this one process, interleaved round by round (medians): the π-VL
model (``pivl_vit_base_patch16``, 1280-d head) vs timm's CLIP ViT-B/16 (``vit_base_patch16_clip_quickgelu_224`` at
256x128, its 512-d projection head); and π-VL's CNN (``pivl_resnet50``, last stride 1, 3072-d head) vs timm's
``resnet50_clip`` at 256x128 built with the same last stride 1 (timm's own ByobNet and attention pool), and as timm
ships it (last stride 2: a quarter of the last stage's work, for reference). Target: ratio ~1.00 at equal stride.

Then the training costs (a stage-2 step with and without π-VL's alignment head, the text tower's share of a stage-1
step): those use the training example's modules, so the example measures them itself - this script runs
``examples/train_costs.py`` with the same flags (``--inference_only`` skips it).

    python benchmarks/bench_pivl.py                               # CPU, fp32, batch 8 (text: 64 prompts)
    python benchmarks/bench_pivl.py --device cuda --dtype bf16 --batch 64
"""
import argparse
import platform
import statistics
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import timm
import torch

import aaformer_hf  # noqa: F401  (registers the models with timm)
from aaformer_hf.hf import PiVLConfig, PiVLForReID

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_model import timed  # noqa: E402


def interleaved(contenders, device, rounds, repeats, warmup=1):
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    results = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            results[name].append(timed(fn, device, repeats))
    return {name: statistics.median(values) for name, values in results.items()}


def report(title, medians, baseline, unit='ms'):
    print(f'\n{title}')
    for name, seconds in medians.items():
        print(f'  {name:<40} {1000 * seconds:9.1f} {unit}   {seconds / medians[baseline]:.3f}x')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='fp32', choices=['fp32', 'bf16'], help='bf16 = autocast')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--text_batch', type=int, default=64, help='prompts per stage-1 step')
    parser.add_argument('--classes', type=int, default=751)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--inference_only', action='store_true', help='skip the training costs')
    args = parser.parse_args()
    device = torch.device(args.device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.dtype == 'bf16' else nullcontext
    torch.manual_seed(0)
    print(f'{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.device}, {args.dtype}, '
          f'batch {args.batch}, {torch.get_num_threads()} threads')

    # 1. inference
    pivl = timm.create_model('pivl_vit_base_patch16', num_classes=0).to(device).eval()
    clip = timm.create_model('vit_base_patch16_clip_quickgelu_224', img_size=(256, 128), num_classes=512
                             ).to(device).eval()
    x = torch.randn(args.batch, 3, 256, 128, device=device)

    def infer(model):
        def run():
            with torch.no_grad(), autocast():
                model(x)
        return run
    medians = interleaved({'timm CLIP ViT-B/16 (256x128)': infer(clip), 'pivl_vit_base_patch16': infer(pivl)},
                          device, args.rounds, args.repeats)
    report('inference (forward, no grad)', medians, 'timm CLIP ViT-B/16 (256x128)')
    del pivl, clip

    # π-VL's CNN against timm's resnet50_clip, the same last stride, and as timm ships it
    from dataclasses import replace

    from timm.models.byobnet import ByobNet, model_cfgs
    base = model_cfgs['resnet50_clip']
    stride1 = replace(base, blocks=base.blocks[:3] + (replace(base.blocks[3], s=1),))
    contenders = {
        'timm resnet50_clip, last stride 1': ByobNet(stride1, img_size=(256, 128), num_classes=1024),
        'pivl_resnet50 (last stride 1)': timm.create_model('pivl_resnet50', num_classes=0),
        'timm resnet50_clip as shipped (stride 2)': timm.create_model('resnet50_clip', img_size=(256, 128)),
    }
    medians = interleaved({name: infer(model.to(device).eval()) for name, model in contenders.items()},
                          device, args.rounds, args.repeats)
    report('inference, CNN (forward, no grad)', medians, 'timm resnet50_clip, last stride 1')
    del contenders
    if not args.inference_only:  # the training costs: the example's own script, same flags
        flags = [f'--{name}={value}' for name, value in vars(args).items() if name != 'inference_only']
        sys.stdout.flush()
        subprocess.run([sys.executable, str(ROOT / 'examples' / 'train_costs.py'), *flags], check=True)


if __name__ == '__main__':
    main()
