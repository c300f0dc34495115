# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""The ``aaformer-hf`` command (also ``python -m aaformer_hf``).

    aaformer-hf extract MODEL IMAGES -o emb.safetensors     embeddings of person crops (a folder or a file list)
    aaformer-hf evaluate MODEL --dataset market1501 --root R   CMC / mAP / mINP on a re-ID benchmark
    aaformer-hf export-onnx MODEL -o reid.onnx              ONNX of the embedding, checked in onnxruntime
    aaformer-hf search GALLERY QUERY -o matches.json        nearest gallery embeddings of each query embedding
    aaformer-hf visualize parts|attention|ranks MODEL ...   PNGs of [PART] assignments, attention or rank lists
    aaformer-hf app [MODEL --gallery G | --dataset N --root R]   the web app: query -> ranked gallery, on 127.0.0.1
    aaformer-hf space MODEL --gallery G -o DIR [--push org/name]  a Hugging Face Space folder of that app
    aaformer-hf card FOLDER --repo_id org/name              write a model card from the run's metrics.json
    aaformer-hf convert CKPT OUT                            CLIP-ReID checkpoint -> π-VL model folder
    aaformer-hf parse ...                                   human-parsing maps for a dataset
    aaformer-hf synth --root R                              a synthetic re-ID set

MODEL is a timm name (random weights unless --pretrained), a saved model folder or a Hub id (org/name[@revision]).
Every command takes --help. Exit codes: 0 done, 2 bad input (the message names the file or option). Every file a
command writes is checked before any work and replaced only with --overwrite.
"""
import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

__all__ = ['main']

# commands whose module already has its own command line: their arguments pass through unchanged
_DELEGATED = {
    'card': ('aaformer_hf.hub.cards', 'write a model card for a saved model folder'),
    'convert': ('aaformer_hf.hf.convert_clipreid', 'convert a CLIP-ReID ViT-B/16 checkpoint into a π-VL folder'),
    'parse': ('aaformer_hf.apps.write_parsing', 'write LIP human-parsing maps with a segmentation model'),
    'synth': ('aaformer_hf.data.synthetic', 'generate a SYNTHETIC re-ID set (Market-1501 layout)'),
}
_EXAMPLES = {
    'extract': 'examples:\n'
               '  aaformer-hf extract outputs/synthetic/model data/crops -o crops.safetensors\n'
               '  aaformer-hf extract org/aaformer-msmt17 list.txt -o emb.safetensors --shard_size 50000\n'
               '  aaformer-hf extract MODEL --dataset msmt17 --root data/MSMT17 --split query -o query.safetensors\n'
               '  aaformer-hf extract MODEL --dataset hub --root org/street-crops --split test -o street.safetensors\n'
               '  accelerate launch -m aaformer_hf extract MODEL IMAGES -o OUT   # shards spread over processes',
    'evaluate': 'examples:\n'
                '  aaformer-hf evaluate outputs/synthetic/model --dataset market1501 --root data/synthetic_market\n'
                '  aaformer-hf evaluate org/aaformer-msmt17 --dataset msmt17 --root data/MSMT17 --rerank --json m.json',
    'search': 'examples:\n'
              '  aaformer-hf search gallery.safetensors query.safetensors -o matches.json --top 20\n'
              '  aaformer-hf search g.safetensors q.safetensors -o m.json --backend faiss --index IVF4096,Flat',
    'visualize': 'examples:\n'
                 '  aaformer-hf visualize parts outputs/synthetic/model data/synthetic_market/query -o parts.png\n'
                 '  aaformer-hf visualize attention outputs/synthetic/model a.jpg b.jpg -o attention.png --layer 0\n'
                 '  aaformer-hf visualize ranks outputs/synthetic/model --dataset market1501 '
                 '--root data/synthetic_market -o ranks.png',
    'app': 'examples:\n'
           '  aaformer-hf app        # after `bash tools/demo.sh`: its trained model on the SYNTHETIC gallery\n'
           '  aaformer-hf app outputs/synthetic/model --dataset market1501 --root data/synthetic_market\n'
           '  aaformer-hf app org/aaformer-msmt17 --gallery crops/ --queries probes/ --port 8080\n'
           '  aaformer-hf app MODEL --gallery gallery.safetensors   # embeddings written by aaformer-hf extract',
    'space': 'examples:\n'
             '  aaformer-hf space org/aaformer-msmt17 --gallery crops/ -o my-space\n'
             '  aaformer-hf space outputs/synthetic/model --dataset market1501 --root data/synthetic_market '
             '-o space --push org/reid-demo',
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='aaformer-hf', description=__doc__.split('\n\n')[1].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    raw = argparse.RawDescriptionHelpFormatter

    extract = commands.add_parser('extract', help='embeddings of person crops -> safetensors', epilog=_EXAMPLES[
        'extract'], formatter_class=raw, allow_abbrev=False)
    _model_arguments(extract)
    extract.add_argument('images', type=Path, nargs='?',
                         help='a folder of crops (searched recursively) or a text file of paths; or use --dataset')
    extract.add_argument('--dataset', help='instead of IMAGES: a re-ID loader name (market1501, msmt17, ...) whose '
                                           '--split is embedded with its identities and cameras; or "hub": any '
                                           '`datasets` repo of images (Hub id or local folder) given as --root')
    extract.add_argument('--root', help='the --dataset folder (for hub: a Hub dataset id or local datasets folder)')
    extract.add_argument('--split', default='gallery',
                         help='train, query or gallery (default); for hub any split of the repo')
    extract.add_argument('--image_column', default='image', help='hub: the column holding the images (default image)')
    extract.add_argument('--revision', help='hub: the dataset revision (branch, tag or commit)')
    extract.add_argument('-o', '--output', type=Path, required=True, help='the .safetensors file to write')
    extract.add_argument('--shard_size', type=int, default=10000,
                         help='crops per shard: the unit of resuming and of sharing among processes (default 10000)')
    extract.add_argument('--runtime', choices=('torch', 'onnxruntime'), default='torch',
                         help='torch (default), or onnxruntime: the model exported to ONNX (checked as export-onnx '
                              'checks it, at --tolerance 1e-3) and run in ONNX Runtime on the CPU (extra '
                              'aaformer-hf[onnx]; see BENCHMARKS.md for its speed)')
    extract.add_argument('--onnx', type=Path, help='with --runtime onnxruntime: run this graph, written by export-onnx '
                                                   'from MODEL, instead of exporting MODEL now')
    extract.add_argument('--overwrite', action='store_true', help='replace an existing output file')

    evaluate = commands.add_parser('evaluate', help='CMC / mAP / mINP of a model on a re-ID dataset',
                                   epilog=_EXAMPLES['evaluate'], formatter_class=raw, allow_abbrev=False)
    _model_arguments(evaluate)
    evaluate.add_argument('--dataset', required=True, help='a loader name (market1501, msmt17, dukemtmc, ...)')
    evaluate.add_argument('--root', required=True, help='the dataset folder (or Hub id for --dataset hub)')
    evaluate.add_argument('--metric', choices=('euclidean', 'cosine'), default='euclidean')
    evaluate.add_argument('--rerank', action='store_true', help='also report k-reciprocal re-ranked metrics')
    evaluate.add_argument('--rerank_k1', type=int, default=20, help='re-ranking k1 (default 20, the usual)')
    evaluate.add_argument('--rerank_k2', type=int, default=6, help='re-ranking k2 (default 6)')
    evaluate.add_argument('--no_normalize', dest='normalize', action='store_false',
                          help='rank the raw features; by default they are L2-normalised first, as training '
                               'evaluates (examples/train.py --eval_normalize, whose metrics.json this reproduces)')
    evaluate.add_argument('--json', type=Path, help='also write the metrics to this JSON file')
    evaluate.add_argument('--overwrite', action='store_true', help='replace an existing --json file')

    onnx = commands.add_parser('export-onnx', help='ONNX of the embedding, checked in onnxruntime',
                               epilog='example:\n  aaformer-hf export-onnx outputs/synthetic/model -o reid.onnx',
                               formatter_class=raw, allow_abbrev=False)
    onnx.add_argument('model', help='timm name, saved model folder, or Hub id (org/name[@revision])')
    onnx.add_argument('-o', '--output', type=Path, required=True, help='the .onnx file to write')
    onnx.add_argument('--pretrained', action='store_true', help='for a timm name: its pretrained weights')
    onnx.add_argument('--opset', type=int, default=18, help='ONNX opset (>= 17; default 18)')
    onnx.add_argument('--tolerance', type=float, default=1e-4,
                      help='largest embedding difference from PyTorch accepted, relative to the largest embedding '
                           'value (absolute where that is below 1; default 1e-4); for an '
                           'AAformer, PyTorch runs with the graph\'s own patch assignments, so near-ties that round '
                           'the other way in onnxruntime do not count here')
    onnx.add_argument('--assignment_tolerance', type=float, default=1e-3,
                      help='AAformer: largest share of patch-to-part assignment decisions allowed to differ from '
                           'PyTorch\'s (default 0.001; near-ties flip a few in a million)')
    onnx.add_argument('--quantize', choices=('int8',),
                      help='int8: quantize the checked graph (ONNX Runtime dynamic quantization, int8 weights per '
                           'channel), ~2.4x faster for aaformer_base on a 2-core CPU; its embeddings differ from '
                           'PyTorch\'s (see BENCHMARKS.md for the retrieval it kept; check yours). Default: float32')
    onnx.add_argument('--min_cosine', type=float, default=None,
                      help='with --quantize: least cosine of its embeddings to PyTorch\'s on the check inputs '
                           '(default 0.98)')
    onnx.add_argument('--overwrite', action='store_true', help='replace an existing output file')

    find = commands.add_parser('search', help='nearest gallery embeddings of query embeddings -> JSON',
                               epilog=_EXAMPLES['search'], formatter_class=raw, allow_abbrev=False)
    find.add_argument('gallery', type=Path, help='a .safetensors file written by extract')
    find.add_argument('query', type=Path, help='a .safetensors file written by extract')
    find.add_argument('-o', '--output', type=Path, required=True, help='the .json file to write')
    find.add_argument('--top', type=int, default=10, help='gallery matches per query (>= 1; default 10)')
    find.add_argument('--metric', choices=('cosine', 'euclidean'), default='cosine')
    find.add_argument('--backend', choices=('torch', 'faiss'), default='torch',
                      help='torch: exact; faiss: its index (extra aaformer-hf[search])')
    find.add_argument('--index', default='Flat', help="faiss index_factory string (default Flat = exact; e.g. "
                                                     "'IVF1024,Flat' for approximate search)")
    find.add_argument('--nprobe', type=int, default=16, help='faiss IVF lists searched (default 16)')
    find.add_argument('--device', default='auto',
                      help='auto (default: a GPU when present, for torch and a faiss-gpu build), cpu, or e.g. cuda:1')
    find.add_argument('--overwrite', action='store_true', help='replace an existing output file')

    visualize = commands.add_parser('visualize', help='PNG of [PART] assignments, attention, or rank lists',
                                    epilog=_EXAMPLES['visualize'], formatter_class=raw, allow_abbrev=False)
    visualize.add_argument('kind', choices=('parts', 'attention', 'ranks'))
    visualize.add_argument('model', help='timm name, saved model folder, or Hub id (org/name[@revision])')
    visualize.add_argument('images', type=Path, nargs='*', help='parts / attention: image files or folders')
    visualize.add_argument('-o', '--output', type=Path, required=True, help='the .png file to write')
    visualize.add_argument('--pretrained', action='store_true', help='for a timm name: its pretrained weights')
    visualize.add_argument('--layer', type=int, default=-1, help='parts / attention: which layer (default: last)')
    visualize.add_argument('--limit', type=int, default=8, help='images (parts / attention) or queries (ranks)')
    visualize.add_argument('--dataset', help='ranks: a re-ID loader name (market1501, msmt17, ...)')
    visualize.add_argument('--root', help='ranks: the dataset folder')
    visualize.add_argument('--top', type=int, default=10, help='ranks: gallery images per query')
    visualize.add_argument('--batch_size', type=int, default=64)
    visualize.add_argument('--overwrite', action='store_true', help='replace an existing output file')

    app = commands.add_parser('app', help='the web app (Gradio): query -> ranked gallery, parts, attention',
                              epilog=_EXAMPLES['app'], formatter_class=raw, allow_abbrev=False)
    _app_arguments(app, default_model=True)
    app.add_argument('--host', default='127.0.0.1', help='address to serve on (default 127.0.0.1: this machine only)')
    app.add_argument('--port', type=int, help='port (default: 7860, or the next free one)')
    app.add_argument('--share', action='store_true', help="also make a public gradio.live link (off by default)")
    app.add_argument('--concurrency', type=int, default=2, help='queries run at once; more wait in the queue '
                                                                  '(default 2)')
    app.add_argument('--max_upload_mb', type=int, default=10, help='largest upload accepted, in MB (default 10)')
    app.add_argument('--max_megapixels', type=float, default=25.0,
                     help='largest upload accepted, in millions of pixels (default 25)')
    app.add_argument('--cache_dir', type=Path, help='where gallery embeddings are cached (default '
                                                    '$AAFORMER_HF_CACHE/galleries or ~/.cache/aaformer-hf/galleries)')
    app.add_argument('--batch_size', type=int, default=64, help='gallery embedding batch size')
    app.add_argument('--num_workers', type=int, default=0, help='gallery image-loading worker processes')

    space = commands.add_parser('space', help='write (and push) a Hugging Face Space folder of the web app',
                                epilog=_EXAMPLES['space'], formatter_class=raw, allow_abbrev=False)
    _app_arguments(space, default_model=False)
    space.add_argument('-o', '--output', type=Path, required=True, help='the Space folder to write')
    space.add_argument('--push', metavar='ORG/NAME', help='also upload it as this Space (repo_type space)')
    space.add_argument('--private', action='store_true', help='with --push: create the Space private')
    space.add_argument('--title', default='Person re-identification', help="the Space's title")
    space.add_argument('--overwrite', action='store_true', help='replace an existing output folder')

    for name, (_, help_text) in _DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', help='timm name, saved model folder, or Hub id (org/name[@revision])')
    parser.add_argument('--pretrained', action='store_true', help='for a timm name: its pretrained weights')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--num_workers', type=int, default=0, help='image-loading worker processes')
    parser.add_argument('--flip', action='store_true', help='average each crop\'s and its mirror\'s embeddings')


def _app_arguments(parser: argparse.ArgumentParser, default_model: bool) -> None:
    if default_model:
        parser.add_argument('model', nargs='?', help='timm name, saved model folder, or Hub id (org/name[@revision]); '
                                                     'default, with no gallery either: the demo\'s trained model')
    else:
        parser.add_argument('model', help='timm name, saved model folder, or Hub id (org/name[@revision])')
    parser.add_argument('--pretrained', action='store_true', help='for a timm name: its pretrained weights')
    parser.add_argument('--gallery', type=Path, help='a folder of crops, a text file listing them, or a .safetensors '
                                                     'file of their embeddings (aaformer-hf extract)')
    parser.add_argument('--queries', type=Path, help='with --gallery: a folder of example query crops')
    parser.add_argument('--dataset', help='instead of --gallery: a re-ID loader name (market1501, msmt17, ...): its '
                                          'gallery is searched, its queries are the examples')
    parser.add_argument('--root', type=Path, help='the --dataset folder')
    parser.add_argument('--flip', action='store_true', help="average each crop's and its mirror's embeddings")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        import importlib
        # their usage and errors name the command as typed here, not the module
        result = importlib.import_module(_DELEGATED[argv[0]][0]).main(argv[1:], prog=f'aaformer-hf {argv[0]}')
        return result if isinstance(result, int) else 0
    parser = _parser()
    args = parser.parse_args(argv)
    # progress lines (when no bar is drawn: not a terminal) and resume notes; the libraries' chatter stays quiet
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    logging.getLogger('aaformer_hf').setLevel(logging.INFO)
    try:
        return {'extract': _extract, 'evaluate': _evaluate, 'export-onnx': _export_onnx,
                'visualize': _visualize, 'search': _search, 'app': _app, 'space': _space}[args.command](args)
    except (OSError, ValueError, ImportError, RuntimeError) as error:
        parser.exit(2, f'aaformer-hf {args.command}: error: {_message(error)}\n')


def _message(error: BaseException) -> str:
    """An error's message without Python's ``[Errno N]`` prefix: the file it names is what the user needs."""
    if isinstance(error, OSError) and error.strerror and error.filename is None and len(error.args) == 2:
        return str(error.strerror)
    return str(error)


def _check_device(device: str) -> None:
    """A device flag that names a GPU which is not there fails now, not inside the first tensor copy."""
    import torch
    if device in ('auto', 'cpu'):
        return
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device {device}: not a device ('auto', 'cpu', 'cuda' or e.g. 'cuda:1')") from error
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'--device {device}: no CUDA GPU is available here (use --device cpu or auto)')
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f'--device {device}: only {torch.cuda.device_count()} GPU(s) here')


def _extract(args) -> int:
    from ..files import check_output
    from .extract import collect_images, extract_to_file, load_inference_model, process_state

    if args.onnx is not None and args.runtime != 'onnxruntime':
        raise ValueError('--onnx is read with --runtime onnxruntime only')
    if args.shard_size < 1 or args.batch_size < 1:
        raise ValueError('--shard_size and --batch_size must be >= 1')
    state = process_state()
    if state.is_main_process:
        check_output(args.output, args.overwrite)  # before loading anything
    if (args.images is None) == (args.dataset is None):
        raise ValueError('give IMAGES (a folder or file list) or --dataset NAME --root DIR, not both')
    labels, rows = None, None
    if args.dataset is not None and args.root is None:
        raise ValueError('--dataset needs --root')
    if args.dataset != 'hub' and (args.image_column != 'image' or args.revision):
        raise ValueError('--image_column and --revision are read with --dataset hub only')
    if args.dataset == 'hub':
        paths, labels, rows = _hub_split(args)
    elif args.dataset is not None:
        from ..data import load_reid_dataset
        if args.split not in ('train', 'query', 'gallery'):
            raise ValueError(f'--split {args.split}: a re-ID loader has train, query and gallery')
        from .gallery import dataset_split
        paths, *labels = dataset_split(load_reid_dataset(args.dataset, args.root)[args.split])
    else:
        paths = collect_images(args.images)
    model = load_inference_model(args.model, args.pretrained, device=state.device)
    with tempfile.TemporaryDirectory(prefix='aaformer-hf-onnx-') as scratch:
        if args.runtime == 'onnxruntime':
            model = _onnx_embedder(args, model, state, Path(scratch))
        out = extract_to_file(model, paths, args.output, args.model, batch_size=args.batch_size,
                              num_workers=args.num_workers, shard_size=args.shard_size, flip=args.flip,
                              overwrite=args.overwrite, labels=labels, images=rows)
    if out is not None:
        runtime = ' (ONNX Runtime)' if args.runtime == 'onnxruntime' else ''
        print(f'{out}: {len(paths)} embeddings of {args.model}{runtime}')
    return 0


def _onnx_embedder(args, model, state, scratch: Path):
    """MODEL as an exported graph in ONNX Runtime: ``--onnx``'s file (checked against MODEL on a few images), or
    MODEL exported now (each process its own copy, checked as ``export-onnx`` checks)."""
    import torch

    from .export import QUANTIZED_MIN_COSINE, OnnxEmbedder, export_onnx
    from .extract import embed

    if state.device.type != 'cpu':
        raise ValueError('--runtime onnxruntime runs on the CPU; on a GPU use --runtime torch')
    if args.onnx is None:
        path = scratch / 'model.onnx'
        # 1e-3 relative, looser than export-onnx's default 1e-4: the embeddings need only rank as PyTorch's do
        export_onnx(model, path, tolerance=1e-3)
    else:
        path = args.onnx
        if not path.is_file():
            raise FileNotFoundError(f'--onnx {path}: no such file')
    embedder = OnnxEmbedder(path, model.pretrained_cfg)
    if args.onnx is not None:  # a file from elsewhere: is it this model's graph?
        _, height, width = model.pretrained_cfg['input_size']
        pixels = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            cosine = torch.nn.functional.cosine_similarity(embedder(pixels), embed(model, pixels).float(), dim=1)
        least = QUANTIZED_MIN_COSINE if embedder.quantization else 0.999  # a quantized graph only approximates
        if cosine.min() < least:
            raise ValueError(f'--onnx {path}: its embeddings are not {args.model}\'s (cosine {cosine.min():.3f} on '
                             'random inputs); export it from this model with aaformer-hf export-onnx')
    return embedder


def _hub_split(args):
    """A ``datasets`` split of images: its rows, names ``SOURCE[SPLIT]#ROW`` and, when it has integer pid and camid
    columns, those (as stored)."""
    from ..data import load_image_split

    options = {'revision': args.revision} if args.revision else {}
    rows = load_image_split(args.root, args.split, args.image_column, **options)
    source = f'{args.root}@{args.revision}' if args.revision else str(args.root)
    names = [f'{source}[{args.split}]#{i}' for i in range(len(rows))]
    integer = lambda c: getattr(rows.features.get(c), 'dtype', '').startswith(('int', 'uint'))  # noqa: E731
    labels = (rows['pid'], rows['camid']) if integer('pid') and integer('camid') else None
    return names, labels, rows


def _app_source(args):
    """The model and gallery an app/space command names, checked before anything loads; with neither (``app``),
    the demo's: what ``bash tools/demo.sh`` trains, on its SYNTHETIC set."""
    from .app import DEFAULT_DATASET, DEFAULT_MODEL

    if args.model is None and args.gallery is None and args.dataset is None:
        if not (DEFAULT_MODEL / 'config.json').is_file() or not DEFAULT_DATASET[1].is_dir():
            raise FileNotFoundError(f'no MODEL given and no demo model at {DEFAULT_MODEL}: run `bash tools/demo.sh` '
                                    'first (it trains one on a SYNTHETIC set), or give MODEL and --gallery')
        args.model, (args.dataset, args.root) = str(DEFAULT_MODEL), DEFAULT_DATASET
    if args.model is None:
        raise ValueError('give MODEL (a timm name, model folder or Hub id) with the gallery')
    if (args.gallery is None) == (args.dataset is None):
        raise ValueError('give --gallery (crops or an embeddings file) or --dataset NAME --root DIR, not both')
    if args.dataset is not None and args.root is None:
        raise ValueError('--dataset needs --root')
    if args.dataset is not None and args.queries is not None:
        raise ValueError("--queries is read with --gallery only (a dataset's queries are its examples)")
    if args.gallery is not None and not args.gallery.exists():
        raise FileNotFoundError(f'--gallery {args.gallery}: no such folder or file')
    if args.queries is not None and not args.queries.is_dir():
        raise FileNotFoundError(f'--queries {args.queries}: no such folder')


def _load_gallery(args, model, cache_dir=None):
    from . import gallery as galleries

    options = dict(cache_dir=cache_dir, batch_size=args.batch_size, num_workers=args.num_workers, flip=args.flip)
    if args.dataset is not None:
        return galleries.gallery_from_dataset(model, args.model, args.dataset, args.root, **options)
    if args.gallery.suffix == '.safetensors':
        gallery = galleries.gallery_from_embeddings(model, args.model, args.gallery, args.queries)
        if args.flip and not gallery.flip:
            raise ValueError(f'--flip: {args.gallery} was extracted without --flip; queries are embedded as its '
                             'gallery was (re-extract with --flip, or drop it here)')
        return gallery
    return galleries.gallery_from_images(model, args.model, args.gallery, args.queries, **options)


def _need_gradio(command: str) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise ImportError(f'{command} needs Gradio: pip install "aaformer-hf[app]"') from error


def _app(args) -> int:
    _need_gradio('the app')
    from .app import ReIDDemo, launch, model_card_text
    from .extract import load_inference_model

    _app_source(args)
    if args.concurrency < 1 or args.max_upload_mb < 1 or args.max_megapixels <= 0 or args.batch_size < 1:
        raise ValueError('--concurrency, --max_upload_mb, --batch_size must be >= 1 and --max_megapixels > 0')
    if args.share:
        print('--share: a public gradio.live link will reach this app from anywhere', file=sys.stderr)
    model = load_inference_model(args.model, args.pretrained)
    gallery = _load_gallery(args, model, args.cache_dir)
    demo = ReIDDemo(model, args.model, gallery, model_card_text(args.model, model),
                    max_pixels=int(args.max_megapixels * 1e6), max_upload_bytes=args.max_upload_mb * 2 ** 20)
    print(f'{args.model}: {len(gallery)} gallery crops from {gallery.source}; serving on {args.host} '
          '(Ctrl+C stops)', flush=True)
    launch(demo, args.host, args.port, args.share, args.concurrency)
    return 0


def _space(args) -> int:
    _need_gradio('a Space (its front matter names the Gradio version)')
    from .space import write_space, push_space

    _app_source(args)
    folder = write_space(args.model, args.output, gallery=args.gallery, queries=args.queries, dataset=args.dataset,
                         root=args.root, pretrained=args.pretrained, flip=args.flip, title=args.title,
                         overwrite=args.overwrite)
    print(f'{folder}: a Space of {args.model} (sdk gradio)')
    if args.push:
        url = push_space(folder, args.push, private=args.private)
        print(f'pushed to {url}')
    return 0


def _export_onnx(args) -> int:
    from ..files import check_output
    from .extract import load_inference_model
    from .export import QUANTIZED_MIN_COSINE, export_onnx

    check_output(args.output, args.overwrite)
    if args.tolerance <= 0 or not 0 <= args.assignment_tolerance <= 1:
        raise ValueError('--tolerance must be > 0 and --assignment_tolerance within [0, 1]')
    if args.min_cosine is not None and (args.quantize is None or not -1 <= args.min_cosine <= 1):
        raise ValueError('--min_cosine is read with --quantize only, within [-1, 1]')
    quantized = {} if args.quantize is None else dict(
        quantize=args.quantize, min_cosine=QUANTIZED_MIN_COSINE if args.min_cosine is None else args.min_cosine)
    differences = export_onnx(load_inference_model(args.model, args.pretrained), args.output, args.opset,
                              args.tolerance, assignment_tolerance=args.assignment_tolerance, **quantized)
    cosine = differences.pop('cosine', None)
    mismatch, unfed = differences.pop('assignments', None), differences.pop('unfed', None)
    checked = ', '.join(f'batch {b}: {d:.1e}' for b, d in differences.items())
    assigned = '' if mismatch is None else (
        f' (with the graph\'s own patch assignments); assignment decisions differing: {mismatch:.4%} (largest '
        f'embedding difference they caused: {unfed:.1e}); outputs embeddings and assignments')
    print(f'{args.output}: {args.model}, opset {args.opset}, dynamic batch; onnxruntime vs PyTorch max |diff| '
          f'(relative to the largest embedding value) '
          f'{checked}{assigned}')
    if cosine is not None:
        print(f'{args.output}: then quantized to {args.quantize} (dynamic, weights per channel); least cosine of its '
              f'embeddings to PyTorch\'s on the random check inputs: {cosine:.4f} - check retrieval on your own crops')
    return 0


def _search(args) -> int:
    from ..files import atomic_path, check_output
    from .extract import load_embeddings
    from ..reid.search import search

    check_output(args.output, args.overwrite)
    if args.top < 1:
        raise ValueError(f'--top {args.top}: give at least 1 match per query')
    if args.nprobe < 1:
        raise ValueError(f'--nprobe {args.nprobe}: must be >= 1')
    _check_device(args.device)
    gallery, query = load_embeddings(args.gallery), load_embeddings(args.query)
    if gallery['model'] != query['model']:
        raise ValueError(f'{args.query} holds embeddings of {query["model"]}, {args.gallery} of {gallery["model"]}: '
                         'distances between two models mean nothing')
    for name, saved in ((args.gallery, gallery), (args.query, query)):
        rows = saved['embeddings']
        zero = (rows.abs().amax(dim=1) == 0).nonzero().flatten().tolist() if rows.numel() else []
        if zero:
            raise ValueError(f'{name}: {len(zero)} all-zero embedding(s) (first: {saved["paths"][zero[0]]}): they have '
                             'no direction, so every distance to them is the same; re-extract them with a working '
                             'model')
    distances, indices = search(query['embeddings'], gallery['embeddings'], args.top, args.metric, args.backend,
                                args.index, args.nprobe, device=args.device)
    results = [dict(query=q, matches=[dict(path=gallery['paths'][g], distance=round(float(d), 6))
                                      for d, g in zip(row_d, row_i)])
               for q, row_d, row_i in zip(query['paths'], distances, indices.tolist())]
    with atomic_path(args.output) as tmp:
        tmp.write_text(json.dumps(dict(metric=args.metric, backend=args.backend, index=args.index,
                                       gallery=str(args.gallery), results=results), indent=1))
    print(f'{args.output}: top {indices.shape[1]} of {len(gallery["paths"])} for {len(results)} queries '
          f'({args.metric}, {args.backend})')
    return 0


def _visualize(args) -> int:
    import torch

    from ..files import atomic_path, check_output
    from ..data import build_transforms
    from ..data.images import read_rgb
    from .extract import collect_images, load_inference_model
    from .visualize import attention_depth, attention_figure, parts_figure

    check_output(args.output, args.overwrite)
    if args.limit < 1 or args.top < 1 or args.batch_size < 1:
        raise ValueError('--limit, --top and --batch_size must be >= 1')
    if args.kind != 'ranks' and not args.images:
        raise ValueError(f'visualize {args.kind}: give image files or folders')
    if args.kind == 'ranks' and (not args.dataset or not args.root):
        raise ValueError('visualize ranks: needs --dataset and --root')
    model = load_inference_model(args.model, args.pretrained)
    if args.kind == 'parts' and not getattr(model, 'assigns_patches', False):
        raise ValueError(f'visualize parts: {args.model} assigns no patches to [PART]s (only AAformer models do; '
                         'try visualize attention)')
    depth = attention_depth(model)
    what = 'layers' if hasattr(model, 'blocks') else 'attention layer (its attention pool)'  # a CLIP ResNet's one
    if args.kind != 'ranks' and not -depth <= args.layer < depth:
        raise ValueError(f'--layer {args.layer}: {args.model} has {depth} {what} (0..{depth - 1}, or -1..-{depth} '
                         'from the last)')
    transform = build_transforms(model.pretrained_cfg, train=False)
    if args.kind == 'ranks':
        figure = _ranks(args, model, transform)
    else:
        paths = [p for source in args.images for p in (collect_images(source) if source.is_dir() else [source])]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f'image(s) not found: {", ".join(missing[:3])}')
        images = [read_rgb(p) for p in paths[:args.limit]]
        pixels = torch.stack([transform(image) for image in images])
        draw = parts_figure if args.kind == 'parts' else attention_figure
        figure = draw(model, images, pixels, args.layer)
    with atomic_path(args.output, suffix='.png') as tmp:
        figure.save(tmp, format='PNG')
    print(f'{args.output}: {args.kind} of {args.model} ({figure.width}x{figure.height})')
    return 0


def _ranks(args, model, transform):
    import torch

    from ..data import eval_loader, load_reid_dataset
    from .extract import embed
    from ..reid.evaluation import pairwise_distance
    from .visualize import ranks_figure

    data = load_reid_dataset(args.dataset, args.root)
    query = data['query'].select(range(min(args.limit, len(data['query']))))
    features = {}
    with torch.inference_mode():
        for name, split in (('query', query), ('gallery', data['gallery'])):
            features[name] = torch.cat([embed(model, pixels) for pixels, _, _ in
                                        eval_loader(split, transform, args.batch_size, 0)]).float()
    distmat = pairwise_distance(features['query'], features['gallery'])
    gallery = data['gallery']
    return ranks_figure(query['image'], _LazyImages(gallery), distmat, torch.tensor(query['pid']),
                        torch.tensor(gallery['pid']), torch.tensor(query['camid']), torch.tensor(gallery['camid']),
                        top=args.top)


class _LazyImages:
    """A split's images decoded only when drawn (a gallery can be large)."""

    def __init__(self, split) -> None:
        self.split = split

    def __getitem__(self, index: int):
        return self.split[index]['image']


def _evaluate(args) -> int:
    import torch

    from ..files import atomic_path, check_output
    from ..data import build_transforms, eval_loader, load_reid_dataset
    from ..data.synthetic import is_synthetic
    from .extract import embed, load_inference_model
    from ..reid.evaluation import evaluate, flip_features, re_rank, summarise

    if args.json is not None:
        check_output(args.json, args.overwrite)  # before any work
    data = load_reid_dataset(args.dataset, args.root)
    model = load_inference_model(args.model, args.pretrained)
    transform = build_transforms(model.pretrained_cfg, train=False)

    def features(split):
        feats, pids, cams = [], [], []
        with torch.inference_mode():
            for pixels, pid, cam in eval_loader(data[split], transform, args.batch_size, args.num_workers):
                feats.append(flip_features(lambda x: embed(model, x), pixels) if args.flip else embed(model, pixels))
                pids.append(pid), cams.append(cam)
        return torch.cat(feats).float(), torch.cat(pids), torch.cat(cams)

    (qf, q_pids, q_cams), (gf, g_pids, g_cams) = features('query'), features('gallery')
    labels = (q_pids, g_pids, q_cams, g_cams)
    results = {'plain': summarise(evaluate(qf, gf, *labels, metric=args.metric, normalize=args.normalize))}
    if args.rerank:
        if args.normalize or args.metric == 'cosine':  # as training re-ranks
            qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
        results['re-ranked'] = summarise(evaluate(None, None, *labels, distmat=re_rank(qf, gf, k1=args.rerank_k1,
                                                                                  k2=args.rerank_k2)))
    print(f'{args.model} on {args.dataset} ({args.root}), {results["plain"]["num_valid_queries"]} valid queries '
          f'({args.metric} distance, features {"L2-normalised" if args.normalize else "raw"}'
          f'{", flip test" if args.flip else ""})')
    print('| | R1 | R5 | R10 | mAP | mINP |\n|---|---:|---:|---:|---:|---:|')
    for name, metrics in results.items():
        print(f'| {name} | ' + ' | '.join(f'{100 * metrics[k]:.1f}' for k in ('rank1', 'rank5', 'rank10', 'mAP',
                                                                                'mINP')) + ' |')
    if args.json is not None:
        with atomic_path(args.json) as tmp:
            # generated images are reported as such, whichever loader read them (as training does)
            dataset = 'synthetic' if Path(args.root).is_dir() and is_synthetic(Path(args.root)) else args.dataset
            tmp.write_text(json.dumps(dict(model=args.model, dataset=dataset, root=str(args.root), metric=args.metric,
                                           normalize=args.normalize, flip=args.flip, **results), indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
