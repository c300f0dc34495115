# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Image processor for re-ID models: resize to the model's 256x128 input and normalise with the backbone's mean/std."""
from typing import Any, Dict

from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import PILImageResampling

__all__ = ['AAformerImageProcessor', 'PiVLImageProcessor']


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


class PiVLImageProcessor(AAformerImageProcessor):
    """The same processing with the π-VL model's defaults: OpenAI CLIP's mean/std, bicubic resizing to 256x128
    (``pivl_vit_base_patch16``'s pretrained cfg)."""

    resample = PILImageResampling.BICUBIC
    image_mean = [0.48145466, 0.4578275, 0.40821073]
    image_std = [0.26862954, 0.26130258, 0.27577711]
