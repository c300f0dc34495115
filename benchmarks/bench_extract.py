"""Extraction, the main deployed job (issue #26): how busy ``aaformer-hf extract``'s pipeline keeps the model, and the
CPU serving runtimes a deployment would pick for the exported graph - all side by side in this one process.

1. The model's bare forward on one pre-made batch (no decode, no resize, no loader), against ``extract_to_file`` on
   the same crops with the same batch size (decode, resize, normalise and the DataLoader included), with 0 and 2
   loader workers: the pipeline's images/s as a share of the bare forward's (target: >= 90 %).
2. PyTorch against ONNX Runtime fp32 and int8 (dynamic quantization of the MatMul/Gemm weights, onnxruntime's
   ``quantize_dynamic``, per tensor and per channel) and, when ``openvino`` is installed (it is not a dependency:
   ``pip install openvino``), OpenVINO on the same .onnx file in float32 and in the precision it picks for this CPU
   by itself, on the same pre-made batches: images/s, and the embeddings' agreement with PyTorch (cosine); with
   ``--dataset``/``--root``, mAP and rank-1 of each on that re-ID set (queries against its gallery).

    python benchmarks/bench_extract.py --model aaformer_base --images 256 --batch_size 32        # speed
    python benchmarks/bench_extract.py --model outputs/synthetic/model --dataset market1501 \\
        --root data/synthetic_market                                                             # + retrieval
"""
import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def crops(root: Path, count: int):
    from aaformer_hf.data.synthetic import generate_market_layout

    if not (root / 'bounding_box_test').is_dir():
        generate_market_layout(root, train_ids=2, test_ids=max(10, count // 10 + 1), images_per_id=11, seed=0)
    paths = sorted((root / 'bounding_box_test').glob('*.jpg'))[:count]
    if len(paths) < count:
        raise SystemExit(f'{root}: {len(paths)} crops, fewer than --images {count}')
    return paths


def rate(fn, images: int, rounds: int) -> float:
    values = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        values.append(images / (time.perf_counter() - start))
    return statistics.median(values)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='aaformer_base', help='timm name (random init) or model folder')
    parser.add_argument('--images', type=int, default=256)
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--rounds', type=int, default=3, help='timed rounds per contender (median)')
    parser.add_argument('--crops', type=Path, default=ROOT / 'data' / 'bench_app_market',
                        help='SYNTHETIC crops to embed (generated when missing)')
    parser.add_argument('--dataset', help='also score retrieval on this re-ID set (e.g. market1501)')
    parser.add_argument('--root', type=Path, help='its folder')
    args = parser.parse_args(argv)

    from aaformer_hf.apps.export import export_onnx
    from aaformer_hf.apps.extract import embed, extract_to_file, load_inference_model
    from aaformer_hf.data import build_transforms
    from aaformer_hf.data.images import read_rgb

    torch.manual_seed(0)
    model = load_inference_model(args.model)
    paths = crops(args.crops, args.images)
    transform = build_transforms(model.pretrained_cfg, train=False)
    batches = [torch.stack([transform(read_rgb(p)) for p in paths[i:i + args.batch_size]])
               for i in range(0, len(paths), args.batch_size)]
    print(f'{platform.processor() or platform.machine()}, torch {torch.__version__}, threads '
          f'{torch.get_num_threads()}, {args.model}, {len(paths)} crops, batch {args.batch_size}, median of '
          f'{args.rounds} rounds')

    def bare():
        with torch.inference_mode():
            for pixels in batches:
                embed(model, pixels)
    bare()  # warm-up
    results = {'bare forward (pre-made batches)': rate(bare, len(paths), args.rounds)}
    with tempfile.TemporaryDirectory() as scratch:
        for workers in (0, 2):
            def pipeline(workers=workers):
                out = Path(scratch) / f'w{workers}.safetensors'
                extract_to_file(model, paths, out, args.model, batch_size=args.batch_size, num_workers=workers,
                                overwrite=True, process_index=0, num_processes=1)
            results[f'extract_to_file, {workers} workers'] = rate(pipeline, len(paths), args.rounds)
        base = results['bare forward (pre-made batches)']
        print('1. the extraction pipeline (images/s, share of the bare forward):')
        for name, value in results.items():
            print(f'   {name:34s} {value:8.1f}  ({value / base:.1%})')

        runtimes = onnx_runtimes(model, Path(scratch), export_onnx)
        print('2. serving runtimes on the pre-made batches (images/s vs PyTorch; cosine to PyTorch min / mean):')
        with torch.inference_mode():
            reference = torch.cat([embed(model, pixels) for pixels in batches]).float()
        torch_rate = rate(bare, len(paths), args.rounds)
        print(f'   {"PyTorch eager fp32":38s} {torch_rate:8.1f}  (1.000x)')
        for name, run in runtimes.items():
            run(batches[0])  # warm-up
            embeddings = torch.cat([run(pixels) for pixels in batches])
            cosine = F.cosine_similarity(embeddings, reference, dim=1)
            value = rate(lambda: [run(pixels) for pixels in batches], len(paths), args.rounds)
            print(f'   {name:38s} {value:8.1f}  ({value / torch_rate:.3f}x)   cosine {cosine.min():.5f} / '
                  f'{cosine.mean():.5f}')
        if args.dataset:
            retrieval(model, transform, runtimes, args.dataset, args.root, args.batch_size)
    return 0


def onnx_runtimes(model, folder: Path, export_onnx):
    """{name: pixels -> embeddings} for onnxruntime fp32 and int8 (dynamic quantization, per tensor and per channel)
    on the CPU, and OpenVINO (float32, and its own pick of precision) where it is installed."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = folder / 'model.onnx'
    export_onnx(model, fp32, tolerance=1e-3)  # the check of export-onnx; agreement is reported below
    int8, int8_channel = folder / 'model.int8.onnx', folder / 'model.int8c.onnx'
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    quantize_dynamic(str(fp32), str(int8_channel), weight_type=QuantType.QInt8, per_channel=True)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores as PyTorch
    runtimes = {}
    for name, path in (('ONNX Runtime fp32', fp32), ('ONNX Runtime int8 dynamic', int8),
                       ('ONNX Runtime int8 per channel', int8_channel)):
        session = onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])

        def run(pixels, session=session):
            return torch.from_numpy(session.run(['embeddings'], {session.get_inputs()[0].name: pixels.numpy()})[0])
        runtimes[name] = run
    runtimes.update(openvino_runtimes(fp32))
    return runtimes


def openvino_runtimes(onnx_file: Path):
    """OpenVINO on the exported file, on the CPU with PyTorch's thread count: float32, and the precision OpenVINO
    picks for this CPU by itself (bf16 where the CPU has it). {} when openvino is not installed."""
    try:
        import openvino
    except ImportError:
        print('   (openvino not installed: pip install openvino to time it too)')
        return {}
    core = openvino.Core()
    runtimes = {}
    for label, precision in (('f32', {'INFERENCE_PRECISION_HINT': 'f32'}), ('its pick', {})):
        compiled = core.compile_model(core.read_model(str(onnx_file)), 'CPU', {
            'INFERENCE_NUM_THREADS': torch.get_num_threads(), 'PERFORMANCE_HINT': 'LATENCY', **precision})
        picked = compiled.get_property('INFERENCE_PRECISION_HINT')
        output = compiled.output('embeddings')

        def run(pixels, compiled=compiled, output=output):
            return torch.from_numpy(compiled(pixels.numpy())[output].copy())
        runtimes[f'OpenVINO {openvino.__version__.split("-")[0]} {label} ({picked})'] = run
    return runtimes


def retrieval(model, transform, runtimes, dataset: str, root: Path, batch_size: int) -> None:
    from aaformer_hf.apps.extract import embed
    from aaformer_hf.data import eval_loader, load_reid_dataset
    from aaformer_hf.reid.evaluation import evaluate

    data = load_reid_dataset(dataset, root)
    splits = {}
    for split in ('query', 'gallery'):
        pixels, pids, cams = zip(*eval_loader(data[split], transform, batch_size, 0))
        splits[split] = (pixels, torch.cat(pids), torch.cat(cams))
    contenders = {'PyTorch eager fp32': lambda x: embed(model, x), **runtimes}
    print(f'   retrieval on {dataset} ({root}; L2-normalised, euclidean, as `aaformer-hf evaluate`):')
    for name, run in contenders.items():
        with torch.inference_mode():
            feats = {s: torch.cat([run(x) for x in splits[s][0]]).float() for s in splits}
        result = evaluate(feats['query'], feats['gallery'], splits['query'][1], splits['gallery'][1],
                          splits['query'][2], splits['gallery'][2], normalize=True)
        print(f'   {name:38s} mAP {100 * result["mAP"]:.2f}  rank-1 {100 * result["cmc"][0]:.2f}')


if __name__ == '__main__':
    sys.exit(main())
