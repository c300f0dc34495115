# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Image processor for re-ID models: resize to the model's 256x128 input and normalise with the backbone's mean/std."""
from typing import Any, Dict

from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import PILImageResampling

__all__ = ['AAformerImageProcessor']


class AAformerImageProcessor(TorchvisionBackend):
    """Resize (bilinear) to height x width, rescale to [0, 1], normalise. Defaults match ``aaformer_base``'s
    ViT-B/16 backbone (mean = std = 0.5); ``from_timm_pretrained_cfg`` takes them from any timm pretrained cfg."""

    resample = PILImageResampling.BILINEAR
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {'height': 256, 'width': 128}
    do_resize = True
    do_rescale = True
    do_normalize = True

    @classmethod
    def from_timm_pretrained_cfg(cls, pretrained_cfg: Dict[str, Any]) -> 'AAformerImageProcessor':
        """The processor that feeds a timm model with this pretrained cfg (input size, mean, std, interpolation)."""
        _, height, width = pretrained_cfg['input_size']
        resample = {'bilinear': PILImageResampling.BILINEAR, 'bicubic': PILImageResampling.BICUBIC}
        return cls(
            size={'height': height, 'width': width},
            image_mean=list(pretrained_cfg['mean']),
            image_std=list(pretrained_cfg['std']),
            resample=resample.get(pretrained_cfg.get('interpolation', 'bilinear'), PILImageResampling.BILINEAR),
        )
