# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""AAformer model configuration."""
import dataclasses
from typing import Any, Dict

from huggingface_hub.dataclasses import strict

from ..layers.auto_alignment import AssignmentSettings
from ..layers.choices import check_choice
from ..models.aaformer import EmbeddingSource, EmbeddingTokens, PartInit
from .timm_backed import TimmBackedConfig

__all__ = ['AAformerConfig']

# the model's fields that name one of a few settings, and the Literal types (the model's) that list them; the
# assignment settings check themselves (AssignmentSettings)
_CHOICES = {'part_init': PartInit, 'embedding': EmbeddingSource, 'embedding_tokens': EmbeddingTokens}


@strict
class AAformerConfig(TimmBackedConfig):
    r"""
    Configuration of an AAformer (Zhu et al., "AAformer: Auto-Aligned Transformer for Person Re-Identification",
    TNNLS 2023). Defaults give the paper's ViT-B/16 model at 256x128 with [PART] groups {2, 3}.

    Args:
        image_size (`tuple[int, int]`, defaults to `(256, 128)`): Input height and width.
        patch_size (`int`, defaults to 16): Patch size.
        num_channels (`int`, defaults to 3): Image channels.
        hidden_size (`int`, defaults to 768): Token width D.
        num_hidden_layers (`int`, defaults to 12): Transformer layers.
        num_attention_heads (`int`, defaults to 12): Attention heads (the part assignment runs in each).
        intermediate_size (`int`, defaults to 3072): MLP hidden width.
        qkv_bias (`bool`, defaults to `True`): Bias on the qkv projection.
        part_groups (`tuple[int, ...]`, defaults to `(2, 3)`): [PART]s per granularity group; each group partitions
            all patches independently. `()` gives the ViT-baseline.
        assignment, assignment_score, sinkhorn_epsilon, sinkhorn_iters, part_self_key, patches_see_parts,
        fp32_assignment_inputs, shared_assignment: How patches are assigned to the [PART]s, with the defaults of
            `aaformer_hf.layers.AssignmentSettings`, which describes each (`assignment`: `"sinkhorn"`, the paper's,
            or the Table IV/V baselines `"nearest"`, `"stripes"`, `"given"` - masks passed as `part_masks` - and
            `"global"`).
        part_init (`str`, defaults to `"trunc_normal"`): `"trunc_normal"` (std 0.02) or `"cls"` (pretrained CLS +
            noise; beyond the paper). The paper says "randomly and independently initialized"; the distribution and
            scale are not stated.
        part_init_std (`float`, defaults to 0.02): Standard deviation of the `"trunc_normal"` [PART] init. Not
            stated by the paper.
        part_pos_embed (`bool`, defaults to `False`): Learnable position embedding per [PART]. Not stated by the
            paper.
        embedding (`str`, defaults to `"after_bnneck"`): Re-ID embedding taken after or before the BNNeck
            (`"before_bnneck"`). Not stated by the paper.
        embedding_tokens (`str`, defaults to `"all"`): Tokens of the re-ID embedding: `"all"` (the paper: CLS and
            [PART]s concatenated) or `"cls"` (beyond the paper, off by default: CLS alone; training unchanged).
        hidden_dropout_prob (`float`, defaults to 0.0): Dropout after attention projections and in MLPs.
        attention_probs_dropout_prob (`float`, defaults to 0.0): Dropout on attention probabilities.
        drop_path_rate (`float`, defaults to 0.0): Stochastic depth rate.
        classifier_dropout (`float`, defaults to 0.0): Dropout before the identity classifiers.
        label_smoothing (`float`, defaults to 0.1): Label smoothing of the identity loss (Eq. 6).
        initializer_range (`float`, defaults to 0.02): Std of the truncated normal init of linear layers.
        image_mean (`float` or `tuple[float, ...]`, *optional*): Mean the pixels are normalised with (one number
            for every channel, or one per channel, as transformers' image processors take it); `None` takes
            the family's backbone statistics from its timm pretrained cfg (0.5 for the ViT backbones).
        image_std (`float` or `tuple[float, ...]`, *optional*): Std, likewise (0.5).
        interpolation (`str`, *optional*): `"bilinear"` or `"bicubic"` resizing to `image_size`; `None` as the
            timm pretrained cfg (bilinear). These three fields are the model's one preprocessing truth: timm's
            `pretrained_cfg` in config.json, `preprocessor_config.json` and the model card are written from them.

    Example:

    ```python
    >>> import aaformer_hf
    >>> from transformers import AutoModel
    >>> config = aaformer_hf.AAformerConfig(num_hidden_layers=2)
    >>> model = AutoModel.from_config(config)
    ```"""

    model_type = 'aaformer'
    timm_architecture = 'aaformer_base'  # timm's config.json names it; model_args carry every argument

    image_size: list[int] | tuple[int, int] = (256, 128)
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    qkv_bias: bool = True
    part_groups: list[int] | tuple[int, ...] = (2, 3)
    assignment: str = 'sinkhorn'
    assignment_score: str = 'cosine'
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 3
    part_self_key: str = 'if_empty'
    patches_see_parts: bool = True
    fp32_assignment_inputs: bool = False
    shared_assignment: bool = False
    part_init: str = 'trunc_normal'
    part_init_std: float = 0.02
    part_pos_embed: bool = False
    embedding: str = 'after_bnneck'
    embedding_tokens: str = 'all'
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    classifier_dropout: float | int = 0.0
    label_smoothing: float | int = 0.1
    initializer_range: float = 0.02
    image_mean: float | int | list[float | int] | tuple[float | int, ...] | None = None
    image_std: float | int | list[float | int] | tuple[float | int, ...] | None = None
    interpolation: str | None = None

    def __post_init__(self, **kwargs):
        for field, choices in _CHOICES.items():
            check_choice(f'AAformerConfig.{field}', getattr(self, field), choices)
        try:
            self.assignment_settings()
        except ValueError as error:
            raise ValueError(f'AAformerConfig.{error}') from None
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f'AAformerConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads '
                f'({self.num_attention_heads})')
        self.image_size = tuple(self.image_size)
        self.part_groups = tuple(self.part_groups)
        patches = (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)
        if any(not 1 <= g <= patches for g in self.part_groups):
            raise ValueError(f'AAformerConfig.part_groups {self.part_groups}: every group needs between 1 and '
                             f'{patches} parts (patches at {self.image_size} / {self.patch_size}); () has no [PART]s')
        self.check_known_keys(kwargs)
        super().__post_init__(**kwargs)

    def assignment_settings(self) -> AssignmentSettings:
        return AssignmentSettings(**{name: getattr(self, name) for name in AssignmentSettings.names()})

    @property
    def num_parts(self) -> int:
        return sum(self.part_groups)

    @property
    def embedding_size(self) -> int:
        """Width of the re-ID embedding (``pooler_output``): CLS and every [PART], (1 + P)·D; D for CLS alone."""
        return (1 + self.num_parts if self.embedding_tokens == 'all' else 1) * self.hidden_size

    @classmethod
    def from_timm_model(cls, model, **kwargs) -> 'AAformerConfig':
        """The config describing an existing timm ``AAformer`` (e.g. one made by ``timm.create_model`` and trained),
        so it can be wrapped by the transformers classes and saved with ``save_pretrained``. ``kwargs`` add or
        override fields (e.g. ``num_labels``, ``id2label``)."""
        attn = model.blocks[0].attn
        fields = dict(
            **cls.trunk_fields(model), qkv_bias=attn.qkv.bias is not None, part_groups=model.part_groups,
            **dataclasses.asdict(attn.settings),
            part_init=model.part_init, part_init_std=model.part_init_std,
            part_pos_embed=model.part_pos_embed is not None, embedding=model.embedding,
            embedding_tokens=model.embedding_tokens, **cls.regularisation_fields(model),
            **cls.preprocessing_fields(model))
        if model.patch_embed.patch_size[0] != model.patch_embed.patch_size[1] or model.pos_drop.p:
            raise ValueError('AAformerConfig describes square patches and no position dropout')
        return cls(**{**fields, **kwargs})

    def timm_kwargs(self) -> Dict[str, Any]:
        return dict(
            **self.trunk_kwargs(),
            qkv_bias=self.qkv_bias,
            part_groups=tuple(self.part_groups),
            **dataclasses.asdict(self.assignment_settings()),
            part_init=self.part_init,
            part_init_std=self.part_init_std,
            part_pos_embed=self.part_pos_embed,
            embedding=self.embedding,
            embedding_tokens=self.embedding_tokens,
            **self.regularisation_kwargs(),
        )
