# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""The transformers front door for model families implemented as timm modules.

A family (AAformer, π-VL) plugs in with a config subclass that maps its fields to the timm constructor
(``timm_kwargs``), a ``PreTrainedModel`` subclass naming its timm class, and one ``Family`` in ``families.py``. The
transformers models hold the timm module as ``timm_model``; a checkpoint conversion mapping strips that prefix when
saving and adds it when loading, so ``save_pretrained`` writes timm's key layout and one ``model.safetensors``
serves both libraries.
"""
import dataclasses
import difflib
import json
import warnings
from collections import OrderedDict
from typing import Any, ClassVar, Dict, Literal, Mapping, Optional, Tuple, Type

import torch
import torch.nn as nn
from safetensors import SafetensorError
from transformers import (
    AutoConfig, AutoImageProcessor, AutoModel, GenerationConfig, PreTrainedConfig, PreTrainedModel,
    initialization as init,
)
from transformers.utils import ModelOutput
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from ..layers.choices import check_choice
from ..reid.losses import identity_loss

__all__ = ['TimmBackedConfig', 'TimmBackedPreTrainedModel', 'AutoModelForPersonReID', 'Family', 'register_family',
           'ReIDOutput', 'FAMILIES', 'family_of_timm_model', 'wrap_timm_model']

TIMM_MODULE_PREFIX = 'timm_model'
# arguments transformers' generic code may pass any model: accepted by forward only when off (False / None)
_GENERIC_SWITCHES = frozenset({'output_attentions', 'use_cache'})
# keywords transformers' PreTrainedConfig takes besides its fields (handled or dropped by its __post_init__ or its
# serialisation), and generation parameters it drops from saved configs
_BASE_CONFIG_KEYWORDS = frozenset({
    'num_labels', 'torch_dtype', 'name_or_path', 'output_attentions', 'attn_implementation', 'experts_implementation',
    'per_layer_config', 'model_type', 'transformers_version', 'rope_scaling', 'rope_theta', 'rope_parameters',
    'use_return_dict',
    # generic attributes of transformers 4.x configs, still passed by its ConfigTester and found in Hub configs
    'add_cross_attention', 'bos_token_id', 'cross_attention_hidden_size', 'decoder_start_token_id', 'eos_token_id',
    'finetuning_task', 'is_decoder', 'pad_token_id', 'prefix', 'pruned_heads', 'sep_token_id', 'task_specific_params',
    'tie_encoder_decoder', 'tie_word_embeddings', 'tokenizer_class', 'torchscript', 'use_bfloat16',
}) | frozenset(GenerationConfig._get_default_generation_params())
# config.json keys timm reads (its Hub format). Written from the config's fields on every save, never read back: a
# checkpoint re-saved with another num_labels or width must not keep a stale copy that timm would then build from.
TIMM_HUB_KEYS = ('architecture', 'num_classes', 'num_features', 'model_args', 'pretrained_cfg')
# the config fields that say how pixels are made (one truth for timm's pretrained_cfg, preprocessor_config.json and
# the card), always written to config.json: a default that changes between releases must not change a saved model
PREPROCESSING_FIELDS = ('image_mean', 'image_std', 'interpolation')
Interpolation = Literal['bilinear', 'bicubic']


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family, declared once (``hf/families.py``) and read by hf/, the Hub and card code and the training
    example: its classes (the timm class is ``model_class.timm_model_class``), its paper (title and arXiv id from
    the timm registry's ``paper_name`` / ``paper_ids``, so they are written once), what its model card says, the
    ``--method`` values of ``examples/train.py`` that train it, and what its paper reports (percent, by dataset:
    (row label, metrics, table))."""
    config_class: Type['TimmBackedConfig']
    model_class: Type['TimmBackedPreTrainedModel']
    reid_class: Optional[Type['TimmBackedPreTrainedModel']]
    image_processor_class: Any
    name: str = ''
    authors: str = ''
    venue: str = ''
    summary: str = ''
    citation: str = ''
    base_model: Optional[str] = None  # the Hub checkpoint the paper's backbone starts from (planned cards)
    training_methods: Tuple[str, ...] = ()
    reported: Mapping[str, Tuple[Tuple[str, Dict[str, float], str], ...]] = dataclasses.field(default_factory=dict)
    planned_datasets: Tuple[str, ...] = ()  # the checkpoints model_cards/ describes before they exist

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def timm_class(self) -> Type[nn.Module]:
        return self.model_class.timm_model_class

    def _timm_cfg(self):
        from timm.models import get_pretrained_cfg

        return get_pretrained_cfg(self.config_class.timm_architecture)

    @property
    def arxiv(self) -> str:
        return self._timm_cfg().paper_ids.removeprefix('arXiv:')

    @property
    def paper(self) -> str:
        return f'{self.authors}, "{self._timm_cfg().paper_name}", {self.venue}'


# the registered families by model_type (filled by register_family), for code that starts from a timm module or a
# folder (the Hub tools) and must find the transformers classes without knowing every family
FAMILIES: Dict[str, Family] = {}


@dataclasses.dataclass
class ReIDOutput(ModelOutput):
    r"""
    What every family's `...ForReID` returns, under the same names, so training code need not know the family.

    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
        The identity loss: label-smoothed cross-entropy averaged over the identity classifiers.
    logits (`torch.FloatTensor` of shape `(batch_size, K, num_labels)`):
        The K identity classifiers' logits (AAformer: CLS and each [PART]; π-VL: CLS and its CLIP projection).
    embeddings (`torch.FloatTensor` of shape `(batch_size, config.embedding_size)`):
        The re-ID embedding (as the family's model's `pooler_output`).
    features (`tuple(torch.FloatTensor)`):
        The K features before the BNNecks, the k-th feeding `logits[:, k]`, each `(batch_size, width_k)`: what the
        metric (triplet) losses use.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        Embeddings plus the output of every layer.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    features: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


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
    """Base for configs whose model is a timm module; subclasses declare fields, implement ``timm_kwargs`` and name
    ``timm_architecture``, the family's timm entrypoint.

    The saved ``config.json`` serves both libraries: transformers reads ``model_type`` and the fields, timm reads
    ``architecture``, ``num_classes``, ``model_args`` and ``pretrained_cfg`` (``TIMM_HUB_KEYS``), which ``to_dict``
    derives from the fields each time; so ``timm.create_model('hf-hub:org/repo', pretrained=True)`` and
    ``AutoModel.from_pretrained('org/repo')`` build the same model from one repo.
    """

    timm_architecture = ''

    def __post_init__(self, **kwargs):
        for key in TIMM_HUB_KEYS:  # derived (see to_dict), so a loaded copy is dropped rather than kept stale
            kwargs.pop(key, None)
        self._resolve_preprocessing()
        super().__post_init__(**kwargs)

    def _resolve_preprocessing(self) -> None:
        """Fill unset preprocessing fields from the family's timm registry cfg (the backbone's statistics) and check
        them: every reader of the folder (timm, transformers' processor, the card) takes them from here."""
        from timm.models import get_pretrained_cfg

        registry = get_pretrained_cfg(self.timm_architecture)
        defaults = dict(image_mean=registry.mean, image_std=registry.std, interpolation=registry.interpolation)
        for name, default in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        name = type(self).__name__
        for field in ('image_mean', 'image_std'):
            values = getattr(self, field)
            if isinstance(values, (int, float)):  # one number for every channel
                values = (values,) * self.num_channels
            if len(values) != self.num_channels or not all(isinstance(v, (int, float)) for v in values):
                raise ValueError(f'{name}.{field} must hold one number per channel ({self.num_channels}), got '
                                 f'{values!r}')
            setattr(self, field, tuple(float(v) for v in values))
        if not all(s > 0 for s in self.image_std):
            raise ValueError(f'{name}.image_std must be > 0, got {self.image_std}')
        check_choice(f'{name}.interpolation', self.interpolation, Interpolation)

    def to_dict(self) -> Dict[str, Any]:
        return {**super().to_dict(), **self.timm_hub_keys()}

    def to_diff_dict(self) -> Dict[str, Any]:
        # transformers drops values equal to a default config's; timm needs all of its keys in every file, and the
        # preprocessing is written out so that a changed family default never changes a saved model's pixels
        preprocessing = {name: getattr(self, name) for name in PREPROCESSING_FIELDS}
        return {**super().to_diff_dict(), **preprocessing, **self.timm_hub_keys()}

    def timm_hub_keys(self) -> Dict[str, Any]:
        """The keys timm's ``hf-hub:`` / ``local-dir:`` loading reads, derived from the fields: the family's
        entrypoint with every constructor argument, the identity classifiers when the config was saved by a re-ID
        class, the registry's metadata and the config's own preprocessing (``preprocessing_cfg``)."""
        from timm.models import filter_pretrained_cfg, get_pretrained_cfg  # timm's own filter for exported configs

        # saved by a class with identity classifiers: timm builds them too; any other saved model is a feature extractor
        reid_classes = {f.reid_class.__name__ for f in FAMILIES.values() if f.reid_class is not None}
        num_classes = self.num_labels if set(self.architectures or ()) & reid_classes else 0
        registry = get_pretrained_cfg(self.timm_architecture).to_dict()
        pretrained_cfg = {k: v for k, v in filter_pretrained_cfg(registry, remove_source=True).items()
                          if k not in ('architecture', 'tag')}
        pretrained_cfg.update(
            num_classes=num_classes, **self.preprocessing_cfg(),
            notes=('trained by aaformer-hf; the model card says on what data',))
        return dict(architecture=self.timm_architecture, num_classes=num_classes,
                    model_args=json.loads(json.dumps(self.timm_kwargs())), pretrained_cfg=pretrained_cfg)

    def preprocessing_cfg(self) -> Dict[str, Any]:
        """How an image becomes the model's input, in timm's pretrained-cfg keys: resized to exactly ``image_size``
        (``crop_mode`` 'squash' with ``crop_pct`` 1: timm's eval transform stretches the crop to size, as re-ID test
        transforms do, instead of keeping the aspect ratio and cropping), scaled to [0, 1], normalised with
        ``image_mean`` / ``image_std``. The one truth every reader takes: timm's ``pretrained_cfg`` in config.json,
        ``preprocessor_config.json`` (``image_processor_class.from_config``) and the model card."""
        return dict(input_size=(self.num_channels, *self.image_size), mean=tuple(self.image_mean),
                    std=tuple(self.image_std), interpolation=self.interpolation, crop_pct=1.0, crop_mode='squash')

    @staticmethod
    def preprocessing_fields(model: nn.Module) -> Dict[str, Any]:
        """The preprocessing fields of a built timm model, from its ``pretrained_cfg`` (what it was created or loaded
        with: the registry's, an overlay's, or a saved folder's)."""
        cfg = model.pretrained_cfg
        return dict(image_mean=tuple(cfg['mean']), image_std=tuple(cfg['std']),
                    interpolation=cfg.get('interpolation') or 'bilinear')

    def timm_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for the family's timm model class (everything but ``num_classes``)."""
        raise NotImplementedError

    def trunk_kwargs(self) -> Dict[str, Any]:
        """The timm constructor's ViT trunk arguments from the fields every family declares (``image_size``,
        ``patch_size``, ``num_channels``, ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
        ``intermediate_size``)."""
        return dict(img_size=tuple(self.image_size), patch_size=self.patch_size, in_chans=self.num_channels,
                    embed_dim=self.hidden_size, depth=self.num_hidden_layers, num_heads=self.num_attention_heads,
                    mlp_ratio=self.intermediate_size / self.hidden_size)

    @staticmethod
    def trunk_fields(model: nn.Module) -> Dict[str, Any]:
        """Those trunk fields read back from a built timm ViT (the inverse of ``trunk_kwargs``)."""
        block = model.blocks[0]
        return dict(image_size=tuple(model.patch_embed.img_size), patch_size=model.patch_embed.patch_size[0],
                    num_channels=model.patch_embed.proj.in_channels, hidden_size=model.embed_dim,
                    num_hidden_layers=len(model.blocks), num_attention_heads=block.attn.num_heads,
                    intermediate_size=block.mlp.fc1.out_features)

    def regularisation_kwargs(self) -> Dict[str, float]:
        """The timm constructor's dropout / stochastic-depth arguments from the fields every family declares
        (``hidden_dropout_prob``, ``attention_probs_dropout_prob``, ``drop_path_rate``, ``classifier_dropout``)."""
        return dict(drop_rate=self.classifier_dropout, proj_drop_rate=self.hidden_dropout_prob,
                    attn_drop_rate=self.attention_probs_dropout_prob, drop_path_rate=self.drop_path_rate)

    @staticmethod
    def regularisation_fields(model: nn.Module) -> Dict[str, float]:
        """Those fields read back from a built timm model (its blocks' ``attn`` and ``drop_path1``, its
        ``head_drop``; the drop-path rate is the last block's, the top of timm's linear ramp)."""
        attn = model.blocks[0].attn
        return dict(hidden_dropout_prob=attn.proj_drop.p, attention_probs_dropout_prob=attn.attn_drop.p,
                    drop_path_rate=getattr(model.blocks[-1].drop_path1, 'drop_prob', 0.0),
                    classifier_dropout=model.head_drop.p)

    def check_known_keys(self, kwargs: Dict[str, Any]) -> None:
        """Warn about keyword arguments that are neither a field nor one transformers' base config understands:
        ``PreTrainedConfig`` stores them as plain attributes the model never reads, so a misspelt field
        (``num_layers=4``) would otherwise pass unnoticed. A warning, not an error: transformers' contract (and its
        own test suite) is that a config carries extra attributes through save and load."""
        known = _BASE_CONFIG_KEYWORDS.union(TIMM_HUB_KEYS)
        unknown = sorted(k for k in kwargs if k not in known and not k.startswith('_'))
        if unknown:
            fields = [f.name for f in dataclasses.fields(self) if not f.name.startswith('_')]
            guesses = {k: difflib.get_close_matches(k, fields, n=1, cutoff=0.6) for k in unknown}
            hints = ''.join(f' ({guesses[k][0]}?)' for k in unknown if guesses[k])
            warnings.warn(f'{type(self).__name__}: unknown key(s) {unknown}{hints} kept as plain attributes; the '
                          f'model does not use them. Fields: {", ".join(sorted(fields))}', UserWarning, stacklevel=4)


class TimmBackedPreTrainedModel(PreTrainedModel):
    """Shared plumbing: the timm module lives in ``self.timm_model``. transformers' activation checkpointing
    switches the timm module's own (``set_grad_checkpointing``), as transformers' ``TimmWrapperModel`` does, so the
    timm models need nothing of transformers. Subclasses set ``config_class`` and ``timm_model_class``."""

    timm_model_class: ClassVar[Type[nn.Module]]
    base_model_prefix = TIMM_MODULE_PREFIX
    main_input_name = 'pixel_values'
    input_modalities = ('image',)
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False

    # weights a checkpoint may lack (timm key prefixes): the identity classifiers, which belong to the training
    # identities (a feature-extractor checkpoint, a new num_labels); anything else missing is another architecture
    optional_weight_prefixes: ClassVar[Tuple[str, ...]] = ('head.',)
    # refuse checkpoints lacking encoder weights (transformers would initialise them afresh and only report it)
    refuse_missing_encoder_weights: ClassVar[bool] = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' ``from_pretrained``, stricter where a silent fallback would change the embedding: encoder
        weights missing from the checkpoint are an error naming them (missing identity classifiers stay a report),
        and an unreadable safetensors file is named."""
        want_info = kwargs.pop('output_loading_info', False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        except SafetensorError as error:
            raise OSError(f'{pretrained_model_name_or_path}: unreadable safetensors weights ({error}); truncated or '
                          'not a safetensors file?') from error
        prefix = TIMM_MODULE_PREFIX + '.'
        missing = sorted(k for k in info['missing_keys']
                         if not k.removeprefix(prefix).startswith(cls.optional_weight_prefixes))
        if missing and cls.refuse_missing_encoder_weights:
            listed = ', '.join(k.removeprefix(prefix) for k in missing[:6]) + (', ...' if len(missing) > 6 else '')
            raise ValueError(f'{pretrained_model_name_or_path}: the checkpoint lacks {len(missing)} encoder weights '
                             f'this {type(model.config).__name__} needs ({listed}); it was saved for another '
                             'architecture (depth, width, [PART] groups?)')
        return (model, info) if want_info else model

    def _build_timm_model(self, num_classes: int) -> nn.Module:
        return self.timm_model_class(**self.config.timm_kwargs(), num_classes=num_classes)

    def _build_reid_timm_model(self) -> nn.Module:
        """The timm model with its identity classifiers, for a family's ``...ForReID`` class."""
        if self.config.num_labels < 1:
            raise ValueError(f'{type(self).__name__} needs config.num_labels >= 1 (the number of training identities)')
        return self._build_timm_model(num_classes=self.config.num_labels)

    def _identity_loss(self, logits: torch.Tensor, labels: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The models' own loss when ``labels`` are given (transformers' convention): Eq. 6 over the classifiers."""
        if labels is None:
            return None
        return identity_loss(logits, labels.to(logits.device), self.config.label_smoothing)

    def get_input_embeddings(self) -> nn.Module:
        return self.timm_model.patch_embed

    def _refuse_unknown_kwargs(self, kwargs: Dict[str, Any]) -> None:
        """``forward``'s ``**kwargs``: a misspelt or unsupported argument (``output_assignment=True``) is an error
        naming it, not silently dropped. transformers' generic switches pass when off (``output_attentions=False``
        for a family without attention probabilities, ``use_cache=None``)."""
        unknown = sorted(k for k, v in kwargs.items() if not (k in _GENERIC_SWITCHES and not v))
        if unknown:
            raise TypeError(f'{type(self).__name__}.forward() got unexpected keyword argument(s) {", ".join(unknown)}'
                            f' (it takes {", ".join(self._forward_arguments())})')

    def _forward_arguments(self):
        import inspect
        return [name for name, p in inspect.signature(self.forward).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)] + ['return_dict']  # can_return_tuple's

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None,
                                    every_n_layers: int = 1) -> None:
        """transformers' ``activation_checkpointing_enable`` / ``_disable`` land here: timm checkpoints every block
        with its own (non-reentrant) ``checkpoint``, so ``activation_checkpointing_kwargs`` and ``offload`` are not
        applied, and checkpointing only some layers is refused rather than ignored."""
        if enable and every_n_layers != 1:
            raise ValueError(f'{type(self).__name__}: every_n_layers={every_n_layers} is not supported; timm '
                             'checkpoints every block')
        self.timm_model.set_grad_checkpointing(enable)

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the timm module checkpoints its blocks (what transformers' ``is_activation_checkpointing`` reads
        from a module's ``gradient_checkpointing``)."""
        return bool(getattr(self.timm_model, 'grad_checkpointing', False))

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


def register_family(family: Family) -> Family:
    """Register a family (``hf/families.py``) with the Auto classes and map its checkpoints to timm's key layout."""
    config_class = family.config_class
    FAMILIES[config_class.model_type] = family
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, family.model_class, exist_ok=True)
    if family.reid_class is not None:
        AutoModelForPersonReID.register(config_class, family.reid_class, exist_ok=True)
    if family.image_processor_class is not None:
        AutoImageProcessor.register(
            config_class, image_processor_classes={'torchvision': family.image_processor_class}, exist_ok=True)
    register_checkpoint_conversion_mapping(config_class.model_type, [TimmKeyLayout()], overwrite=True)
    return family


def family_of_timm_model(model: nn.Module) -> Family:
    """The registered family whose timm class ``model`` is (e.g. a ``timm.create_model('aaformer_base')``)."""
    for family in FAMILIES.values():
        if type(model) is family.model_class.timm_model_class:
            return family
    raise TypeError(f'{type(model).__name__} is not a model of a registered family '
                    f'({", ".join(f.model_class.timm_model_class.__name__ for f in FAMILIES.values())})')


def wrap_timm_model(model: nn.Module, **fields) -> TimmBackedPreTrainedModel:
    """A family's timm module as its transformers model, with the same weights: the re-ID class when the module has
    identity classifiers (``num_classes`` > 0, which becomes ``num_labels``), else the feature extractor. ``fields``
    add or override config fields (e.g. ``id2label``)."""
    family = family_of_timm_model(model)
    num_classes = getattr(model, 'num_classes', 0)
    if num_classes:
        fields.setdefault('num_labels', num_classes)
    wrapped = (family.reid_class if num_classes else family.model_class)(
        family.config_class.from_timm_model(model, **fields))
    wrapped.load_state_dict(model.state_dict())
    return wrapped
