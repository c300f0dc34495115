# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""π-VL (and CLIP-ReID) inference model configuration."""
from typing import Any, Dict

from huggingface_hub.dataclasses import strict

from .timm_backed import TimmBackedConfig

__all__ = ['PiVLConfig']


@strict
class PiVLConfig(TimmBackedConfig):
    r"""
    Configuration of the π-VL inference model (Lin et al., "Exploring Part-Informed Visual-Language Learning for
    Person Re-Identification"), which is CLIP-ReID's (Li et al., AAAI 2023): a CLIP ViT image tower with two BNNecks
    and two identity classifiers. Defaults give CLIP ViT-B/16 at 256x128 (OpenAI's, QuickGELU).

    Args:
        image_size (`tuple[int, int]`, defaults to `(256, 128)`): Input height and width.
        patch_size (`int`, defaults to 16): Patch size.
        num_channels (`int`, defaults to 3): Image channels.
        hidden_size (`int`, defaults to 768): Token width D.
        num_hidden_layers (`int`, defaults to 12): Transformer layers.
        num_attention_heads (`int`, defaults to 12): Attention heads.
        intermediate_size (`int`, defaults to 3072): MLP hidden width.
        projection_dim (`int`, defaults to 512): Width of CLIP's image projection (the text features' space).
        hidden_act (`str`, defaults to `"quick_gelu"`): MLP activation (`"quick_gelu"` for OpenAI's CLIP,
            `"gelu"` for others).
        embedding (`str`, defaults to `"before_bnneck"`): Test feature taken before (CLIP-ReID's configs) or after
            (`"after_bnneck"`) the BNNecks. Not stated by the π-VL paper.
        patch_stride (`int`, *optional*): Stride of the patch embedding; `None` = `patch_size`. 12 is CLIP-ReID's
            overlapping-patch option ("OLP", a 21x10 grid at 256x128). Off by default.
        num_cameras (`int`, defaults to 0): > 0 adds CLIP-ReID's camera embedding (SIE) to the CLS token; every
            forward then needs `camera_ids`. 0 = none (default), so no camera id is needed at inference.
        camera_embed_scale (`float`, defaults to 1.0): Factor on the camera embedding (CLIP-ReID's `SIE_COE`).
        hidden_dropout_prob (`float`, defaults to 0.0): Dropout after attention projections and in MLPs.
        attention_probs_dropout_prob (`float`, defaults to 0.0): Dropout on attention probabilities.
        drop_path_rate (`float`, defaults to 0.0): Stochastic depth rate.
        classifier_dropout (`float`, defaults to 0.0): Dropout before the identity classifiers.
        label_smoothing (`float`, defaults to 0.1): Label smoothing of the identity loss.
        initializer_range (`float`, defaults to 0.02): Std of the truncated normal init of linear layers.
        image_mean (`float` or `tuple[float, ...]`, *optional*): Mean the pixels are normalised with (one number
            for every channel, or one per channel, as transformers' image processors take it); `None` takes
            the family's statistics from its timm pretrained cfg: 0.5, CLIP-ReID's (which π-VL keeps), not
            OpenAI CLIP's.
        image_std (`float` or `tuple[float, ...]`, *optional*): Std, likewise (0.5).
        interpolation (`str`, *optional*): `"bilinear"` or `"bicubic"` resizing to `image_size`; `None` as the
            timm pretrained cfg (bilinear, CLIP-ReID's). These three fields are the model's one preprocessing truth: timm's
            `pretrained_cfg` in config.json, `preprocessor_config.json` and the model card are written from them.
    """

    model_type = 'pivl'
    timm_architecture = 'pivl_vit_base_patch16'  # timm's config.json names it; model_args carry every argument

    image_size: list[int] | tuple[int, int] = (256, 128)
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    projection_dim: int = 512
    hidden_act: str = 'quick_gelu'
    embedding: str = 'before_bnneck'
    patch_stride: int | None = None
    num_cameras: int = 0
    camera_embed_scale: float | int = 1.0
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
        if self.embedding not in ('before_bnneck', 'after_bnneck'):
            raise ValueError(f"PiVLConfig.embedding must be 'before_bnneck' or 'after_bnneck', got {self.embedding!r}")
        if self.hidden_act not in ('quick_gelu', 'gelu'):
            raise ValueError(f"PiVLConfig.hidden_act must be 'quick_gelu' or 'gelu', got {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f'PiVLConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads '
                             f'({self.num_attention_heads})')
        if self.patch_stride is not None and not 0 < self.patch_stride <= self.patch_size:
            raise ValueError(f'PiVLConfig.patch_stride must lie in (0, patch_size={self.patch_size}], '
                             f'got {self.patch_stride}')
        if self.num_cameras < 0:
            raise ValueError(f'PiVLConfig.num_cameras must be >= 0, got {self.num_cameras}')
        self.image_size = tuple(self.image_size)
        self.check_known_keys(kwargs)
        super().__post_init__(**kwargs)

    @property
    def embedding_size(self) -> int:
        """Width of the re-ID embedding (``pooler_output``): the CLS token and its CLIP projection concatenated."""
        return self.hidden_size + self.projection_dim

    @classmethod
    def from_timm_model(cls, model, **kwargs) -> 'PiVLConfig':
        """The config describing an existing timm ``PiVLViT``; ``kwargs`` add or override fields."""
        block = model.blocks[0]
        fields = dict(
            **cls.trunk_fields(model), projection_dim=model.proj_dim,
            hidden_act='quick_gelu' if type(block.mlp.act).__name__ == 'QuickGELU' else 'gelu',
            embedding=model.embedding,
            patch_stride=None if model.patch_stride == model.patch_embed.patch_size[0] else model.patch_stride,
            num_cameras=model.num_cameras, camera_embed_scale=model.camera_embed_scale,
            **cls.regularisation_fields(model),
            **cls.preprocessing_fields(model))
        return cls(**{**fields, **kwargs})

    def timm_kwargs(self) -> Dict[str, Any]:
        return dict(
            **self.trunk_kwargs(),
            proj_dim=self.projection_dim,
            act_layer=self.hidden_act,
            embedding=self.embedding,
            patch_stride=self.patch_stride,
            num_cameras=self.num_cameras,
            camera_embed_scale=self.camera_embed_scale,
            **self.regularisation_kwargs(),
        )
