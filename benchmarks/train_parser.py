"""A small human parser for the SYNTHETIC sets, so the SPReID row of issue #11 can run on PREDICTED parsing maps
instead of the generator's exact ones (an oracle no real parser gives).

Trains a tiny SegFormer (transformers; LIP label names, so ``aaformer_hf.apps.write_parsing`` needs no label map) on
one set's images and parsing maps (the pretraining set: identities disjoint from the re-ID set), saves it as a
transformers folder, copies the images of another set to ``OUT/data`` and writes the maps the parser predicts there
(``write_parsing_maps``), and reports pixel accuracy and mean IoU against that set's true maps
(``OUT/parser_metrics.json``).

    python benchmarks/train_parser.py --train_root outputs/variants_misaligned/data_pretrain \\
        --target_root outputs/variants_misaligned/data --out outputs/variants_misaligned/parser
    python benchmarks/train_variants.py --out outputs/variants_misaligned --preset misaligned --regimes pretrained \\
        --variants spreid --data_root outputs/variants_misaligned/parser/data --tag predicted_parsing

Everything here is SYNTHETIC data: the numbers compare oracle and predicted parts with each other, nothing more.
"""
import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from aaformer_hf.data import load_reid_dataset
from aaformer_hf.data.parsing import NUM_PARSING_CLASSES, add_parsing_column, parsing_path
from aaformer_hf.data.synthetic import LIP_LABELS
from aaformer_hf.apps.write_parsing import lip_label_map, write_parsing_maps


def build_parser(height: int, width: int, hidden: int = 32):
    """A tiny SegFormer with LIP's 20 labels and its image processor at the crops' size."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    config = SegformerConfig(
        num_labels=NUM_PARSING_CLASSES, id2label=dict(enumerate(LIP_LABELS)),
        label2id={name: i for i, name in enumerate(LIP_LABELS)}, depths=[2, 2, 2, 2],
        hidden_sizes=[hidden, 2 * hidden, 4 * hidden, 8 * hidden], num_attention_heads=[1, 2, 4, 8],
        decoder_hidden_size=4 * hidden)
    processor = SegformerImageProcessor(size={'height': height, 'width': width}, do_reduce_labels=False)
    return SegformerForSemanticSegmentation(config), processor


def load_pairs(root: Path, split: str):
    """(PIL images, (N, H, W) int64 label maps) of a split with parsing maps."""
    ds = add_parsing_column(load_reid_dataset('market1501', root, verify_images=False)[split], root)
    images = [ds[i]['image'] for i in range(len(ds))]
    maps = np.stack([np.array(Image.open(p), dtype=np.int64) for p in ds['parsing']])
    return images, torch.from_numpy(maps)


def mirror_labels(maps: torch.Tensor) -> torch.Tensor:
    """(..., H, W) LIP maps mirrored left-right: the pixels flip and the left/right labels swap (arms 14/15, legs
    16/17, shoes 18/19), as they do for a mirrored person."""
    flipped = maps.flip(-1)
    out = flipped.clone()
    for a, b in ((14, 15), (16, 17), (18, 19)):
        out[flipped == a], out[flipped == b] = b, a
    return out


def train_parser(model, processor, images, maps, epochs: int, batch_size: int, lr: float, seed: int) -> list:
    """Cross-entropy at full resolution (SegFormer upsamples its logits to the labels), horizontal flips."""
    torch.manual_seed(seed), random.seed(seed)
    pixels = processor(images=images, return_tensors='pt')['pixel_values']
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * (len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    bar = tqdm(total=steps, desc='parser', unit='step', disable=None)  # quiet when not a terminal
    for _ in range(epochs):
        order = torch.randperm(len(images))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            x, y = pixels[index], maps[index]
            flip = torch.rand(len(index)) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), mirror_labels(y[flip])
            loss = model(pixel_values=x, labels=y).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f'{np.mean(losses[-20:]):.3f}')
    bar.close()
    return losses


def agreement(predicted: torch.Tensor, truth: torch.Tensor) -> Dict[str, float]:
    """Pixel accuracy and mean IoU over the labels present in either map set (LIP's 20 classes)."""
    ious = []
    for label in range(NUM_PARSING_CLASSES):
        p, t = predicted == label, truth == label
        union = int((p | t).sum())
        if union:
            ious.append(int((p & t).sum()) / union)
    return {'pixel_accuracy': float((predicted == truth).float().mean()), 'mean_iou': float(np.mean(ious)),
            'foreground_iou': float(((predicted > 0) & (truth > 0)).sum() / ((predicted > 0) | (truth > 0)).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--train_root', type=Path, required=True, help='a synthetic set with maps to learn from')
    parser.add_argument('--target_root', type=Path, required=True, help='the set to write predicted maps for')
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--epochs', type=int, default=8)
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--hidden', type=int, default=32, help='width of the first SegFormer stage')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if (args.out / 'data').exists():
        sys.exit(f'{args.out / "data"}: exists already; choose another --out')
    images, maps = load_pairs(args.train_root, 'train')
    height, width = maps.shape[-2:]
    model, processor = build_parser(height, width, args.hidden)
    start = time.perf_counter()
    losses = train_parser(model, processor, images, maps, args.epochs, args.batch_size, args.lr, args.seed)
    seconds = time.perf_counter() - start
    model.save_pretrained(args.out / 'model')
    processor.save_pretrained(args.out / 'model')

    # the target set's images, without its maps: the parser writes its own
    data = args.out / 'data'
    shutil.copytree(args.target_root, data, ignore=shutil.ignore_patterns('parsing'))
    table = lip_label_map(model.config.id2label)
    target = load_reid_dataset('market1501', data, verify_images=False)
    predicted, truth = [], []
    with torch.no_grad():
        for name in ('train', 'query', 'gallery'):
            write_parsing_maps(target[name], data, model, processor, table, batch_size=32)
            for path in target[name]['path']:
                relative = Path(path).resolve().relative_to(data.resolve())
                predicted.append(np.array(Image.open(parsing_path(path, data)), dtype=np.int64))
                truth.append(np.array(Image.open(parsing_path(args.target_root / relative, args.target_root)),
                                      dtype=np.int64))
    metrics = dict(agreement(torch.from_numpy(np.stack(predicted)), torch.from_numpy(np.stack(truth))),
                   train_images=len(images), epochs=args.epochs, train_seconds=seconds,
                   final_loss=float(np.mean(losses[-20:])), images_scored=len(predicted))
    (args.out / 'parser_metrics.json').write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))


if __name__ == '__main__':
    main()
