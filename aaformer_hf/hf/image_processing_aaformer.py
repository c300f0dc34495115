# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Image processor for re-ID models: resize to the model's 256x128 input and normalise with the backbone's mean/std.

A saved model folder has one preprocessing truth, its config's ``image_mean`` / ``image_std`` / ``interpolation``
(``TimmBackedConfig.preprocessing_cfg``), written into timm's ``pretrained_cfg`` in config.json and into
``preprocessor_config.json``. transformers reads either file depending on its version (from 5.25 a local folder whose
config.json carries ``pretrained_cfg`` is read as a timm checkpoint), so ``from_dict`` accepts both and gives the same
processor from each.
"""
from typing import Any, Dict

from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import PILImageResampling

__all__ = ['AAformerImageProcessor']

_RESAMPLE = {'bilinear': PILImageResampling.BILINEAR, 'bicubic': PILImageResampling.BICUBIC}


class AAformerImageProcessor(TorchvisionBackend):
    """Resize (bilinear) to height x width, rescale to [0, 1], normalise. Defaults match ``aaformer_base``'s
    ViT-B/16 backbone (mean = std = 0.5); ``from_config`` takes them from a model's config, and
    ``from_timm_pretrained_cfg`` from any timm pretrained cfg."""

    resample = PILImageResampling.BILINEAR
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {'height': 256, 'width': 128}
    do_resize = True
    do_rescale = True
    do_normalize = True

    @classmethod
    def from_timm_pretrained_cfg(cls, pretrained_cfg: Dict[str, Any], **kwargs) -> 'AAformerImageProcessor':
        """The processor that feeds a timm model with this pretrained cfg (input size, mean, std, interpolation): the
        whole crop resized to the input size, as the folders this package writes tell timm too (``crop_mode``
        'squash', ``crop_pct`` 1)."""
        _, height, width = pretrained_cfg['input_size']
        interpolation = pretrained_cfg.get('interpolation') or 'bilinear'
        if interpolation not in _RESAMPLE:
            raise ValueError(f'pretrained cfg interpolation {interpolation!r}: re-ID processors resize with '
                             f'{" or ".join(_RESAMPLE)}')
        fields = dict(size={'height': height, 'width': width}, image_mean=list(pretrained_cfg['mean']),
                      image_std=list(pretrained_cfg['std']), resample=_RESAMPLE[interpolation])
        return cls(**{**fields, **kwargs})

    @classmethod
    def from_config(cls, config, **kwargs) -> 'AAformerImageProcessor':
        """The processor of a model with this config (a registered family's): its preprocessing fields."""
        return cls.from_timm_pretrained_cfg(config.preprocessing_cfg(), **kwargs)

    @classmethod
    def from_dict(cls, image_processor_dict: Dict[str, Any], **kwargs):
        # a model folder's config.json (what transformers >= 5.25 reads for a local folder holding timm's keys):
        # the processor comes from its pretrained_cfg, which the config wrote from its preprocessing fields
        if 'pretrained_cfg' in image_processor_dict and 'image_processor_type' not in image_processor_dict:
            return_unused = kwargs.pop('return_unused_kwargs', False)
            valid = cls.valid_kwargs.__annotations__.keys()
            processor = cls.from_timm_pretrained_cfg(
                image_processor_dict['pretrained_cfg'], **{k: kwargs.pop(k) for k in list(kwargs) if k in valid})
            return (processor, kwargs) if return_unused else processor
        return super().from_dict(image_processor_dict, **kwargs)
