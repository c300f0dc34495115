# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""PyTorch π-VL CNN inference model for transformers: thin wrappers around the timm ``PiVLResNet`` (one
implementation). The training-only parts of π-VL (text tower, prompts, fusion head) never appear here."""
from dataclasses import dataclass

import torch
from timm.layers import AttentionPool2d
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from ..models.pivl import ReIDClassifierPair
from ..models.pivl_resnet import PiVLResNet
from .configuration_pivl_resnet import PiVLResNetConfig
from .timm_backed import ReIDOutput, TimmBackedPreTrainedModel

__all__ = ['PiVLResNetPreTrainedModel', 'PiVLResNetModel', 'PiVLResNetForReID', 'PiVLResNetModelOutput',
           'PiVLResNetReIDOutput']


@dataclass
class PiVLResNetModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, hidden_size, height, width)`):
        The last stage's map (16x8 at 256x128 with last stride 1).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size + projection_dim)`):
        The re-ID embedding: the map average-pooled and the attention pool's CLIP projection concatenated (3072-d for
        ResNet-50), before (or after, per `config.embedding`) the BNNecks.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The stem's map and every stage's, each `(batch_size, channels, height, width)` (transformers' ResNet layout).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PiVLResNetReIDOutput(ReIDOutput):
    r"""
    The family-independent `ReIDOutput`: the identity loss over both classifiers; logits `(batch_size, 2,
    num_labels)`; the embedding; features: the pooled map `(batch_size, hidden_size)` and its CLIP projection
    `(batch_size, projection_dim)` before the BNNecks (the triplet and image-to-text losses use these).
    """


class PiVLResNetPreTrainedModel(TimmBackedPreTrainedModel):
    config: PiVLResNetConfig
    config_class = PiVLResNetConfig
    timm_model_class = PiVLResNet
    _no_split_modules = ['BottleneckBlock']

    @torch.no_grad()
    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, torch.nn.Conv2d):  # timm's ResNet init
            init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(module, ReIDClassifierPair):
            init.normal_(module.cls.weight, std=0.001)
            init.normal_(module.proj.weight, std=0.001)
        elif isinstance(module, AttentionPool2d):
            init.trunc_normal_(module.pos_embed, std=module.in_features ** -0.5)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.timm_model.stem

    def _encode(self, pixel_values, output_hidden_states):
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        last, hidden_states = self.timm_model.forward_stages(
            pixel_values.to(self.device, self.dtype), output_hidden_states=bool(output_hidden_states))
        head = self.timm_model.forward_reid_head(last)
        return last, head, tuple(hidden_states) if hidden_states is not None else None


class PiVLResNetModel(PiVLResNetPreTrainedModel):
    """π-VL / CLIP-ReID CNN image encoder; `pooler_output` is the re-ID embedding."""

    # a re-ID checkpoint's identity classifiers are expected, unused weights for the encoder
    _keys_to_ignore_on_load_unexpected = [r'head\.(cls|proj)\.weight']

    def __init__(self, config: PiVLResNetConfig):
        super().__init__(config)
        self.timm_model = self._build_timm_model(num_classes=0)
        self.post_init()

    @can_return_tuple  # return_dict=False (or config.return_dict False): a tuple, transformers' way
    def forward(
            self,
            pixel_values: torch.Tensor,
            output_hidden_states: bool | None = None,
            **kwargs,
    ) -> PiVLResNetModelOutput | tuple:
        r"""
        Example:

        ```python
        >>> import torch, aaformer_hf
        >>> from transformers import AutoModel
        >>> model = AutoModel.from_config(aaformer_hf.PiVLResNetConfig(depths=(1, 1, 1, 1))).eval()
        >>> model(torch.randn(1, 3, 256, 128)).pooler_output.shape
        torch.Size([1, 3072])
        ```"""
        self._refuse_unknown_kwargs(kwargs)
        last, head, hidden_states = self._encode(pixel_values, output_hidden_states)
        return PiVLResNetModelOutput(last_hidden_state=last, pooler_output=self.timm_model.embed(head),
                                     hidden_states=hidden_states)


class PiVLResNetForReID(PiVLResNetPreTrainedModel):
    """The π-VL / CLIP-ReID CNN encoder with its BNNecks and two identity classifiers, for training."""

    def __init__(self, config: PiVLResNetConfig):
        super().__init__(config)
        self.timm_model = self._build_reid_timm_model()
        self.post_init()

    @can_return_tuple  # return_dict=False (or config.return_dict False): a tuple, transformers' way
    def forward(
            self,
            pixel_values: torch.Tensor,
            labels: torch.LongTensor | None = None,
            output_hidden_states: bool | None = None,
            **kwargs,
    ) -> PiVLResNetReIDOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Identity labels in `[0, num_labels)`; when given, `loss` is the identity loss over both classifiers.
        """
        self._refuse_unknown_kwargs(kwargs)
        _, head, hidden_states = self._encode(pixel_values, output_hidden_states)
        return PiVLResNetReIDOutput(
            loss=self._identity_loss(head.logits, labels), logits=head.logits, embeddings=self.timm_model.embed(head),
            features=tuple(head.features), hidden_states=hidden_states)
