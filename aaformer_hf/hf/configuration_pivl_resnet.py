# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""π-VL's CNN (CLIP ResNet) inference model configuration."""
from typing import Any, Dict

from huggingface_hub.dataclasses import strict

from .timm_backed import TimmBackedConfig

__all__ = ['PiVLResNetConfig']


@strict
class PiVLResNetConfig(TimmBackedConfig):
    r"""
    Configuration of π-VL's CNN inference model (Lin et al., "Exploring Part-Informed Visual-Language Learning for
    Person Re-Identification", Table 2's CNN rows), which is CLIP-ReID's CNN model: OpenAI CLIP's ResNet image tower
    with the last stride 1, two BNNecks and two identity classifiers. Defaults give CLIP ResNet-50 at 256x128.

    Args:
        image_size (`tuple[int, int]`, defaults to `(256, 128)`): Input height and width; sets the attention pool's
            position grid (16x8 at 256x128 with last stride 1).
        num_channels (`int`, defaults to 3): Image channels.
        stem_sizes (`tuple[int, int, int]`, defaults to `(32, 32, 64)`): Channels of the three stem convolutions.
        hidden_sizes (`tuple[int, ...]`, defaults to `(256, 512, 1024, 2048)`): Output channels of the four stages.
        depths (`tuple[int, ...]`, defaults to `(3, 4, 6, 3)`): Bottleneck blocks per stage.
        projection_dim (`int`, defaults to 1024): Width of the attention pool's output, CLIP's image-text space.
        last_stride (`int`, defaults to 1): Stride of the last stage; 1 as CLIP-ReID and π-VL, 2 as CLIP.
        embedding (`str`, defaults to `"before_bnneck"`): Test feature taken before (CLIP-ReID's configs) or after
            (`"after_bnneck"`) the BNNecks. Not stated by the π-VL paper.
        drop_path_rate (`float`, defaults to 0.0): Stochastic depth rate.
        classifier_dropout (`float`, defaults to 0.0): Dropout before the identity classifiers.
        label_smoothing (`float`, defaults to 0.1): Label smoothing of the identity loss.
        initializer_range (`float`, defaults to 0.02): Std of the truncated normal init of linear layers.
        image_mean (`float` or `tuple[float, ...]`, *optional*): Mean the pixels are normalised with; `None` takes
            the family's statistics from its timm pretrained cfg: ImageNet's, as CLIP-ReID's CNN config (which π-VL
            keeps), not OpenAI CLIP's.
        image_std (`float` or `tuple[float, ...]`, *optional*): Std, likewise.
        interpolation (`str`, *optional*): `"bilinear"` or `"bicubic"` resizing to `image_size`; `None` as the
            timm pretrained cfg (bilinear, CLIP-ReID's).
    """

    model_type = 'pivl_resnet'
    timm_architecture = 'pivl_resnet50'  # timm's config.json names it; model_args carry every argument

    image_size: list[int] | tuple[int, int] = (256, 128)
    num_channels: int = 3
    stem_sizes: list[int] | tuple[int, ...] = (32, 32, 64)
    hidden_sizes: list[int] | tuple[int, ...] = (256, 512, 1024, 2048)
    depths: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    projection_dim: int = 1024
    last_stride: int = 1
    embedding: str = 'before_bnneck'
    drop_path_rate: float | int = 0.0
    classifier_dropout: float | int = 0.0
    label_smoothing: float | int = 0.1
    initializer_range: float = 0.02
    image_mean: float | int | list[float | int] | tuple[float | int, ...] | None = None
    image_std: float | int | list[float | int] | tuple[float | int, ...] | None = None
    interpolation: str | None = None

    def __post_init__(self, **kwargs):
        name = type(self).__name__
        if self.embedding not in ('before_bnneck', 'after_bnneck'):
            raise ValueError(f"{name}.embedding must be 'before_bnneck' or 'after_bnneck', got {self.embedding!r}")
        self.image_size, self.stem_sizes = tuple(self.image_size), tuple(self.stem_sizes)
        self.hidden_sizes, self.depths = tuple(self.hidden_sizes), tuple(self.depths)
        if len(self.hidden_sizes) != 4 or len(self.depths) != 4 or len(self.stem_sizes) != 3:
            raise ValueError(f'{name}: hidden_sizes and depths need 4 stages, stem_sizes 3 convolutions; got '
                             f'{self.hidden_sizes}, {self.depths}, {self.stem_sizes}')
        if self.hidden_sizes[-1] % 64:
            raise ValueError(f'{name}.hidden_sizes[-1] ({self.hidden_sizes[-1]}) must be a multiple of 64: the '
                             'attention pool has heads of 64 channels, as CLIP\'s')
        if self.last_stride not in (1, 2):
            raise ValueError(f'{name}.last_stride must be 1 or 2, got {self.last_stride}')
        self.check_known_keys(kwargs)
        super().__post_init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Width of the last stage's map (the pooled feature before the projection)."""
        return self.hidden_sizes[-1]

    @property
    def num_hidden_layers(self) -> int:
        """Stages (``hidden_states`` holds the stem's map and one per stage)."""
        return len(self.depths)

    @property
    def embedding_size(self) -> int:
        """Width of the re-ID embedding (``pooler_output``): the pooled map and its CLIP projection concatenated."""
        return self.hidden_size + self.projection_dim

    @classmethod
    def from_timm_model(cls, model, **kwargs) -> 'PiVLResNetConfig':
        """The config describing an existing timm ``PiVLResNet``; ``kwargs`` add or override fields."""
        fields = dict(
            image_size=tuple(model.img_size), num_channels=model.in_chans, stem_sizes=model.stem_widths,
            hidden_sizes=model.widths, depths=model.depths, projection_dim=model.proj_dim,
            last_stride=model.last_stride, embedding=model.embedding,
            drop_path_rate=model.drop_path_rate, classifier_dropout=model.head_drop.p,
            **cls.preprocessing_fields(model))
        return cls(**{**fields, **kwargs})

    def timm_kwargs(self) -> Dict[str, Any]:
        return dict(
            img_size=tuple(self.image_size), in_chans=self.num_channels, depths=tuple(self.depths),
            widths=tuple(self.hidden_sizes), stem_widths=tuple(self.stem_sizes), proj_dim=self.projection_dim,
            last_stride=self.last_stride, embedding=self.embedding, drop_rate=self.classifier_dropout,
            drop_path_rate=self.drop_path_rate,
        )
