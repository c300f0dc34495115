"""Overlapping patch embedding: timm's ``PatchEmbed`` with a stride smaller than the patch (TransReID's and
CLIP-ReID's "OLP": 16x16 patches every 12 pixels give a 21x10 grid at 256x128)."""
from typing import Tuple, Union

import torch.nn as nn
from timm.layers import PatchEmbed, to_2tuple

__all__ = ['OverlappingPatchEmbed']


class OverlappingPatchEmbed(PatchEmbed):
    """``PatchEmbed`` whose convolution steps by ``stride`` instead of ``patch_size``; the grid is
    ``(size - patch) // stride + 1`` per side. Fixed input size only (no dynamic size or padding)."""

    def __init__(self, *args, stride: Union[int, Tuple[int, int]] = 12, **kwargs) -> None:
        # set before PatchEmbed.__init__, which computes the grid through _init_img_size
        self.stride = to_2tuple(stride)
        if kwargs.get('dynamic_img_pad') or not kwargs.get('strict_img_size', True):
            raise ValueError('OverlappingPatchEmbed supports fixed input sizes only')
        super().__init__(*args, **kwargs)
        if any(s > p for s, p in zip(self.stride, self.patch_size)):
            raise ValueError(f'patch stride {self.stride} larger than the patch {self.patch_size} would skip pixels')
        old = self.proj
        self.proj = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=self.patch_size, stride=self.stride,
                              bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)

    def _init_img_size(self, img_size):
        if img_size is None:
            return None, None, None
        img_size = to_2tuple(img_size)
        grid_size = tuple((s - p) // st + 1 for s, p, st in zip(img_size, self.patch_size, self.stride))
        return img_size, grid_size, grid_size[0] * grid_size[1]

    def set_input_size(self, img_size=None, patch_size=None):
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError('OverlappingPatchEmbed cannot change its patch size')
        super().set_input_size(img_size=img_size)

    def feat_ratio(self, as_scalar: bool = True):
        return max(self.stride) if as_scalar else self.stride

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        return tuple((s - p) // st + 1 for s, p, st in zip(img_size, self.patch_size, self.stride))

    def extra_repr(self) -> str:
        return f'stride={self.stride}'
