# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Pictures of what a re-ID model does (``aaformer-hf visualize``), drawn with PIL:

- ``parts_figure``: an AAformer's patch-to-[PART] assignment in one layer - per image, each group's parts by majority
  over heads, every head on its own, and how many heads agree with the majority (dark = heads disagree);
- ``attention_figure``: where CLS (per head) and each [PART] (mean over heads) look, in one layer; for the π-VL model
  (a plain CLIP ViT at inference) CLS per head and averaged over heads; for π-VL's CNN (a CLIP ResNet), where its
  attention pool's mean token (the query whose output is the CLIP projection) looks on the last map;
- ``ranks_figure``: rank lists - each query, then its nearest gallery images under the evaluation protocol (same
  identity under the same camera left out), framed green for a correct match and red otherwise.
"""
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ['PALETTE', 'PartPanels', 'part_panels', 'parts_figure', 'attention_figure', 'attention_depth',
           'attention_pool_attention', 'ranks_figure', 'tile']

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]
CELL = 16  # screen pixels per patch


def tile(rows: Sequence[Sequence[Image.Image]], gap: int = 6, border: Optional[List[List[tuple]]] = None
         ) -> Image.Image:
    """Panels in rows on white, left-aligned; ``border`` colours a 3-pixel frame per panel (None: no frame)."""
    width = max(sum(p.width for p in row) + gap * (len(row) - 1) for row in rows)
    height = sum(max(p.height for p in row) for row in rows) + gap * (len(rows) - 1)
    canvas = Image.new('RGB', (width, height), 'white')
    y = 0
    for r, row in enumerate(rows):
        x = 0
        for c, panel in enumerate(row):
            canvas.paste(panel, (x, y))
            colour = border[r][c] if border is not None else None
            if colour is not None:
                ImageDraw.Draw(canvas).rectangle([x, y, x + panel.width - 1, y + panel.height - 1], outline=colour,
                                                 width=3)
            x += panel.width + gap
        y += max(p.height for p in row) + gap
    return canvas


def _labels_panel(image: Image.Image, labels: np.ndarray, first_part: int) -> Image.Image:
    """``image`` with each patch tinted by its part's colour; labels (h, w) index parts from ``first_part``."""
    colours = np.array([PALETTE[(first_part + i) % len(PALETTE)] for i in range(int(labels.max()) + 1)],
                       dtype=np.uint8)
    overlay = Image.fromarray(colours[labels]).resize(image.size, Image.NEAREST)
    return Image.blend(image, overlay, 0.6)


def _heat_panel(image: Image.Image, weights: np.ndarray) -> Image.Image:
    """``image`` under a red heat map of (h, w) weights scaled to their maximum."""
    scaled = weights / max(float(weights.max()), 1e-12)
    heat = np.zeros((*weights.shape, 3), dtype=np.uint8)
    heat[..., 0] = (255 * scaled).astype(np.uint8)
    overlay = Image.fromarray(heat).resize(image.size, Image.BILINEAR)
    return Image.blend(image.convert('L').convert('RGB'), overlay, 0.6)


def _display(image: Image.Image, grid) -> Image.Image:
    return image.convert('RGB').resize((grid[1] * CELL, grid[0] * CELL))


def majority_row(image: Image.Image, assigned: torch.Tensor, groups: Sequence[int], grid) -> List[Image.Image]:
    """The image, then per group its patches tinted by the part most heads gave them; ``assigned`` (H, P, N)."""
    panels = part_panels(image, assigned, groups, grid)
    return [panels.image] + panels.majority


class PartPanels(NamedTuple):
    """One image's [PART] assignment in one layer, drawn: the image; per group, its parts by majority over heads and
    each head's own; the share of heads agreeing with the majority part of the first group (black 0 - white 1)."""
    image: Image.Image
    majority: List[Image.Image]
    heads: List[List[Image.Image]]
    agreement: Image.Image


def part_panels(image: Image.Image, assigned: torch.Tensor, groups: Sequence[int], grid) -> PartPanels:
    """``PartPanels`` of one image from its (H, P, N) assignment in one layer."""
    shown = _display(image, grid)
    majority, heads, start, agreement = [], [], 0, None
    for size in groups:
        group = assigned[:, start:start + size].float()  # (H, P_g, N)
        per_head = group.argmax(1).view(-1, *grid).numpy()  # (H, h, w)
        by_majority = group.sum(0).argmax(0).view(*grid).numpy()
        majority.append(_labels_panel(shown, by_majority, start))
        heads.append([_labels_panel(shown, head, start) for head in per_head])
        if agreement is None:
            agreement = (per_head == by_majority).mean(0)
        start += size
    agreement_panel = Image.fromarray((255 * agreement).astype(np.uint8)).resize(shown.size, Image.NEAREST)
    return PartPanels(shown, majority, heads, agreement_panel.convert('RGB'))


@torch.no_grad()
def parts_figure(model, images: Sequence[Image.Image], pixels: torch.Tensor, layer: int = -1) -> Image.Image:
    """One row per image: the image; per group, its parts by majority over heads, then each head; then the share of
    heads agreeing with the majority part of the first group (black 0 - white 1)."""
    if not getattr(model, 'assigns_patches', False):
        raise ValueError('parts: the model assigns no patches itself (no [PART]s, or parts given from outside)')
    assigned = model.forward_tokens(pixels, output_assignments=True).assignments[layer]  # (B, H, P, N)
    rows = []
    for image, a in zip(images, assigned):
        panels = part_panels(image, a, model.part_groups, model.patch_embed.grid_size)
        row = [panels.image]
        for majority, heads in zip(panels.majority, panels.heads):
            row += [majority] + heads
        rows.append(row + [panels.agreement])
    return tile(rows)


@torch.no_grad()
def attention_figure(model, images: Sequence[Image.Image], pixels: torch.Tensor, layer: int = -1) -> Image.Image:
    """One row per image: the image, CLS's attention over the patches in each head, then each [PART]'s (mean over
    heads; an AAformer's [PART]s see only their own patches) - or, for a plain ViT such as the π-VL model, CLS's
    attention averaged over the heads (π-VL's Fig. 5 shows such maps)."""
    from timm.models.vision_transformer import VisionTransformer

    from ..models.aaformer import AAformer
    from ..models.pivl_resnet import PiVLResNet
    depth = attention_depth(model)
    if not -depth <= layer < depth:
        raise ValueError(f'--layer {layer}: the model has {depth} attention layer(s) (0..{depth - 1}, '
                         'or negative from the last)')
    if isinstance(model, PiVLResNet):
        rows_to_patches = attention_pool_attention(model, pixels)[..., 1:].unsqueeze(2)  # (B, H, 1, N)
        reduction = model.feature_info[-1]['reduction']  # the last map's stride (16 with last stride 1)
        prefix, grid = 1, (pixels.shape[-2] // reduction, pixels.shape[-1] // reduction)
    elif isinstance(model, AAformer):
        probs = model.forward_tokens(pixels, output_attentions=True).attentions[layer]  # (B, H, L, L)
        prefix, grid = model.num_prefix_tokens, model.patch_embed.grid_size
        rows_to_patches = probs[:, :, :prefix, prefix:]
    elif isinstance(model, VisionTransformer):
        probs, prefix = vit_attention(model, pixels, layer), model.num_prefix_tokens
        grid, rows_to_patches = model.patch_embed.grid_size, probs[:, :, :prefix, prefix:]
    else:
        raise ValueError(f'attention: needs an AAformer, a timm ViT (the π-VL model) or π-VL\'s CLIP ResNet, got '
                         f'{type(model).__name__}')
    rows = []
    for image, to_patches in zip(images, rows_to_patches):  # (H, prefix, N)
        shown = _display(image, grid)
        row = [shown] + [_heat_panel(shown, head[0].view(*grid).numpy()) for head in to_patches]
        if prefix == 1:
            row.append(_heat_panel(shown, to_patches[:, 0].mean(0).view(*grid).numpy()))
        row += [_heat_panel(shown, to_patches[:, t].mean(0).view(*grid).numpy()) for t in range(1, prefix)]
        rows.append(row)
    return tile(rows)


def attention_depth(model) -> int:
    """The attention layers ``attention_figure`` can draw: a ViT's blocks, or π-VL's CNN's one, its attention pool
    (0: none)."""
    from ..models.pivl_resnet import PiVLResNet
    return 1 if isinstance(model, PiVLResNet) else len(getattr(model, 'blocks', ()))


def vit_attention(model, pixels: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """(B, H, L, L) attention probabilities of one block of a timm ``VisionTransformer``, recomputed from that
    block's input with its own projections (timm's fused attention never forms them)."""
    if getattr(model, 'num_cameras', 0):
        raise ValueError('attention: a model with a camera embedding (SIE) needs camera ids; not supported here')
    _, hidden = model.forward_tokens(pixels, output_hidden_states=True)
    block = model.blocks[layer]
    attn = block.attn
    x = block.norm1(hidden[range(len(model.blocks))[layer]])
    b, n, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def attention_pool_attention(model, pixels: torch.Tensor) -> torch.Tensor:
    """(B, H, 1 + N) attention of a CLIP ResNet's attention pool (timm's ``AttentionPool2d``, π-VL's CNN
    ``attn_pool``): its mean token's row - the query whose output becomes the CLIP projection - over itself and the
    N cells of the last map, per head, recomputed with the pool's own projections (timm's fused attention never
    forms it)."""
    from timm.layers import resample_abs_pos_embed

    pool = model.attn_pool
    x = model.forward_features(pixels)
    b, _, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + resample_abs_pos_embed(
        pool.pos_embed.unsqueeze(0), (h, w), old_size=pool.feat_size, num_prefix_tokens=1)
    q = pool.q(tokens[:, :1]).reshape(b, 1, pool.num_heads, pool.head_dim).transpose(1, 2)
    k = pool.k(tokens).reshape(b, h * w + 1, pool.num_heads, pool.head_dim).transpose(1, 2)
    return ((q * pool.scale) @ k.transpose(-2, -1)).softmax(-1)[:, :, 0]


def ranks_figure(query_images: Sequence[Image.Image], gallery_images: Sequence[Image.Image], distmat: torch.Tensor,
                 q_pids: torch.Tensor, g_pids: torch.Tensor, q_cams: torch.Tensor, g_cams: torch.Tensor,
                 top: int = 10, size=(64, 128)) -> Image.Image:
    """One row per query: the query (grey frame), then its ``top`` nearest gallery images in the evaluation's order,
    the same identity under the query's camera left out (Market-1501 protocol); green = same identity."""
    rows, frames = [], []
    for q in range(len(query_images)):
        keep = ~((g_pids == q_pids[q]) & (g_cams == q_cams[q])) & (g_pids != -1)  # and junk
        order = torch.argsort(distmat[q], stable=True)
        order = order[keep[order]][:top]
        rows.append([query_images[q].convert('RGB').resize(size)] +
                    [gallery_images[int(g)].convert('RGB').resize(size) for g in order])
        frames.append([(128, 128, 128)] + [(0, 170, 0) if g_pids[g] == q_pids[q] else (220, 0, 0) for g in order])
    return tile(rows, border=frames)
