# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Image processor of the π-VL models: AAformer's re-ID processing (``image_processing_aaformer``) under the
family's own name (the Auto classes map each family to its processor)."""
from .image_processing_aaformer import AAformerImageProcessor

__all__ = ['PiVLImageProcessor']


class PiVLImageProcessor(AAformerImageProcessor):
    """The π-VL models' processor: CLIP-ReID's preprocessing, which π-VL keeps - bilinear resizing to 256x128,
    mean = std = 0.5 (``pivl_vit_base_patch16``'s pretrained cfg) - the same numbers as AAformer's ViT backbone."""
