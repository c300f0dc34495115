"""Demo: embed one image with an AAformer and show how its patches were assigned to [PART]s.

    python -m aaformer_hf.apps.demo                       # a SYNTHETIC person, a tiny random-weight model, CPU
    python -m aaformer_hf.apps.demo --model_dir outputs/synthetic/model --image data/synthetic_market/query/<a file>
    python -m aaformer_hf.apps.demo --image me.jpg --model aaformer_base

With random weights the assignment shows the mechanism, not learned body parts; ``--model_dir`` takes a trained
model folder (``save_pretrained``, e.g. what examples/train.py writes). Writes a PNG of the last layer's assignment.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image, ImageDraw

from ..data.images import read_rgb
from ..hf import AAformerImageProcessor, AAformerModel
from .visualize import majority_row, tile


def synthetic_person(seed: int = 0, size=(128, 256)) -> Image.Image:
    """A SYNTHETIC pedestrian crop (coloured head, torso, legs, shoes, bag on a cluttered background)."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.fromarray(rng.integers(60, 140, (h, w, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))  # noqa: E731
    draw.ellipse([w * .38, h * .04, w * .62, h * .17], fill=(224, 172, 105))  # head
    draw.rectangle([w * .28, h * .18, w * .72, h * .52], fill=colour())  # torso
    draw.rectangle([w * .32, h * .52, w * .48, h * .92], fill=(pants := colour()))  # legs
    draw.rectangle([w * .52, h * .52, w * .68, h * .92], fill=pants)
    draw.rectangle([w * .30, h * .92, w * .70, h * .97], fill=(20, 20, 20))  # shoes
    draw.rectangle([w * .70, h * .30, w * .88, h * .50], fill=colour())  # bag
    return img


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='aaformer_tiny', help='timm model name (default: aaformer_tiny)')
    parser.add_argument('--model_dir', type=Path, help='a trained model folder (save_pretrained); overrides --model')
    parser.add_argument('--image', type=Path, help='an image file (default: a synthetic person)')
    parser.add_argument('--output_dir', type=Path, default=Path('outputs/demo'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)

    if not sys.stderr.isatty():  # a piped log gets no progress-bar frames from loading the model
        import transformers
        transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    if args.image is not None:
        if not args.image.is_file():
            raise SystemExit(f'error: image file not found: {args.image}')
        image, source = read_rgb(args.image), str(args.image)
    else:
        image, source = synthetic_person(args.seed), 'SYNTHETIC person image (generated, not a real photo)'
    if args.model_dir is not None:
        if not (args.model_dir / 'config.json').is_file():
            raise SystemExit(f'error: not a model folder (no config.json): {args.model_dir}')
        model = AAformerModel.from_pretrained(args.model_dir).timm_model.eval()
        processor = AAformerImageProcessor.from_pretrained(args.model_dir)
        name = f'{args.model_dir} (trained)'
    else:
        model = timm.create_model(args.model).eval()
        processor = AAformerImageProcessor.from_timm_pretrained_cfg(model.pretrained_cfg)
        name = f'{args.model} (random init: shows the mechanism, not learned parts)'
    pixels = processor(image, return_tensors='pt')['pixel_values']
    with torch.no_grad():
        tokens = model.forward_tokens(pixels, output_assignments=True)
        embedding = model.forward_head(tokens.last_hidden_state, pre_logits=True)

    print(f'model      {name}')
    print(f'image      {source}')
    print(f'embedding  {tuple(embedding.shape[1:])} = (1 CLS + {model.num_parts} [PART]s) x {model.embed_dim}')
    if model.num_parts:
        last = tokens.assignments[-1][0]  # (H, P, N)
        counts = last.sum(-1)  # (H, P) patches per part in each head
        n = last.shape[-1]
        print(f'patches per [PART] in the last layer ({n} patches, {last.shape[0]} heads; mean [min-max] over heads):')
        part = 0
        for g, size in enumerate(model.part_groups):
            cells = []
            for _ in range(size):
                c = counts[:, part].float()
                cells.append(f'PART_{part + 1}: {c.mean():5.1f} [{int(c.min())}-{int(c.max())}]')
                part += 1
            print(f'  group {g + 1} ({size} parts): ' + '   '.join(cells))
        args.output_dir.mkdir(parents=True, exist_ok=True)
        png = args.output_dir / 'part_assignment.png'
        tile([majority_row(image, last, model.part_groups, model.patch_embed.grid_size)]).save(png)
        print(f'picture    {png} (image, then one panel per group: patches coloured by part, majority over heads)')


if __name__ == '__main__':
    main()
