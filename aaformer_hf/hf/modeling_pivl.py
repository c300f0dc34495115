# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""PyTorch π-VL inference model for transformers: thin wrappers around the timm ``PiVLViT`` (one implementation).
The training-only parts of π-VL (text tower, prompts, fusion head) never appear here."""
from dataclasses import dataclass

import torch
from timm.models.vision_transformer import VisionTransformer
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from ..models.pivl import PiVLViT, ReIDClassifierPair
from .configuration_pivl import PiVLConfig
from .timm_backed import ReIDOutput, TimmBackedPreTrainedModel

__all__ = ['PiVLPreTrainedModel', 'PiVLModel', 'PiVLForReID', 'PiVLModelOutput', 'PiVLReIDOutput']


@dataclass
class PiVLModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + N, hidden_size)`):
        CLS and patch tokens after the final norm.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size + projection_dim)`):
        The re-ID embedding: the CLS feature and its CLIP projection concatenated (1280-d for ViT-B/16), before (or
        after, per `config.embedding`) the BNNecks.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        Embeddings plus the output of every layer, each `(batch_size, 1 + N, hidden_size)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PiVLReIDOutput(ReIDOutput):
    r"""
    The family-independent `ReIDOutput`: the identity loss over both classifiers; logits `(batch_size, 2,
    num_labels)`; the embedding; features: the CLS feature `(batch_size, hidden_size)` and its CLIP projection
    `(batch_size, projection_dim)` before the BNNecks (the triplet and image-to-text losses use these).
    """


class PiVLPreTrainedModel(TimmBackedPreTrainedModel):
    config: PiVLConfig
    config_class = PiVLConfig
    timm_model_class = PiVLViT
    _no_split_modules = ['Block']

    @torch.no_grad()
    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, VisionTransformer):
            init.trunc_normal_(module.pos_embed, std=0.02)
            init.normal_(module.cls_token, std=1e-6)
            if getattr(module, 'camera_embed', None) is not None:
                init.trunc_normal_(module.camera_embed, std=0.02)
        elif isinstance(module, ReIDClassifierPair):
            init.normal_(module.cls.weight, std=0.001)
            init.normal_(module.proj.weight, std=0.001)

    def _encode(self, pixel_values, output_hidden_states, camera_ids):
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        tokens, hidden_states = self.timm_model.forward_tokens(
            pixel_values.to(self.device, self.dtype), output_hidden_states=bool(output_hidden_states),
            camera_ids=None if camera_ids is None else camera_ids.to(self.device))
        head = self.timm_model.forward_reid_head(tokens)
        return tokens, head, tuple(hidden_states) if hidden_states is not None else None


class PiVLModel(PiVLPreTrainedModel):
    """π-VL / CLIP-ReID image encoder; `pooler_output` is the re-ID embedding."""

    # a re-ID checkpoint's identity classifiers are expected, unused weights for the encoder
    _keys_to_ignore_on_load_unexpected = [r'head\.(cls|proj)\.weight']

    def __init__(self, config: PiVLConfig):
        super().__init__(config)
        self.timm_model = self._build_timm_model(num_classes=0)
        self.post_init()

    @can_return_tuple  # return_dict=False (or config.return_dict False): a tuple, transformers' way
    def forward(
            self,
            pixel_values: torch.Tensor,
            camera_ids: torch.LongTensor | None = None,
            output_hidden_states: bool | None = None,
            **kwargs,
    ) -> PiVLModelOutput | tuple:
        r"""
        camera_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            0-based camera of each image; needed only by a model with a camera embedding (`config.num_cameras > 0`).

        Example:

        ```python
        >>> import torch, aaformer_hf
        >>> from transformers import AutoModel
        >>> model = AutoModel.from_config(aaformer_hf.PiVLConfig(num_hidden_layers=2)).eval()
        >>> model(torch.randn(1, 3, 256, 128)).pooler_output.shape
        torch.Size([1, 1280])
        ```"""
        self._refuse_unknown_kwargs(kwargs)
        tokens, head, hidden_states = self._encode(pixel_values, output_hidden_states, camera_ids)
        output = PiVLModelOutput(last_hidden_state=tokens, pooler_output=self.timm_model.embed(head),
                                 hidden_states=hidden_states)
        return output


class PiVLForReID(PiVLPreTrainedModel):
    """The π-VL / CLIP-ReID encoder with its BNNecks and two identity classifiers, for training."""

    def __init__(self, config: PiVLConfig):
        super().__init__(config)
        self.timm_model = self._build_reid_timm_model()
        self.post_init()

    @can_return_tuple  # return_dict=False (or config.return_dict False): a tuple, transformers' way
    def forward(
            self,
            pixel_values: torch.Tensor,
            labels: torch.LongTensor | None = None,
            camera_ids: torch.LongTensor | None = None,
            output_hidden_states: bool | None = None,
            **kwargs,
    ) -> PiVLReIDOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Identity labels in `[0, num_labels)`; when given, `loss` is the identity loss over both classifiers.
        camera_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            0-based camera of each image; needed only by a model with a camera embedding (`config.num_cameras > 0`).
        """
        self._refuse_unknown_kwargs(kwargs)
        tokens, head, hidden_states = self._encode(pixel_values, output_hidden_states, camera_ids)
        loss = self._identity_loss(head.logits, labels)
        output = PiVLReIDOutput(
            loss=loss, logits=head.logits, embeddings=self.timm_model.embed(head), features=tuple(head.features),
            hidden_states=hidden_states)
        return output
