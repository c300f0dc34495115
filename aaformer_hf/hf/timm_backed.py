# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""The transformers front door for model families implemented as timm modules.

A family (AAformer now, π-VL next) plugs in with a config subclass that maps its fields to the timm constructor
(``timm_kwargs``), a ``PreTrainedModel`` subclass naming its timm class, and one ``register_family`` call. The
transformers models hold the timm module as ``timm_model``; a checkpoint conversion mapping strips that prefix when
saving and adds it when loading, so ``save_pretrained`` writes timm's key layout and one ``model.safetensors``
serves both libraries.
"""
from collections import OrderedDict
from typing import Any, ClassVar, Dict, Optional, Type

import torch
import torch.nn as nn
from transformers import (
    AutoConfig, AutoImageProcessor, AutoModel, PreTrainedConfig, PreTrainedModel, initialization as init,
)
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

__all__ = ['TimmBackedConfig', 'TimmBackedPreTrainedModel', 'AutoModelForPersonReID', 'register_family']

TIMM_MODULE_PREFIX = 'timm_model'


class TimmKeyLayout(WeightRenaming):
    """Checkpoints hold timm's keys: add ``timm_model.`` when loading, strip it when saving.

    Unlike transformers' ``PrefixChange`` (dropped on save for models not loaded with ``from_pretrained``), this
    renaming applies to every model, so a saved file has one layout however the model was made.
    """
    __slots__ = ()

    def __init__(self, source_patterns: str = rf'^(?!{TIMM_MODULE_PREFIX}\.)(.+)',
                 target_patterns: str = rf'{TIMM_MODULE_PREFIX}.\1') -> None:
        super().__init__(source_patterns=source_patterns, target_patterns=target_patterns)

    def reverse_transform(self) -> WeightRenaming:
        strip = WeightRenaming(source_patterns=rf'^{TIMM_MODULE_PREFIX}\.(.+)', target_patterns=r'\1')
        strip.scope_prefix, strip.base_model_prefix = self.scope_prefix, self.base_model_prefix
        return strip


class TimmBackedConfig(PreTrainedConfig):
    """Base for configs whose model is a timm module; subclasses declare fields and implement ``timm_kwargs``."""

    def timm_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for the family's timm model class (everything but ``num_classes``)."""
        raise NotImplementedError


class TimmBackedPreTrainedModel(PreTrainedModel):
    """Shared plumbing: the timm module lives in ``self.timm_model``. Its transformer blocks are
    ``GradientCheckpointingLayer``s, so transformers' activation checkpointing works as for in-library models.
    Subclasses set ``config_class`` and ``timm_model_class``."""

    timm_model_class: ClassVar[Type[nn.Module]]
    base_model_prefix = TIMM_MODULE_PREFIX
    main_input_name = 'pixel_values'
    input_modalities = ('image',)
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False

    def _build_timm_model(self, num_classes: int) -> nn.Module:
        return self.timm_model_class(**self.config.timm_kwargs(), num_classes=num_classes)

    def get_input_embeddings(self) -> nn.Module:
        return self.timm_model.patch_embed

    def load_state_dict(self, state_dict, *args, **kwargs):
        """Accept timm-layout keys also outside ``from_pretrained`` (e.g. a trainer resuming from a checkpoint)."""
        prefix = TIMM_MODULE_PREFIX + '.'
        state_dict = {k if k.startswith(prefix) else prefix + k: v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """timm's ViT init (trunc-normal linears), through transformers' guarded init functions, so loading never
        overwrites weights that came from a checkpoint; derived buffers are rebuilt (e.g. after meta-device init)."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)
        if hasattr(module, 'init_non_persistent_buffers'):
            module.init_non_persistent_buffers()


class AutoModelForPersonReID(_BaseAutoModelClass):
    """Auto class for re-ID models with identity classifiers (``AutoModelForPersonReID.from_pretrained(...)``)."""
    _model_mapping = _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())


def register_family(
        config_class: Type[TimmBackedConfig],
        model_class: Type[TimmBackedPreTrainedModel],
        reid_class: Optional[Type[TimmBackedPreTrainedModel]] = None,
        image_processor_class=None,
) -> None:
    """Register a family with the Auto classes and map its checkpoints to timm's key layout."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    if reid_class is not None:
        AutoModelForPersonReID.register(config_class, reid_class, exist_ok=True)
    if image_processor_class is not None:
        AutoImageProcessor.register(
            config_class, image_processor_classes={'torchvision': image_processor_class}, exist_ok=True)
    register_checkpoint_conversion_mapping(
        config_class.model_type, [TimmKeyLayout()], overwrite=True)
