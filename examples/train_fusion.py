"""π-VL's training-only alignment pieces: the parsing map on the feature grid, the text-embedding map built from it
(Eq. 6) and the hierarchical-fusion auxiliary head (§3.4) that regresses it. None of this is part of the saved model.
"""
import math
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

from aaformer_hf.data.parsing import NUM_PARSING_CLASSES, label_counts_on_grid

__all__ = ['NUM_PARSING_CLASSES', 'parsing_on_grid', 'text_embedding_map', 'SimpleFeaturePyramidFusion',
           'PatchProjection', 'CNNHierarchicalFusion', 'build_alignment_head', 'FUSION_SUMS']

FUSION_SUMS = ('all', 'eq10')  # CNNHierarchicalFusion: F2 + F3 + F4, or Eq. 10 as printed (F2 + F4)


def parsing_on_grid(parsing: torch.Tensor, grid: Tuple[int, int], num_classes: int = NUM_PARSING_CLASSES
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each grid cell's most frequent parsing label, and the share of the cell's pixels that carry it.

    The paper downsamples the parsing map to the feature resolution without saying how; the majority label keeps
    thin parts (arms, shoes) where nearest-neighbour sampling would often miss them. Cells of unequal size (an
    overlapping-patch grid) use adaptive average pooling's cells; a tie goes to the lower label.

    Args:
        parsing: (B, H, W) integer labels in [0, num_classes).
        grid: (h, w) of the feature map.
    Returns: labels (B, h, w) int64 and their share (B, h, w) in (0, 1].
    """
    (H, W), (h, w) = parsing.shape[1:], grid
    if H % h or W % w:  # cells of unequal size: adaptive pooling's cells over a one-hot map
        one_hot = F.one_hot(parsing.long(), num_classes).permute(0, 3, 1, 2).float()
        share, labels = F.adaptive_avg_pool2d(one_hot, grid).max(dim=1)
        return labels, share
    top, labels = label_counts_on_grid(parsing, grid, num_classes).max(dim=-1)  # ties: the first, lower label
    return labels, top.float() / ((H // h) * (W // w))


def text_embedding_map(part_texts: torch.Tensor, labels: torch.Tensor, cell_labels: torch.Tensor) -> torch.Tensor:
    """Eq. 6: every cell gets the part prompt of its image's identity and its parsing label.

    Args:
        part_texts: (C, P, E) text features of every identity's part prompts (label-only prompts: the same row for
            every identity).
        labels: (B,) identities; cell_labels: (B, h, w) parsing labels on the grid.
    Returns: (B, E, h, w).
    """
    return part_texts[labels[:, None, None], cell_labels].permute(0, 3, 1, 2)


class SimpleFeaturePyramidFusion(nn.Module):
    """The hierarchical-fusion auxiliary head for a plain ViT (π-VL §3.4, "following the design principle of"
    ViTDet's simple feature pyramid, Li et al. ECCV 2022).

    From the last block's patch map (stride s = the patch stride): ViTDet's four levels - 4x up (two stride-2
    transposed convs with LayerNorm and GELU between), 2x up (one), 1x, 2x down (max-pool) - each through ViTDet's
    1x1 conv + LayerNorm + 3x3 conv + LayerNorm; then, as the paper does for CNNs (Eq. 10), every level resampled to
    the 2x-up level's grid (stride s/2, 8 for ViT-B/16: "aligned to stride=8") and summed, and a 1x1 conv to the
    text width. The paper gives no widths: ``hidden`` (ViTDet's 256) is a config field.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, in_dim // 2, 2, stride=2), LayerNorm2d(in_dim // 2), nn.GELU(),
            nn.ConvTranspose2d(in_dim // 2, in_dim // 4, 2, stride=2))
        self.up2 = nn.ConvTranspose2d(in_dim, in_dim // 2, 2, stride=2)
        self.down2 = nn.MaxPool2d(2, 2)
        widths = (in_dim // 4, in_dim // 2, in_dim, in_dim)
        self.levels = nn.ModuleList(nn.Sequential(
            nn.Conv2d(width, hidden, 1, bias=False), LayerNorm2d(hidden),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), LayerNorm2d(hidden)) for width in widths)
        self.out = nn.Conv2d(hidden, out_dim, 1)

    def output_grid(self, grid: Tuple[int, int]) -> Tuple[int, int]:
        return 2 * grid[0], 2 * grid[1]

    def forward(self, patch_map: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, out_dim, 2h, 2w)."""
        size = self.output_grid(patch_map.shape[-2:])
        inputs = (self.up4(patch_map), self.up2(patch_map), patch_map, self.down2(patch_map))
        fused = 0
        for level, x in zip(self.levels, inputs):
            x = level(x)
            if x.shape[-2:] != size:  # down to stride s/2 by averaging, up by bilinear interpolation
                x = (F.adaptive_avg_pool2d(x, size) if x.shape[-1] > size[1]
                     else F.interpolate(x, size=size, mode='bilinear', align_corners=False))
            fused = fused + x
        return self.out(fused)


class PatchProjection(nn.Module):
    """The alignment head without hierarchical fusion (Table 3's B+H and B+P rows): a 1x1 conv from the last block's
    patch map to the text width, at the patch grid."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.out = nn.Conv2d(in_dim, out_dim, 1)

    def output_grid(self, grid: Tuple[int, int]) -> Tuple[int, int]:
        return tuple(grid)

    def forward(self, patch_map: torch.Tensor) -> torch.Tensor:
        return self.out(patch_map)


class CNNHierarchicalFusion(nn.Module):
    """π-VL's hierarchical fusion for CNNs (§3.4, Fig. 4a): C2, C3, C4 - the outputs of the conv2, conv3 and conv4
    stages (ResNet's layer1-3, strides 4, 8, 16) - each through a 1x1 depth-wise convolution to the text width
    (Eq. 9), then brought to stride 8 (Eq. 10: F2 down-sampled, F4 up-sampled) and summed.

    What the paper leaves open, chosen here: the depth-wise convolution's groups are C_i when the text width is a
    multiple of C_i (ResNet-50 to CLIP's 1024: x4, x2, x1 - a true depth-wise convolution), else gcd(C_i, width); it
    has a bias; down-sampling is 2x2 average pooling and up-sampling bilinear. Eq. 10 as printed sums F2 and F4
    only, although Eq. 9 computes F3 and the text fuses "multi-stage" features: ``fusion_sum`` 'all' (default) sums
    the three, 'eq10' follows the equation as printed.
    """

    def __init__(self, in_widths: Sequence[int], out_dim: int, fusion_sum: str = 'all') -> None:
        super().__init__()
        if len(in_widths) != 3:
            raise ValueError(f'CNNHierarchicalFusion takes C2, C3, C4: three widths, got {tuple(in_widths)}')
        if fusion_sum not in FUSION_SUMS:
            raise ValueError(f'fusion_sum must be one of {FUSION_SUMS}, got {fusion_sum!r}')
        self.fusion_sum = fusion_sum
        self.align = nn.ModuleList(nn.Conv2d(width, out_dim, 1, groups=math.gcd(width, out_dim))
                                   for width in in_widths)

    def output_grid(self, grid: Tuple[int, int]) -> Tuple[int, int]:
        """The stride-8 grid from the last map's (stride 16 with last stride 1)."""
        return 2 * grid[0], 2 * grid[1]

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """(C2, C3, C4) at strides 4, 8, 16 -> (B, out_dim, h8, w8)."""
        c2, c3, c4 = maps
        f2, f3, f4 = (align(c) for align, c in zip(self.align, (c2, c3, c4)))
        f2 = F.avg_pool2d(f2, 2)
        f4 = F.interpolate(f4, size=f3.shape[-2:], mode='bilinear', align_corners=False)
        return f2 + f4 if self.fusion_sum == 'eq10' else f2 + f3 + f4


def build_alignment_head(kind: str, in_dim: int, out_dim: int, hidden: int = 256,
                         cnn_widths: Sequence[int] = (), fusion_sum: str = 'all') -> nn.Module:
    """'pyramid' (π-VL's hierarchical fusion, F) or 'linear' (no fusion). ``cnn_widths`` (C2, C3, C4) given:
    π-VL's CNN heads - the fusion of those stages, or a 1x1 conv on the last map; else the ViT's."""
    if kind == 'pyramid':
        if cnn_widths:
            return CNNHierarchicalFusion(cnn_widths, out_dim, fusion_sum)
        return SimpleFeaturePyramidFusion(in_dim, out_dim, hidden)
    if kind == 'linear':
        return PatchProjection(in_dim, out_dim)
    raise ValueError(f"alignment head must be 'pyramid' or 'linear', got {kind!r}")
