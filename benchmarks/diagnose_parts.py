"""What a trained AAformer's [PART]s do, layer by layer (issue #11's diagnostics), as JSON and one PNG per model.

    python benchmarks/diagnose_parts.py outputs/variants/pretrained/aaformer/model --data_root outputs/variants/data
    python benchmarks/diagnose_parts.py RUN/model --data_root DATA --checkpoints RUN/checkpoints   # + churn

For the query and gallery images of a Market-layout set (``--limit`` of them) it reports, per layer:

- [PART] tokens: mean pairwise cosine within each group and mean norm, against CLS and patch-token norms (block
  inputs; layer 0 = the embeddings): parallel [PART] states make the assignment hinge on tiny differences;
- consistency of each part's patch set (IoU, mean over parts and heads): an image against its horizontal mirror
  (mirrored back), the same identity under another camera, and random pairs of different identities (the floor);
- where each part sits: mean patch row and column, and (with parsing maps) the share of its patches on the person;
- per-token retrieval: mAP of CLS and of each [PART] alone (after the BNNeck, L2-normalised);
- with ``--checkpoints`` (a training run's epoch_N folders): assignment churn, the share of (image, head, patch)
  whose part changes between consecutive checkpoints.

Needs matplotlib for the PNG (``pip install aaformer-hf[diagnostics]``); the JSON is written without it.
Models whose [PART]s take no assignment of their own ('given', 'global', or no [PART]s) get the retrieval part only.
"""
import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from aaformer_hf.data import load_reid_dataset
from aaformer_hf.data.parsing import add_parsing_column, label_counts_on_grid, parsing_path, region_masks
from aaformer_hf.reid.evaluation import evaluate
from aaformer_hf.hf import AAformerImageProcessor, AAformerModel


def load_images(data_root: Path, processor, limit: int) -> Dict[str, object]:
    """Query then gallery images (identities >= 1, up to ``limit``): pixels, pids, camids, split sizes, and the
    parsing maps at the input size when every image has one."""
    data = load_reid_dataset('market1501', data_root, verify_images=False)
    rows = {split: data[split].filter(lambda pid: pid >= 1, input_columns='pid') for split in ('query', 'gallery')}
    n_query = min(len(rows['query']), limit // 3)
    n_gallery = min(len(rows['gallery']), limit - n_query)
    images, pids, cams, paths = [], [], [], []
    for split, n in (('query', n_query), ('gallery', n_gallery)):
        part = rows[split].select(range(n))
        images += part['image']
        pids += part['pid']
        cams += part['camid']
        paths += part['path']
    pixels = processor(images, return_tensors='pt')['pixel_values']
    maps = [parsing_path(p, data_root) for p in paths]
    parsing = None
    if all(m.is_file() for m in maps):
        size = pixels.shape[-2:]
        parsing = torch.stack([torch.from_numpy(np.array(Image.open(m).resize(size[::-1], Image.NEAREST)))
                               for m in maps]).long()
    return dict(pixels=pixels, pids=torch.tensor(pids), cams=torch.tensor(cams), n_query=n_query, parsing=parsing)


def set_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boolean patch sets over the last dim; parts empty in both count as agreeing (1)."""
    inter, union = (a & b).sum(-1).float(), (a | b).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mirrored(assigned: torch.Tensor, grid) -> torch.Tensor:
    """(…, N) patch sets of a mirrored image, mapped back onto the original's patch grid."""
    return assigned.unflatten(-1, grid).flip(-1).flatten(-2)


def same_identity_pairs(pids: torch.Tensor, cams: torch.Tensor, limit: int = 200):
    pairs = [(i, j) for i in range(len(pids)) for j in range(i + 1, len(pids))
             if pids[i] == pids[j] and cams[i] != cams[j]]
    return pairs[:limit]


def random_pairs(pids: torch.Tensor, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < count:
        i, j = rng.integers(len(pids), size=2)
        if pids[i] != pids[j]:
            pairs.append((int(i), int(j)))
    return pairs


@torch.no_grad()
def assignments_of(model, pixels: torch.Tensor, batch: int = 64) -> List[torch.Tensor]:
    """Per layer, (B, H, P, N) bool."""
    per_batch = [model.forward_tokens(pixels[i:i + batch], output_assignments=True).assignments
                 for i in range(0, len(pixels), batch)]
    return [torch.cat(layer) for layer in zip(*per_batch)]


@torch.no_grad()
def token_statistics(model, pixels: torch.Tensor) -> Dict[str, list]:
    """Per block input: [PART] pairwise cosine per group, norms of [PART]s, CLS and patches."""
    states = model.forward_tokens(pixels[:64], output_hidden_states=True).hidden_states
    p = model.num_parts
    cosine, part_norm, cls_norm, patch_norm = [], [], [], []
    for x in states:
        parts = x[:, 1:1 + p]
        per_group, start = [], 0
        for size in model.part_groups:
            group = F.normalize(parts[:, start:start + size], dim=-1)
            sims = group @ group.transpose(1, 2)
            off_diagonal = ~torch.eye(size, dtype=torch.bool)
            per_group.append(float(sims[:, off_diagonal].mean()) if size > 1 else float('nan'))
            start += size
        cosine.append(per_group)
        part_norm.append(float(parts.norm(dim=-1).mean()))
        cls_norm.append(float(x[:, 0].norm(dim=-1).mean()))
        patch_norm.append(float(x[:, 1 + p:].norm(dim=-1).mean()))
    return dict(part_pairwise_cosine=cosine, part_norm=part_norm, cls_norm=cls_norm, patch_norm=patch_norm)


def consistency(layers: List[torch.Tensor], flipped: List[torch.Tensor], grid, pids, cams) -> Dict[str, list]:
    same = same_identity_pairs(pids, cams)
    other = random_pairs(pids, max(len(same), 50))
    out = {'flip_iou': [], 'cross_camera_iou': [], 'random_pair_iou': [], 'pairs': [len(same), len(other)]}
    for a, f in zip(layers, flipped):
        out['flip_iou'].append(float(set_iou(a, mirrored(f, grid)).mean()))
        for key, pairs in (('cross_camera_iou', same), ('random_pair_iou', other)):
            i, j = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
            out[key].append(float(set_iou(a[i], a[j]).mean()) if pairs else float('nan'))
    return out


def placement(layers: List[torch.Tensor], grid, parsing: Optional[torch.Tensor]) -> Dict[str, list]:
    """Per layer and part: mean row and column (in patches) of its patches and, with parsing maps, the share of its
    patches whose majority pixel label is a person label."""
    rows = torch.arange(grid[0]).repeat_interleave(grid[1]).float()
    cols = torch.arange(grid[1]).repeat(grid[0]).float()
    foreground = None
    if parsing is not None:
        counts = label_counts_on_grid(parsing, grid)
        foreground = (counts[..., 0] * 2 < counts.sum(-1)).flatten(1).float()  # (B, N)
    out = {'mean_row': [], 'mean_col': [], 'foreground_share': []}
    for a in layers:
        weight = a.float()  # (B, H, P, N)
        size = weight.sum(-1).clamp(min=1)
        out['mean_row'].append(((weight * rows).sum(-1) / size).mean((0, 1)).tolist())
        out['mean_col'].append(((weight * cols).sum(-1) / size).mean((0, 1)).tolist())
        if foreground is not None:
            share = (weight * foreground[:, None, None]).sum(-1) / size
            out['foreground_share'].append(share.mean((0, 1)).tolist())
    if parsing is not None:
        out['foreground_share_of_image'] = float(foreground.mean())
    return out


@torch.no_grad()
def split_embeddings(model_dir: Path, data_root: Path):
    """The model's width D and (embeddings, pids, camids) of the query and gallery of a Market-layout set, through
    the transformers front door and the saved image processor; a model whose [PART]s come from parsing maps
    (``assignment='given'``, the SPReID row) gets each image's SPReID regions from the set's maps."""
    model = AAformerModel.from_pretrained(model_dir).eval()
    processor = AAformerImageProcessor.from_pretrained(model_dir)
    data = load_reid_dataset('market1501', data_root, verify_images=False)
    given = model.config.assignment == 'given'

    def embed(split):
        ds = add_parsing_column(data[split], data_root) if given else data[split]
        feats = []
        for i in range(0, len(ds), 64):
            rows = ds[i:i + 64]
            masks = {}
            if given:
                height, width = model.config.image_size  # the maps resized with the images, as in training
                maps = torch.stack([torch.from_numpy(np.array(Image.open(p).resize((width, height), Image.NEAREST),
                                                              dtype=np.int64)) for p in rows['parsing']])
                masks['part_masks'] = region_masks(maps, model.timm_model.patch_embed.grid_size)
            with torch.no_grad():
                pixels = processor(rows['image'], return_tensors='pt')['pixel_values']
                feats.append(model(pixels, **masks).pooler_output)
        return torch.cat(feats), torch.tensor(ds['pid']), torch.tensor(ds['camid'])

    return model.config.hidden_size, embed('query'), embed('gallery')


def per_token_map(model_dir: Path, data_root: Path) -> Dict[str, float]:
    """mAP of CLS alone and of each [PART] alone (after the BNNeck, L2-normalised), on the whole test split."""
    d, (qf, qp, qc), (gf, gp, gc) = split_embeddings(model_dir, data_root)
    names = ['CLS'] + [f'PART {i + 1}' for i in range(qf.shape[1] // d - 1)] + ['all']
    cuts = [slice(i * d, (i + 1) * d) for i in range(qf.shape[1] // d)] + [slice(None)]
    return {name: float(evaluate(qf[:, c], gf[:, c], qp, gp, qc, gc, normalize=True)['mAP'])
            for name, c in zip(names, cuts)}


def churn(model, checkpoints: Path, pixels: torch.Tensor) -> Dict[str, list]:
    """Share of (image, head, patch) whose part changes between consecutive epoch checkpoints, per layer (a patch's
    part: its index in each group; the mean over groups)."""
    folders = sorted((f for f in checkpoints.glob('epoch_*') if (f / 'model.safetensors').is_file()),
                     key=lambda f: int(re.findall(r'\d+', f.name)[-1]))
    own = model.state_dict()
    previous, epochs, changes = None, [], []
    for folder in folders:
        state = {k.removeprefix('timm_model.'): v for k, v in load_file(folder / 'model.safetensors').items()}
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        current = part_index_per_group(assignments_of(model.eval(), pixels), model.part_groups)
        if previous is not None:
            epochs.append(int(re.findall(r'\d+', folder.name)[-1]))
            changes.append([float((c != p).float().mean()) for c, p in zip(current, previous)])
        previous = current
    return {'epochs': epochs, 'changed_share': changes}


def part_index_per_group(layers: List[torch.Tensor], groups) -> List[torch.Tensor]:
    """(B, H, P, N) assignments -> (B, H, G, N): the index of each patch's part within every group."""
    out = []
    for a in layers:
        per_group, start = [], 0
        for size in groups:
            per_group.append(a[:, :, start:start + size].float().argmax(2))
            start += size
        out.append(torch.stack(per_group, 2))
    return out


def diagnose(model_dir: Path, data_root: Path, limit: int = 120, checkpoints: Optional[Path] = None) -> dict:
    encoder = AAformerModel.from_pretrained(model_dir).eval()
    model = encoder.timm_model
    report = {'model': str(model_dir), 'per_token_mAP': per_token_map(model_dir, data_root)}
    if not model.assigns_patches:
        return report
    processor = AAformerImageProcessor.from_pretrained(model_dir)
    images = load_images(data_root, processor, limit)
    pixels, grid = images['pixels'], model.patch_embed.grid_size
    layers = assignments_of(model, pixels)
    report.update(
        part_groups=list(model.part_groups), images=len(pixels), grid=list(grid),
        tokens=token_statistics(model, pixels),
        consistency=consistency(layers, assignments_of(model, pixels.flip(-1)), grid, images['pids'],
                                images['cams']),
        placement=placement(layers, grid, images['parsing']),
        example=dict(image=pixels[0].tolist(), last_layer=layers[-1][0].int().tolist()))
    if checkpoints is not None:
        report['churn'] = churn(model, checkpoints, pixels[:32])
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    from matplotlib.ticker import MaxNLocator
    fig.suptitle(report['model'], fontsize=9)
    tokens = report.get('tokens')
    ax = axes[0, 0]
    if tokens:
        cos = np.array(tokens['part_pairwise_cosine'], dtype=float)
        for g in range(cos.shape[1]):
            ax.plot(cos[:, g], marker='o', label=f'group {g + 1} ({report["part_groups"][g]} parts)')
        ax.set(title='[PART] pairwise cosine (block input)', xlabel='layer', ylim=(-1.05, 1.05))
        ax.legend(fontsize=8)
        ax = axes[0, 1]
        for key in ('part_norm', 'cls_norm', 'patch_norm'):
            ax.plot(tokens[key], marker='o', label=key.replace('_', ' '))
        ax.set(title='token norms', xlabel='layer', yscale='log')
        ax.legend(fontsize=8)
        ax = axes[0, 2]
        c = report['consistency']
        for key in ('flip_iou', 'cross_camera_iou', 'random_pair_iou'):
            ax.plot(c[key], marker='o', label=key.replace('_', ' '))
        ax.set(title='part patch-set IoU (mean over parts, heads)', xlabel='layer', ylim=(0, 1.05))
        ax.legend(fontsize=8)
    ax = axes[1, 0]
    maps = report['per_token_mAP']
    ax.bar(range(len(maps)), [100 * v for v in maps.values()], color='tab:blue')
    ax.set_xticks(range(len(maps)), list(maps), rotation=45, fontsize=8)
    ax.set(title='mAP of each token alone (%)')
    if tokens:
        ax = axes[1, 1]
        image = (np.array(report['example']['image']).transpose(1, 2, 0) * 0.5 + 0.5).clip(0, 1)
        assigned = np.array(report['example']['last_layer'])  # (H, P, N)
        grid = report['grid']
        first = report['part_groups'][0]
        labels = assigned[:, :first].argmax(1).reshape(len(assigned), *grid)  # first group, per head
        agreement = (labels == np.apply_along_axis(lambda v: np.bincount(v).argmax(), 0, labels)).mean(0)
        cells = [plt.cm.tab10(labels[h] / 9)[..., :3] for h in range(len(labels))] + [
            plt.cm.viridis(agreement)[..., :3]]
        up = [np.repeat(np.repeat(c, image.shape[0] // grid[0], 0), image.shape[1] // grid[1], 1) for c in cells]
        ax.imshow(np.concatenate([image] + up, axis=1))
        ax.set(title='last layer, group 1: image | each head | head agreement', xticks=[], yticks=[])
        ax = axes[1, 2]
        churn_report = report.get('churn')
        if churn_report and churn_report['epochs']:
            changes = np.array(churn_report['changed_share'])
            for layer in range(changes.shape[1]):
                ax.plot(churn_report['epochs'], changes[:, layer], marker='o', label=f'layer {layer}')
            ax.set(title='assignment churn since the previous checkpoint', xlabel='epoch', ylim=(0, 1))
            ax.legend(fontsize=7)
        else:
            rows = np.array(report['placement']['mean_row'][-1])
            ax.bar(range(len(rows)), rows, color='tab:green')
            ax.set(title=f'last layer: mean patch row per part (0-{grid[0] - 1})', xlabel='part')
    for ax in axes.flat:
        if ax is not axes[1, 1]:  # the picture keeps no ticks
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not ax.has_data():
            ax.axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model_dir', type=Path, nargs='+', help='save_pretrained folder(s) of AAformer models')
    parser.add_argument('--data_root', type=Path, required=True, help='a Market-layout set (its test split)')
    parser.add_argument('--limit', type=int, default=120, help='query + gallery images for the assignment reads')
    parser.add_argument('--checkpoints', type=Path, help="a run's checkpoints/ folder: assignment churn per epoch")
    parser.add_argument('--out', type=Path, help='folder for MODEL.json and MODEL.png (default: beside each model)')
    parser.add_argument('--no_png', action='store_true')
    args = parser.parse_args(argv)
    if not sys.stderr.isatty():  # a log file gets no progress-bar frames
        import datasets
        import transformers
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    for model_dir in args.model_dir:
        if not (model_dir / 'config.json').is_file():
            parser.error(f'{model_dir}: not a model folder (no config.json)')
        report = diagnose(model_dir, args.data_root, args.limit, args.checkpoints)
        out = args.out or model_dir.parent
        out.mkdir(parents=True, exist_ok=True)
        stem = '_'.join(model_dir.resolve().parts[-3:-1] if model_dir.name == 'model' else model_dir.parts[-2:])
        # the example image is for the picture only
        (out / f'{stem}_diagnostics.json').write_text(json.dumps({k: v for k, v in report.items() if k != 'example'},
                                                                indent=1))
        if not args.no_png:
            plot(report, out / f'{stem}_diagnostics.png')
        summary = {k: round(100 * v, 1) for k, v in report['per_token_mAP'].items()}
        print(f'{model_dir}: per-token mAP {summary}; wrote {out / stem}_diagnostics.json')


if __name__ == '__main__':
    main()
