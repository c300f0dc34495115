"""AAformer against its ablation baselines on the SYNTHETIC set, with equal budgets (the paper's Tables IV/V in
miniature), in two regimes:

- scratch: every variant starts from random weights;
- pretrained: a plain ViT (the same tiny backbone) is first trained on a larger, disjoint SYNTHETIC identity set, saved
  as a timm VisionTransformer checkpoint, and every variant starts from it through timm's pretrained-loading path
  (``pretrained_cfg_overlay=dict(file=...)``), as the paper starts from ImageNet weights.

For variants with [PART]s it also reports how patches are spread over parts on the query images (last layer, per
group, over images and heads): the mean share of the largest part and the share of empty parts - the paper reports
that nearest-neighbour assignment piles most patches onto one part.

    python benchmarks/train_variants.py --out outputs/variants        # ~35 min on 2 CPU cores
    python benchmarks/train_variants.py --out outputs/variants --regimes pretrained --seeds 1,2   # more seeds
    python benchmarks/train_variants.py --out outputs/variants_misaligned --preset misaligned --regimes pretrained

``--preset misaligned`` (``aaformer_hf.data.synthetic.PRESETS``) generates both the re-ID set and the pretraining set
with strong detector misalignment, occluders and back/side views, where fixed stripes stop matching body parts;
'aligned' (the default) is the control.

A wider backbone goes in its own folder: ``--out outputs/variants_d128 --size 128 4 4 --variants aaformer,vit,mgn``.
Training seeds other than 0 write to VARIANT_seedN folders; the pretrained backbone (and the data) stay the same for
every seed, and an existing backbone checkpoint in --out is reused.

Writes OUT/results.json and prints a markdown table. Everything here is SYNTHETIC data: the numbers compare
variants with each other, not with real re-ID results.
"""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import timm
import torch
from safetensors.torch import save_file

from aaformer_hf.data import load_reid_dataset
from aaformer_hf.data.synthetic import PRESETS, generate_market_layout
from aaformer_hf.reid.evaluation import evaluate
from aaformer_hf.hf import AAformerImageProcessor, AAformerModel

from diagnose_parts import split_embeddings  # beside this script

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / 'examples' / 'train.py'  # the training example, run as a script

VARIANTS = {'AAformer (Sinkhorn)': None, 'ViT-baseline': 'vit', '[PART]s + PCB stripes': 'pcb',
            '[PART]s + MGN stripes': 'mgn', '[PART]s + nearest neighbour': 'nearest',
            '[PART]s + SPReID parsing regions': 'spreid', 'ViT-baseline, 6*CLS': 'multi_cls'}


def part_statistics(model_dir: Path, data_root: Path, limit: int = 64) -> Dict[str, List[float]]:
    """Last-layer assignment on query images: per group, mean share of patches in its largest part, share of empty
    parts (over images x heads x parts)."""
    model = AAformerModel.from_pretrained(model_dir).timm_model.eval()
    if not model.assigns_patches:
        return {}  # no [PART]s, or no assignment of the model's own (parsing regions, extra CLS tokens)
    query = load_reid_dataset('market1501', data_root, verify_images=False)['query']
    processor = AAformerImageProcessor.from_pretrained(model_dir)
    pixels = processor([query[i]['image'] for i in range(min(limit, len(query)))], return_tensors='pt')['pixel_values']
    with torch.no_grad():
        assigned = model.forward_tokens(pixels, output_assignments=True).assignments[-1]  # (B, H, P, N)
    counts = assigned.sum(-1).float()  # (B, H, P)
    largest, empty, start = [], [], 0
    for size in model.part_groups:
        group = counts[:, :, start:start + size]
        largest.append(float((group.amax(-1) / group.sum(-1)).mean()))
        empty.append(float((group == 0).float().mean()))
        start += size
    return {'largest_part_share': largest, 'empty_part_share': empty, 'groups': list(model.part_groups)}


def token_breakdown(model_dir: Path, data_root: Path) -> Dict[str, float]:
    """mAP of the full embedding, of CLS alone and of the [PART]s alone (after the BNNeck, L2-normalised)."""
    width, (qf, qp, qc), (gf, gp, gc) = split_embeddings(model_dir, data_root)
    parts = {'all': slice(None), 'CLS': slice(0, width), '[PART]s': slice(width, None)}
    return {name: evaluate(qf[:, cut], gf[:, cut], qp, gp, qc, gc, normalize=True)['mAP']
            for name, cut in parts.items() if qf[:, cut].shape[1]}


def train(values: dict) -> dict:
    """One run of the training example, as a user runs it (``python examples/train.py --field value ...``); returns
    the metrics.json it wrote."""
    flags = [item for key, value in values.items() if value is not None
             for item in (f'--{key}', json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value))]
    subprocess.run([sys.executable, str(TRAIN_SCRIPT), *flags], check=True)
    return json.loads((Path(values['output_dir']) / 'metrics.json').read_text())


def pretrain_backbone(out: Path, common: dict, preset: str = 'aligned') -> Path:
    """A plain ViT trained on a disjoint, larger SYNTHETIC identity set, saved as a timm VisionTransformer."""
    size = common['model_args']
    path = out / 'synthetic_vit_d{embed_dim}_l{depth}_h{num_heads}.safetensors'.format(**size)
    if path.exists():  # named by its size, so a reused backbone always fits
        print(f'reusing the pretrained backbone {path}')
        return path
    root = out / 'data_pretrain'
    config = dict(common, dataset='synthetic', data_root=str(root), output_dir=str(out / 'pretrain'),
                  baseline='vit', dataset_options={'train_ids': 300, 'test_ids': 50, 'seed': 1234, 'preset': preset})
    train(config)
    weights = AAformerModel.from_pretrained(out / 'pretrain' / 'model').timm_model.state_dict()
    vit = timm.create_model('vit_base_patch16_224', img_size=(256, 128), num_classes=0, **size)
    backbone = {k: v for k, v in weights.items() if k in vit.state_dict()}
    vit.load_state_dict(backbone, strict=True)  # proves it is a complete timm ViT checkpoint
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, default=Path('outputs/variants'))
    parser.add_argument('--epochs', type=int, default=20)  # standard epochs: 25 steps each, 500 steps in all
    parser.add_argument('--regimes', default='scratch,pretrained')
    parser.add_argument('--seeds', default='0', help='training seeds, comma-separated')
    parser.add_argument('--variants', default='aaformer,vit,pcb,mgn,nearest',
                        help='which to train, comma-separated (aaformer, vit, pcb, mgn, nearest, spreid, multi_cls)')
    parser.add_argument('--size', type=int, nargs=3, default=(64, 4, 2), metavar=('WIDTH', 'DEPTH', 'HEADS'),
                        help='backbone of every variant (and of the pretrained ViT): embed_dim, depth, num_heads')
    parser.add_argument('--preset', choices=sorted(PRESETS), default='aligned',
                        help='synthetic difficulty of the re-ID and pretraining sets (a new --out per preset)')
    parser.add_argument('--model_args', type=json.loads, default={},
                        help='JSON constructor arguments for every trained variant (not the pretraining), e.g. '
                             '\'{"part_init_std": 0.3}\'; give a --tag with it')
    parser.add_argument('--tag', help='names these runs (folders VARIANT_TAG, rows "VARIANT [TAG]")')
    parser.add_argument('--mixed_precision', choices=['no', 'bf16'], default='no',
                        help='bf16 autocast for the trained variants (not the pretraining; CPUs with AVX512-BF16 run '
                             'it as fast as fp32); give a --tag with it')
    parser.add_argument('--data_root', type=Path,
                        help='the re-ID set to train and test on instead of OUT/data, e.g. the copy with PREDICTED '
                             'parsing maps benchmarks/train_parser.py writes; give a --tag with it')
    parser.add_argument('--breakdown_only', action='store_true',
                        help='only the per-token retrieval of models an earlier run left in --out (those of '
                             '--variants, --seeds and --tag), with the mean over seeds')
    args = parser.parse_args()
    if args.breakdown_only:  # --data_root: the set to evaluate on (e.g. a held-out one), default OUT/data
        print_breakdown(args)
        return
    if (args.model_args or args.data_root or args.mixed_precision != 'no') and not args.tag:
        parser.error('--model_args, --data_root and --mixed_precision need a --tag naming those runs')
    data_root = args.data_root or args.out / 'data'
    if args.data_root and not data_root.is_dir():
        parser.error(f'--data_root {data_root}: no such folder')
    if not data_root.exists():
        # parsing maps too: the SPReID-style row takes its [PART]s from them
        generate_market_layout(data_root, train_ids=100, test_ids=50, seed=0, parsing=True, preset=args.preset)
    width, depth, heads = args.size
    common = dict(model='aaformer_tiny', model_args=dict(embed_dim=width, depth=depth, num_heads=heads),
                  pretrained=False, epochs=args.epochs, warmup_epochs=max(1, args.epochs // 10),
                  batch_size=32, num_instances=4, eval_every=args.epochs, num_workers=2, checkpointing_steps=None,
                  seed=0)
    results_path = args.out / 'results.json'
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    seeds = [int(seed) for seed in args.seeds.split(',')]
    wanted = set(args.variants.split(','))
    for regime in args.regimes.split(','):
        extra = {}
        if regime == 'pretrained':
            extra['pretrained_file'] = str(pretrain_backbone(args.out, common, args.preset))
        if 0 in seeds and not args.tag and f'{regime} / AAformer untrained' not in results:  # once per --out
            untrained = train(dict(common, **extra, dataset='market1501', data_root=str(data_root),
                                   output_dir=str(args.out / regime / 'untrained'), eval_only=True))
            results[f'{regime} / AAformer untrained'] = {'metrics': untrained}
        for seed in seeds:
            for name, baseline in VARIANTS.items():
                key = baseline or 'aaformer'
                if key not in wanted:
                    continue
                run_dir = run_folder(args.out, regime, key, args.tag, seed)
                model_args = dict(common['model_args'], **args.model_args)
                metrics = train(dict(common, seed=seed, model_args=model_args,
                                     mixed_precision=args.mixed_precision, **extra, baseline=baseline,
                                     dataset='market1501', data_root=str(data_root), output_dir=str(run_dir)))
                results[f'{regime} / {name}' + (f' [{args.tag}]' if args.tag else '') +
                        (f' (seed {seed})' if seed else '')] = {
                    'metrics': metrics, 'parts': part_statistics(run_dir / 'model', data_root)}
                results_path.write_text(json.dumps(results, indent=2))
    print('| regime / variant | R1 | mAP | mINP | largest part share per group | empty parts per group |')
    print('|---|---:|---:|---:|---|---|')
    for name, r in results.items():
        m, parts = r['metrics'], r.get('parts') or {}
        share = ' / '.join(f'{100 * s:.0f} %' for s in parts.get('largest_part_share', [])) or '-'
        empty = ' / '.join(f'{100 * s:.0f} %' for s in parts.get('empty_part_share', [])) or '-'
        print(f'| {name} | {100 * m["rank1"]:.1f} | {100 * m["mAP"]:.1f} | {100 * m["mINP"]:.1f} | {share} | {empty} |')
    print_seed_summary(results)


def run_folder(out: Path, regime: str, variant: str, tag, seed: int) -> Path:
    """Where one training run lives: OUT/REGIME/VARIANT[_TAG][_seedN] (seed 0 has no suffix)."""
    return out / regime / (variant + (f'_{tag}' if tag else '') + (f'_seed{seed}' if seed else ''))


def print_breakdown(args) -> None:
    """mAP of all tokens, CLS alone and [PART]s alone for each trained model of --variants / --seeds / --tag, then
    the mean (min-max) over seeds. A ViT-baseline's embedding is its CLS token."""
    seeds = [int(seed) for seed in args.seeds.split(',')]
    wanted = set(args.variants.split(','))
    data_root = args.data_root or args.out / 'data'
    rows: Dict[str, List[Dict[str, float]]] = {}
    print('| regime / variant (seed) | mAP all | mAP CLS | mAP [PART]s |\n|---|---:|---:|---:|')
    for regime in args.regimes.split(','):
        for name, baseline in VARIANTS.items():
            key = baseline or 'aaformer'
            if key not in wanted:
                continue
            for seed in seeds:
                model_dir = run_folder(args.out, regime, key, args.tag, seed) / 'model'
                if not model_dir.exists():
                    continue
                m = token_breakdown(model_dir, data_root)
                m.setdefault('[PART]s', float('nan'))
                label = f'{regime} / {name}' + (f' [{args.tag}]' if args.tag else '')
                rows.setdefault(label, []).append(m)
                print(f'| {label} ({seed}) | {100 * m["all"]:.1f} | {100 * m["CLS"]:.1f} | {100 * m["[PART]s"]:.1f} |')
    print('\n| regime / variant | seeds | mAP all | mAP CLS alone | mAP [PART]s alone |\n|---|---:|---:|---:|---:|')
    for label, runs in rows.items():
        print(seed_row(label, runs, ('all', 'CLS', '[PART]s')))


def seed_row(label: str, runs: List[Dict[str, float]], keys) -> str:
    """A table row: the number of runs, then each key's mean (min-max) over them, in percent."""
    cells = []
    for key in keys:
        values = [100 * run[key] for run in runs]
        cells.append(f'{sum(values) / len(values):.1f} ({min(values):.1f}-{max(values):.1f})')
    return f'| {label} | {len(runs)} | ' + ' | '.join(cells) + ' |'


def print_seed_summary(results: dict) -> None:
    """Mean and range over training seeds, for the variants run with more than one."""
    by_variant: Dict[str, List[dict]] = {}
    for name, r in results.items():
        by_variant.setdefault(re.sub(r' \(seed \d+\)$', '', name), []).append(r['metrics'])
    rows = {name: runs for name, runs in by_variant.items() if len(runs) > 1}
    if not rows:
        return
    print('\n| regime / variant | seeds | R1 mean (min-max) | mAP mean (min-max) | mINP mean (min-max) |')
    print('|---|---:|---:|---:|---:|')
    for name, runs in rows.items():
        print(seed_row(name, runs, ('rank1', 'mAP', 'mINP')))


if __name__ == '__main__':
    main()
