# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Image processor of the π-VL models: AAformer's re-ID processing (``image_processing_aaformer``) with CLIP's
defaults."""
from transformers.image_utils import PILImageResampling

from .image_processing_aaformer import AAformerImageProcessor

__all__ = ['PiVLImageProcessor']


class PiVLImageProcessor(AAformerImageProcessor):
    """The same processing with the π-VL model's defaults: OpenAI CLIP's mean/std, bicubic resizing to 256x128
    (``pivl_vit_base_patch16``'s pretrained cfg)."""

    resample = PILImageResampling.BICUBIC
    image_mean = [0.48145466, 0.4578275, 0.40821073]
    image_std = [0.26862954, 0.26130258, 0.27577711]
