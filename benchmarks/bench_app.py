"""The web app's speed (issue #25): a tiny AAformer (``aaformer_tiny``, random init, seed 0), a SYNTHETIC gallery of
about 10,000 crops, CPU.

1. Gallery embedding, images/s: the app's gallery build (``gallery_from_dataset``, cold cache) against
   ``aaformer-hf extract --dataset`` on the same crops, interleaved in this one process (both read the dataset
   first, as each command does). Target: the app is not slower.
2. Upload to rendered results in a real browser (Debian's Chromium under Playwright; tests/app_browser.py): the time
   from the file input taking a crop to every one of the k results and the model's map being drawn, over
   ``--queries`` different query crops after one warm-up; p50 / p95. Target: p50 and p95 under 1 s.

    python benchmarks/bench_app.py                 # ~10,000 crops; the gallery is generated once into --root
    python benchmarks/bench_app.py --ids 100       # quicker (~1,000 crops)
"""
import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gallery_rates(model, name: str, root: Path, rounds: int, batch_size: int):
    from aaformer_hf.apps.cli import main as cli
    from aaformer_hf.apps.gallery import gallery_from_dataset
    from aaformer_hf.data import load_reid_dataset

    rates = {'app gallery build': [], 'aaformer-hf extract': []}
    size = len(load_reid_dataset('market1501', root, verify_images=False)['gallery'])
    for round_ in range(rounds):
        with tempfile.TemporaryDirectory() as scratch:
            def app():
                gallery_from_dataset(model, name, 'market1501', root, cache_dir=Path(scratch) / 'cache',
                                     batch_size=batch_size)

            def extract():
                cli(['extract', name, '--dataset', 'market1501', '--root', str(root), '--split', 'gallery', '-o',
                     str(Path(scratch) / 'g.safetensors'), '--batch_size', str(batch_size)])
            order = [('app gallery build', app), ('aaformer-hf extract', extract)]
            for contender, run in order if round_ % 2 == 0 else order[::-1]:  # neither always goes first
                start = time.perf_counter()
                run()
                rates[contender].append(size / (time.perf_counter() - start))
    return size, rates


def browser_latency(demo, queries, k: int):
    from aaformer_hf.apps.app import launch
    from tests.app_browser import browser_page, open_app, query, set_slider

    app = launch(demo, block=False)
    try:
        with browser_page() as page:
            open_app(page, app.local_url)
            set_slider(page, 'k', k)
            query(page, queries[0], k)  # warm-up: the first query pays for compiling and caching
            return [query(page, path, k) for path in queries[1:]]
    finally:
        app.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', type=Path, default=ROOT / 'data' / 'bench_app_market',
                        help='where the SYNTHETIC gallery is generated (once; reused when present)')
    parser.add_argument('--ids', type=int, default=1000, help='test identities (10 gallery crops each)')
    parser.add_argument('--queries', type=int, default=20, help='timed browser queries (after one warm-up)')
    parser.add_argument('--k', type=int, default=10, help='results shown per query')
    parser.add_argument('--rounds', type=int, default=2, help='gallery-embedding rounds per contender')
    parser.add_argument('--batch_size', type=int, default=64)
    args = parser.parse_args(argv)

    import timm
    import aaformer_hf.models  # noqa: F401
    from aaformer_hf.apps.app import ReIDDemo
    from aaformer_hf.apps.gallery import gallery_from_dataset
    from aaformer_hf.data.synthetic import generate_market_layout
    from tests.app_browser import missing_browser

    if not (args.root / 'bounding_box_test').is_dir():
        print(f'generating {args.root} ...', flush=True)
        generate_market_layout(args.root, train_ids=2, test_ids=args.ids, images_per_id=11, distractors=0, junk=0,
                               seed=0)
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp()) / 'aaformer_tiny'
    model = timm.create_model('aaformer_tiny').eval()
    from aaformer_hf.hub import prepare_folder
    prepare_folder(model, folder)  # a folder, so that extract (a separate load) embeds with the same weights
    from aaformer_hf.apps.extract import load_inference_model
    model = load_inference_model(str(folder))
    print(f'{platform.processor() or platform.machine()}, torch {torch.__version__}, threads '
          f'{torch.get_num_threads()}, model aaformer_tiny (random init), batch {args.batch_size}')

    size, rates = gallery_rates(model, str(folder), args.root, args.rounds, args.batch_size)
    print(f'gallery embedding, {size} crops (median of {args.rounds} rounds, images/s):')
    for name, values in rates.items():
        print(f'  {name:22s} {statistics.median(values):7.1f}  (runs: {", ".join(f"{v:.1f}" for v in values)})')
    ratio = statistics.median(rates['app gallery build']) / statistics.median(rates['aaformer-hf extract'])
    print(f'  app / extract: {ratio:.3f}x')

    reason = missing_browser()
    if reason:
        print(f'browser latency: not measured ({reason})')
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        gallery = gallery_from_dataset(model, str(folder), 'market1501', args.root, cache_dir=Path(scratch))
        demo = ReIDDemo(model, str(folder), gallery)
        queries = [path for path, _ in gallery.queries[:args.queries + 1]]
        times = browser_latency(demo, queries, args.k)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(f'upload -> {args.k} results and the map drawn, in Chromium, {len(times)} queries on {size} crops: '
          f'p50 {statistics.median(times) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms')
    return 0


if __name__ == '__main__':
    sys.exit(main())
