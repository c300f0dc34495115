"""How fast the training loader delivers batches, per worker, and how many workers a GPU needs.

The loader is the trainer's own (``aaformer_hf.data.train_loader``: PK sampler, position-seeded
augmentation, the training transforms of the model's pretrained_cfg), read without a model. It reports

- the cost of one item in the main process, split into reading + decoding the row (``datasets``), the transforms,
  and the per-item reseeding that makes resume exact;
- steady-state images/s of the DataLoader for each worker count (worker start-up excluded: persistent workers are
  started by a first pass);
- how many workers each consumption rate given with ``--consume`` needs (images/s, e.g. a GPU training step rate
  measured with ``benchmarks/bench_model.py``).

    python benchmarks/bench_loader.py --workers 0,1,2 --consume 1415,3165

Defaults to the SYNTHETIC Market-layout set (generated into --data_root if missing); ``--dataset`` / ``--data_root``
point it at a real one.
"""
import argparse
import random
import time
from pathlib import Path

import timm
import torch

import aaformer_hf  # noqa: F401  (registers the models)
from aaformer_hf.data import build_transforms, load_reid_dataset
from aaformer_hf.data.synthetic import generate_market_layout
from aaformer_hf.data.loaders import ReIDItems, train_loader


def per_item_costs(items: ReIDItems, count: int) -> dict:
    """Mean milliseconds per item of each stage, in this process."""
    indices = random.Random(0).sample(range(len(items)), min(count, len(items)))
    started = time.perf_counter()
    rows = [items.dataset[i] for i in indices]
    read = time.perf_counter() - started
    started = time.perf_counter()
    for row in rows:
        items.transform(row['image'])
    transform = time.perf_counter() - started
    started = time.perf_counter()
    for n, i in enumerate(indices):
        items[(i, n)]
    seeded = time.perf_counter() - started
    scale = 1000 / len(indices)
    return {'read + decode': read * scale, 'transforms': transform * scale,
            'seeded item (all of it)': seeded * scale, 'seeding overhead': (seeded - read - transform) * scale}


def loader_rate(dataset, transform, workers: int, batch_size: int, batches: int) -> float:
    """Steady-state images/s over ``batches`` batches (one pass first to start persistent workers)."""
    loader, sampler = train_loader(dataset, transform, batch_size, 4, seed=0, num_workers=workers)
    sampler.set_epoch(0)
    for n, _ in enumerate(loader):  # start-up + warm caches
        if n >= 2:
            break
    images, started, epoch = 0, time.perf_counter(), 1
    while images < batches * batch_size:
        sampler.set_epoch(epoch)
        for pixels, _, _ in loader:
            images += pixels.shape[0]
            if images >= batches * batch_size:
                break
        epoch += 1
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', default='market1501')
    parser.add_argument('--data_root', type=Path, default=Path('outputs/bench_loader/data'))
    parser.add_argument('--model', default='aaformer_base', help='whose pretrained_cfg gives size, mean and std')
    parser.add_argument('--workers', default='0,1,2')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--batches', type=int, default=30)
    parser.add_argument('--consume', default='', help='images/s rates to size the worker count for, comma-separated')
    args = parser.parse_args()
    torch.set_num_threads(1)  # what each DataLoader worker gets: the per-item numbers are per core
    if args.dataset == 'market1501' and not args.data_root.exists():
        generate_market_layout(args.data_root, train_ids=100, test_ids=10, seed=0)
    train = load_reid_dataset(args.dataset, args.data_root)['train']
    cfg = timm.create_model(args.model, pretrained=False).pretrained_cfg
    transform = build_transforms(cfg, train=True)
    sizes = {train[i]['image'].size for i in range(0, len(train), max(1, len(train) // 50))}
    print(f'{args.dataset} at {args.data_root}: {len(train)} training images, sizes e.g. {sorted(sizes)[:3]}, '
          f'-> {cfg["input_size"]}')

    costs = per_item_costs(ReIDItems(train, transform), 200)
    print('\n| stage (one item, one core) | ms |\n|---|---:|')
    for stage, ms in costs.items():
        print(f'| {stage} | {ms:.2f} |')

    print(f'\n| workers | images/s (batch {args.batch_size}) |\n|---:|---:|')
    rates = {}
    for workers in (int(w) for w in args.workers.split(',')):
        rates[workers] = loader_rate(train, transform, workers, args.batch_size, args.batches)
        print(f'| {workers} | {rates[workers]:.0f} |')
    per_core = 1000 / costs['seeded item (all of it)']
    for rate in (float(r) for r in args.consume.split(',') if r):
        print(f'to feed {rate:.0f} images/s: ~{rate / per_core:.1f} workers at {per_core:.0f} images/s per core')


if __name__ == '__main__':
    main()
