# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""PyTorch AAformer model for transformers: thin wrappers around the timm ``AAformer`` (one implementation)."""
from dataclasses import dataclass

import torch
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from ..layers import TokenClassifiers
from ..models.aaformer import AAformer
from .configuration_aaformer import AAformerConfig
from .timm_backed import ReIDOutput, TimmBackedPreTrainedModel

__all__ = ['AAformerPreTrainedModel', 'AAformerModel', 'AAformerForReID', 'AAformerModelOutput', 'AAformerReIDOutput']


@dataclass
class AAformerModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + P + N, hidden_size)`):
        All tokens [CLS, PART_1..P, patches] after the final norm.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, config.embedding_size)`):
        The re-ID embedding: CLS and [PART]s concatenated ((1 + P) * hidden_size; CLS alone with
        `config.embedding_tokens="cls"`), after (or before, per `config.embedding`) the BNNeck.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        Embeddings plus the output of every layer, each `(batch_size, 1 + P + N, hidden_size)`.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
        Attention probabilities of every layer, each `(batch_size, num_heads, 1 + P + N, 1 + P + N)`; [PART] rows
        are zero outside the part's assigned patches.
    assignments (`tuple(torch.BoolTensor)`, *optional*, returned when `output_assignments=True`):
        Hard patch-to-part assignment of every layer, each `(batch_size, num_heads, P, N)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    assignments: tuple[torch.BoolTensor, ...] | None = None


@dataclass
class AAformerReIDOutput(ReIDOutput):
    r"""
    The family-independent `ReIDOutput` (loss of Eq. 6; logits `(batch_size, 1 + P, num_labels)`; the embedding;
    features: the CLS and each [PART] feature before the BNNeck, `1 + P` tensors `(batch_size, hidden_size)`, what the
    triplet loss of Eq. 7 uses), plus AAformer's own:

    attentions, assignments: as in `AAformerModelOutput`.
    """

    attentions: tuple[torch.FloatTensor, ...] | None = None
    assignments: tuple[torch.BoolTensor, ...] | None = None


class AAformerPreTrainedModel(TimmBackedPreTrainedModel):
    config: AAformerConfig
    config_class = AAformerConfig
    timm_model_class = AAformer
    _no_split_modules = ['AAformerBlock']

    @torch.no_grad()
    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, AAformer):
            init.trunc_normal_(module.pos_embed, std=0.02)
            init.normal_(module.cls_token, std=1e-6)
            if module.part_tokens is not None:
                init.trunc_normal_(module.part_tokens, std=module.part_init_std)
            if module.part_pos_embed is not None:
                init.trunc_normal_(module.part_pos_embed, std=0.02)
        elif isinstance(module, TokenClassifiers):
            init.normal_(module.weight, std=0.001)

    def _encode(self, pixel_values, output_attentions, output_hidden_states, output_assignments, part_masks=None):
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        pixel_values = pixel_values.to(self.device, self.dtype)
        tokens = self.timm_model.forward_tokens(
            pixel_values, output_hidden_states=bool(output_hidden_states),
            output_attentions=bool(output_attentions), output_assignments=bool(output_assignments),
            part_masks=None if part_masks is None else part_masks.to(self.device))
        head = self.timm_model.forward_reid_head(tokens.last_hidden_state)
        extras = dict(
            hidden_states=tuple(tokens.hidden_states) if tokens.hidden_states is not None else None,
            attentions=tuple(tokens.attentions) if tokens.attentions is not None else None,
            assignments=tuple(tokens.assignments) if tokens.assignments is not None else None,
        )
        return tokens, head, extras


class AAformerModel(AAformerPreTrainedModel):
    """AAformer encoder; `pooler_output` is the re-ID embedding."""

    # a re-ID checkpoint's identity classifiers are expected, unused weights for the encoder
    _keys_to_ignore_on_load_unexpected = [r'head\.weight']

    def __init__(self, config: AAformerConfig):
        super().__init__(config)
        self.timm_model = self._build_timm_model(num_classes=0)
        self.post_init()

    @can_return_tuple  # return_dict=False (or config.return_dict False): a tuple, transformers' way
    def forward(
            self,
            pixel_values: torch.Tensor,
            output_attentions: bool | None = None,
            output_hidden_states: bool | None = None,
            output_assignments: bool = False,
            part_masks: torch.BoolTensor | None = None,
            **kwargs,
    ) -> AAformerModelOutput | tuple:
        r"""
        output_assignments (`bool`, defaults to `False`):
            Also return each layer's hard patch-to-part assignment `(batch_size, num_heads, P, N)`.
        part_masks (`torch.BoolTensor` of shape `(batch_size, P, N)`, *optional*):
            Which patches each [PART] attends to, for `assignment="given"` models only (e.g.
            `aaformer_hf.data.parsing.region_masks(parsing_maps, grid)`).

        Example:

        ```python
        >>> import torch, aaformer_hf
        >>> from transformers import AutoModel
        >>> model = AutoModel.from_config(aaformer_hf.AAformerConfig(num_hidden_layers=2)).eval()
        >>> model(torch.randn(1, 3, 256, 128)).pooler_output.shape
        torch.Size([1, 4608])
        ```"""
        self._refuse_unknown_kwargs(kwargs)
        tokens, head, extras = self._encode(
            pixel_values, output_attentions, output_hidden_states, output_assignments, part_masks)
        output = AAformerModelOutput(
            last_hidden_state=tokens.last_hidden_state, pooler_output=self.timm_model.embed(head), **extras)
        return output


class AAformerForReID(AAformerPreTrainedModel):
    """AAformer with BNNecks and one identity classifier per token (CLS and each [PART]), for training."""

    def __init__(self, config: AAformerConfig):
        super().__init__(config)
        self.timm_model = self._build_reid_timm_model()
        self.post_init()

    @can_return_tuple  # return_dict=False (or config.return_dict False): a tuple, transformers' way
    def forward(
            self,
            pixel_values: torch.Tensor,
            labels: torch.LongTensor | None = None,
            output_attentions: bool | None = None,
            output_hidden_states: bool | None = None,
            output_assignments: bool = False,
            part_masks: torch.BoolTensor | None = None,
            **kwargs,
    ) -> AAformerReIDOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Identity labels in `[0, num_labels)`; when given, `loss` is the identity loss of Eq. 6.
        output_assignments (`bool`, defaults to `False`):
            Also return each layer's hard patch-to-part assignment.
        part_masks (`torch.BoolTensor` of shape `(batch_size, P, N)`, *optional*):
            Which patches each [PART] attends to, for `assignment="given"` models only (e.g.
            `aaformer_hf.data.parsing.region_masks(parsing_maps, grid)`).
        """
        self._refuse_unknown_kwargs(kwargs)
        tokens, head, extras = self._encode(
            pixel_values, output_attentions, output_hidden_states, output_assignments, part_masks)
        loss = self._identity_loss(head.logits, labels)
        output = AAformerReIDOutput(
            loss=loss, logits=head.logits, embeddings=self.timm_model.embed(head),
            features=tuple(head.features.unbind(1)), **extras)
        return output
