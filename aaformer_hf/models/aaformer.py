""" AAformer: Auto-Aligned Transformer for person re-identification.

Paper: `AAformer: Auto-Aligned Transformer for Person Re-Identification` (Zhu et al., IEEE TNNLS 2023)
    - https://arxiv.org/abs/2104.00921

A ViT with learnable [PART] tokens after CLS. Every layer's self-attention is Multi-head Auto-Alignment: in each head,
patch keys are assigned to the [PART] queries by Sinkhorn-Knopp optimal transport and each [PART] attends only to its
patches. The re-ID embedding is CLS + [PART]s after the final norm, through a BNNeck.

The paper's ablation baselines are the same class by configuration: ``assignment='nearest'`` (Table V),
``assignment='stripes'`` with ``part_groups=(6,)`` (PCB) or ``(2, 3)`` (MGN) (Table IV), and ``part_groups=()`` for
the ViT-baseline (which then is timm's VisionTransformer, weight for weight).

No code was published with the paper; this implementation follows its text (§III, Eq. 1-8). Choices the paper leaves
open are constructor arguments whose docstrings say so.
"""
import dataclasses
import logging
from typing import Any, Callable, Dict, List, Literal, NamedTuple, Optional, Sequence, Set, Tuple, Type, Union

import torch
import torch.nn as nn

from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models import checkpoint, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import init_weights_vit_timm

from ._loading import classifier_fits, create_with_cfg, finish_loading, resampled_pos_embed, unwrap_state_dict
from ..layers import (
    AssignmentSettings, BNNeck, MultiHeadAutoAlignment, TokenClassifiers,
)
from ..layers.choices import check_choice

__all__ = ['AAformer', 'AAformerTokens', 'ReIDHeadOutput']  # model_registry will add each entrypoint fn to this

_logger = logging.getLogger(__name__)

EmbeddingSource = Literal['after_bnneck', 'before_bnneck']
EmbeddingTokens = Literal['all', 'cls']
PartInit = Literal['trunc_normal', 'cls']


class AAformerTokens(NamedTuple):
    """Everything one pass through the encoder can report. Lists have one entry per block, or are None."""
    last_hidden_state: torch.Tensor  # (B, L, D) after the final norm
    hidden_states: Optional[List[torch.Tensor]]  # embeddings + every block output, before the final norm
    attentions: Optional[List[torch.Tensor]]  # (B, H, L, L) attention probabilities per block
    assignments: Optional[List[torch.Tensor]]  # (B, H, P, N) bool patch-to-part assignment per block


class ReIDHeadOutput(NamedTuple):
    features: torch.Tensor  # (B, T, D) CLS + [PART] tokens before the BNNeck (the triplet loss uses these)
    bn_features: torch.Tensor  # (B, T, D) after the BNNeck (the classifiers use these)
    logits: Optional[torch.Tensor]  # (B, T, C) per-token identity logits, None without classifiers


class AAformerBlock(nn.Module):
    """Pre-norm transformer layer with Multi-head Auto-Alignment in place of self-attention (§III-A). Activation
    checkpointing is the model's (timm's ``set_grad_checkpointing``), which the transformers wrappers switch too."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            attn_kwargs: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ) -> None:
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm1 = norm_layer(dim, **dd)
        self.attn = MultiHeadAutoAlignment(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
            **(attn_kwargs or {}), **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward_detailed(
            self,
            x: torch.Tensor,
            output_attentions: bool = False,
            part_masks: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Returns (output, attention probabilities or None, part assignment or None)."""
        attn_out, probs, assigned = self.attn(
            self.norm1(x), output_attentions=output_attentions, part_masks=part_masks)
        x = x + self.drop_path1(attn_out)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x, probs, assigned

    def forward(self, x: torch.Tensor, part_masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_detailed(x, part_masks=part_masks)[0]


class AAformer(nn.Module):
    """ Auto-Aligned Transformer (AAformer) for person re-identification.

    Token sequence: [CLS, PART_1..P, patches]. ``forward_features`` returns all tokens after the final norm,
    ``forward_head(pre_logits=True)`` the re-ID embedding (CLS and [PART]s concatenated, (1 + P) * D wide; the CLS
    token alone with ``embedding_tokens='cls'``), and
    ``forward`` per-token identity logits (B, 1 + P, num_classes), or the embedding when ``num_classes=0``.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = (256, 128),
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            num_classes: int = 0,
            global_pool: Literal['', 'token'] = 'token',
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            part_groups: Sequence[int] = (2, 3),
            part_init: PartInit = 'trunc_normal',
            part_init_std: float = 0.02,
            part_pos_embed: bool = False,
            embedding: EmbeddingSource = 'after_bnneck',
            embedding_tokens: EmbeddingTokens = 'all',
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
            act_layer: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
            **assignment_settings: Any,
    ) -> None:
        """
        Args:
            img_size: Input image size (H, W); 256x128 in the paper.
            patch_size: Patch size (16 in the paper: a 16x8 grid of 128 patches at 256x128).
            in_chans: Number of image channels.
            num_classes: Number of training identities; 0 builds no classifiers and ``forward`` returns the embedding.
            global_pool: 'token' pools CLS + [PART]s into the re-ID embedding; '' returns unpooled tokens.
            embed_dim: Token width D.
            depth: Number of transformer layers.
            num_heads: Attention heads (the assignment runs in every head).
            mlp_ratio: MLP hidden width / D.
            qkv_bias: Bias on the qkv projection.
            part_groups: [PART]s per granularity group, each group partitioning all patches on its own. (2, 3) gives
                the paper's P = 5; () is the ViT-baseline.
            part_init: Initial [PART] tokens: 'trunc_normal' (std 0.02, as timm initialises ViT tokens; default) or
                'cls' (the pretrained CLS token plus N(0, 0.02) noise, applied when pretrained ViT weights load;
                beyond the paper). The paper says only "randomly and independently initialized" (§IV-D): the
                distribution and scale are not stated.
            part_init_std: Standard deviation of the 'trunc_normal' [PART] init (0.02, timm's token init, by
                default; truncated at ±2 as timm truncates). Not stated by the paper; pretrained patch tokens have
                norms near 2.5, so 0.02 starts the [PART]s ~100x smaller (issue #11 sweeps it).
            part_pos_embed: Add a learnable position embedding per [PART] (as PASS does). Default False: a learnable
                offset on a learnable token adds no capacity (neither gets weight decay) but moves the sum by two
                gradients, doubling its effective learning rate under SGD. Not stated by the paper.
            embedding: Which feature ``forward_head(pre_logits=True)`` returns: 'after_bnneck' (default, BoT's test
                feature; the paper follows BoT) or 'before_bnneck'. Not stated by the paper.
            embedding_tokens: Which tokens make the re-ID embedding: 'all' (default, the paper: CLS and [PART]s
                concatenated, (1 + P) * D wide) or 'cls' (BEYOND THE PAPER, off by default: the CLS token alone, D
                wide). Training is the same either way - every token keeps its losses, so the [PART]s still shape
                the CLS token - only the test feature leaves the [PART]s out. Issue #11: on the misaligned
                synthetic preset at D = 128 the CLS token alone of the paper's AAformer beat the concatenation, the
                ViT-baseline and MGN's stripes on average over three test sets (BENCHMARKS.md); at D = 64 the
                concatenation was better.
            drop_rate: Dropout before the classifiers.
            pos_drop_rate: Dropout after adding position embeddings.
            proj_drop_rate: Dropout after the attention projection and in the MLP.
            attn_drop_rate: Dropout on attention probabilities.
            drop_path_rate: Stochastic depth rate (linearly increasing over layers).
            norm_layer: Normalisation layer (LayerNorm, eps 1e-6, by default).
            act_layer: MLP activation (GELU by default).
            device: Device for parameters and buffers.
            dtype: Dtype for parameters and buffers.
            **assignment_settings: How every layer assigns patches to the [PART]s: the fields of
                ``AssignmentSettings`` (``assignment``: 'sinkhorn', the paper's, or Table IV/V's baselines
                'nearest', 'stripes', 'given', 'global'; ``assignment_score``, ``sinkhorn_epsilon``,
                ``sinkhorn_iters``, ``part_self_key``, ``patches_see_parts``, ``fp32_assignment_inputs``,
                ``shared_assignment``), each described there with its default and what the paper states.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        settings = AssignmentSettings.from_kwargs(type(self).__name__, assignment_settings)
        if global_pool not in ('', 'token'):
            raise ValueError(f"global_pool must be '' or 'token', got {global_pool!r}")
        check_choice('embedding', embedding, EmbeddingSource)
        check_choice('embedding_tokens', embedding_tokens, EmbeddingTokens)
        check_choice('part_init', part_init, PartInit)
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0 (0: no identity classifiers), got {num_classes}')
        norm_layer = norm_layer or (lambda dim, **kw: nn.LayerNorm(dim, eps=1e-6, **kw))
        act_layer = act_layer or nn.GELU

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.part_groups = tuple(int(g) for g in part_groups)
        self.num_parts = sum(self.part_groups)
        self.num_prefix_tokens = 1 + self.num_parts
        self.num_embedding_tokens = 1 + self.num_parts
        self.num_features = self.embed_dim = embed_dim
        # the re-ID embedding's width (what forward_head(pre_logits=True) returns)
        self.head_hidden_size = (self.num_embedding_tokens if embedding_tokens == 'all' else 1) * embed_dim
        if not part_init_std > 0:
            raise ValueError(f'part_init_std must be > 0, got {part_init_std}')
        self.part_init = part_init
        self.part_init_std = part_init_std
        self.assignment = settings.assignment
        self.embedding = embedding
        self.embedding_tokens = embedding_tokens
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, **dd)
        num_patches = self.patch_embed.num_patches
        grid_size = self.patch_embed.grid_size
        reduction = self.patch_embed.feat_ratio() if hasattr(self.patch_embed, 'feat_ratio') else patch_size

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        self.part_tokens = nn.Parameter(torch.zeros(1, self.num_parts, embed_dim, **dd)) if self.num_parts else None
        # position embeddings for CLS + patches, laid out as in timm's ViT so ImageNet weights load as they are
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim, **dd))
        self.part_pos_embed = (
            nn.Parameter(torch.zeros(1, self.num_parts, embed_dim, **dd)) if part_pos_embed and self.num_parts
            else None)
        self.pos_drop = nn.Dropout(p=pos_drop_rate)

        attn_kwargs = dict(part_groups=self.part_groups, grid_size=grid_size, **dataclasses.asdict(settings))
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device='cpu')]
        self.blocks = nn.Sequential(*[
            AAformerBlock(
                dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i], act_layer=act_layer,
                norm_layer=norm_layer, attn_kwargs=attn_kwargs, **dd)
            for i in range(depth)])
        self.feature_info = [
            dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.norm = norm_layer(embed_dim, **dd)

        # re-ID head (BoT): BNNeck per token, then one identity classifier per token
        self.bnneck = BNNeck(self.num_embedding_tokens * embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._make_classifier(num_classes, **dd)

        self.init_weights()

    def _make_classifier(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return TokenClassifiers(self.num_embedding_tokens, self.embed_dim, num_classes, device=device, dtype=dtype)

    def init_weights(self) -> None:
        """timm's ViT init for the backbone, trunc-normal [PART]s, BoT init for the head."""
        trunc_normal_(self.pos_embed, std=.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.part_tokens is not None:
            trunc_normal_(self.part_tokens, std=self.part_init_std)
        if self.part_pos_embed is not None:
            trunc_normal_(self.part_pos_embed, std=.02)
        for module in self.modules():
            if module is self:
                continue
            if isinstance(module, (BNNeck, TokenClassifiers)):
                module.reset_parameters()
            else:
                init_weights_vit_timm(module, needs_reset=False)

    @property
    def assigns_patches(self) -> bool:
        """Whether the model assigns patches to its [PART]s itself ('sinkhorn', 'nearest', 'stripes'); not with no
        [PART]s, masks given by the caller ('given') or [PART]s that see everything ('global')."""
        return bool(self.num_parts) and self.assignment in ('sinkhorn', 'nearest', 'stripes')

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'pos_embed', 'cls_token', 'part_tokens', 'part_pos_embed'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^cls_token|part_tokens|pos_embed|part_pos_embed|patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the per-token identity classifiers (num_classes=0 removes them)."""
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0 (0: no identity classifiers), got {num_classes}')
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('', 'token'):
                raise ValueError(f"global_pool must be '' or 'token', got {global_pool!r}")
            self.global_pool = global_pool
        ref = self.bnneck.weight
        self.head = self._make_classifier(num_classes, device=ref.device, dtype=ref.dtype).train(self.training)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.pos_embed
        if self.part_tokens is not None:
            parts = self.part_tokens
            if self.part_pos_embed is not None:
                parts = parts + self.part_pos_embed
            x = torch.cat([x[:, :1], parts.expand(b, -1, -1), x[:, 1:]], dim=1)
        return self.pos_drop(x)

    def forward_tokens(
            self,
            x: torch.Tensor,
            output_hidden_states: bool = False,
            output_attentions: bool = False,
            output_assignments: bool = False,
            part_masks: Optional[torch.Tensor] = None,
    ) -> AAformerTokens:
        """Encoder pass that can also report hidden states, attention probabilities and part assignments.
        ``part_masks`` (B, P, N) bool: each [PART]'s patches, with ``assignment='given'`` only."""
        x = self._pos_embed(self.patch_embed(x))
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        assignments = [] if output_assignments else None
        detailed = output_attentions or output_assignments
        for blk in self.blocks:
            if detailed:
                x, probs, assigned = blk.forward_detailed(
                    x, output_attentions=output_attentions, part_masks=part_masks)
                if attentions is not None:
                    attentions.append(probs)
                if assignments is not None:
                    assignments.append(assigned)
            elif self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, part_masks)
            else:
                x = blk(x, part_masks)
            if hidden_states is not None:
                hidden_states.append(x)
        return AAformerTokens(self.norm(x), hidden_states, attentions, assignments)

    def forward_features(self, x: torch.Tensor, part_masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """All tokens [CLS, PART_1..P, patches] after the final norm: (B, 1 + P + N, D). ``part_masks``: see
        ``forward_tokens``."""
        if part_masks is not None:
            return self.forward_tokens(x, part_masks=part_masks).last_hidden_state
        x = self._pos_embed(self.patch_embed(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns intermediate block outputs (timm's feature-extraction API).

        Args:
            x: Input images.
            indices: Take the last n blocks if int, all if None, the listed blocks if a sequence.
            return_prefix_tokens: Also return the CLS + [PART] tokens of each intermediate.
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last requested block.
            output_fmt: 'NCHW' (patch tokens as a feature map) or 'NLC'.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        b, _, height, width = x.shape
        x = self._pos_embed(self.patch_embed(x))
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        prefix = [y[:, :self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == 'NCHW':
            h, w = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if not torch.jit.is_scripting() and return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop blocks after the last requested intermediate (and optionally the norm and head)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:  # the re-ID head goes too: the BNNeck would be left trainable but unused
            self.reset_classifier(0, '')
            self.bnneck = nn.Identity()
        return take_indices

    def forward_reid_head(self, x: torch.Tensor) -> ReIDHeadOutput:
        """CLS + [PART] features before and after the BNNeck, and per-token logits, from ``forward_features``."""
        tokens = x[:, :self.num_embedding_tokens]
        b, t, d = tokens.shape
        bn_tokens = self.bnneck(tokens.reshape(b, t * d)).view(b, t, d)
        logits = None if self.num_classes <= 0 else self.head(self.head_drop(bn_tokens))
        return ReIDHeadOutput(tokens, bn_tokens, logits)

    def embed(self, head: ReIDHeadOutput) -> torch.Tensor:
        """The re-ID embedding ((1 + P) * D, or D with ``embedding_tokens='cls'``) from the head output, on the side
        of the BNNeck ``embedding`` names."""
        feats = head.bn_features if self.embedding == 'after_bnneck' else head.features
        if self.embedding_tokens == 'cls':
            feats = feats[:, :1]
        return feats.flatten(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not self.global_pool:
            return x
        head = self.forward_reid_head(x)
        if pre_logits or head.logits is None:
            return self.embed(head)
        return head.logits

    def forward(self, x: torch.Tensor, part_masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, part_masks))


# parameters a checkpoint may lack: the model's own initialisation is kept (identity classifiers always; the
# BNNeck and [PART] tokens too when the checkpoint is a backbone: a plain ViT or a re-ID model of another layout)
_HEAD_KEYS = ('head.',)
_NEW_FOR_A_BACKBONE = ('bnneck.', 'part_tokens', 'part_pos_embed')


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: AAformer) -> Dict[str, torch.Tensor]:
    """Adapt a timm ViT or AAformer checkpoint to ``model``.

    ViT checkpoints (ImageNet): drop the ImageNet head, resample the position grid (e.g. 14x14 -> 16x8) with the old
    grid size given explicitly, and keep the model's freshly initialised [PART] tokens, BNNeck and classifiers (or
    initialise [PART]s from the CLS token when ``part_init='cls'``). AAformer checkpoints load as they are, with the
    position grid resampled if the resolution differs and the identity classifiers dropped when the model has none or
    has them for another number of identities. An AAformer checkpoint of another token layout (e.g. a trained
    ViT-baseline as the backbone of an AAformer) initialises the trunk only: its BNNeck, classifiers and [PART]s are
    left out and the model's own kept, with a warning. Encoder weights the model needs and the checkpoint lacks (or
    has in another shape or number, e.g. another depth or width) are an error naming them.
    """
    state_dict = unwrap_state_dict(state_dict)
    own = model.state_dict()
    is_vit = 'bnneck.weight' not in state_dict
    other_layout = not is_vit and state_dict['bnneck.weight'].shape != own['bnneck.weight'].shape
    if other_layout:
        _logger.warning(
            'the checkpoint is a re-ID model with %d embedding tokens, this model has %d: loading its trunk only; '
            'the BNNeck, identity classifiers and [PART] tokens keep their fresh initialisation',
            state_dict['bnneck.weight'].shape[0] // own['cls_token'].shape[-1], model.num_embedding_tokens)
    backbone_only = is_vit or other_layout
    out = {}
    for k, v in state_dict.items():
        if is_vit and (k.startswith('head.') or k.startswith('fc_norm.') or k.startswith('head_drop')):
            continue
        if other_layout and k.startswith(_HEAD_KEYS + _NEW_FOR_A_BACKBONE):
            continue
        if not classifier_fits(k, v, own):
            continue
        out[k] = resampled_pos_embed(v, model, 'bicubic') if k == 'pos_embed' else v
    out = finish_loading(out, own, _HEAD_KEYS + (_NEW_FOR_A_BACKBONE if backbone_only else ('part_pos_embed',)))
    if backbone_only and model.part_tokens is not None and model.part_init == 'cls' and 'cls_token' in state_dict:
        cls = state_dict['cls_token'].to(own['part_tokens'].dtype)
        noise = torch.empty_like(own['part_tokens']).normal_(std=.02)
        out['part_tokens'] = cls.expand_as(noise) + noise
    return out


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '',
        'num_classes': 0,
        'input_size': (3, 256, 128),
        'pool_size': None,
        'crop_pct': 1.0,
        'crop_mode': 'squash',  # re-ID crops are resized whole to 256x128 (no aspect-keeping crop)
        'interpolation': 'bilinear',
        'fixed_input_size': True,
        'mean': (0.5, 0.5, 0.5),
        'std': (0.5, 0.5, 0.5),
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2104.00921',
        'paper_name': 'AAformer: Auto-Aligned Transformer for Person Re-Identification',
        **kwargs,
    }


# Backbone initialisations. The paper says only "pre-trained on ImageNet"; ViT-B/16 starts from Google's original
# ImageNet-21k -> 1k ViT-B/16 (the checkpoint TransReID, AAformer's ViT comparison, initialises from), ViT-S/16 from
# the AugReg 21k -> 1k weights. Both use mean = std = 0.5. Source resolution 224 (14x14 grid), resampled to 16x8.
default_cfgs = generate_default_cfgs({
    'aaformer_base.vit_in21k_ft_in1k': _cfg(
        hf_hub_id='timm/vit_base_patch16_224.orig_in21k_ft_in1k',
        notes=('backbone initialisation only (ImageNet ViT-B/16); fine-tune on a re-ID dataset',)),
    'aaformer_base_cls_embedding.vit_in21k_ft_in1k': _cfg(
        hf_hub_id='timm/vit_base_patch16_224.orig_in21k_ft_in1k',
        notes=('backbone initialisation only (ImageNet ViT-B/16); fine-tune on a re-ID dataset',)),
    'aaformer_small.vit_augreg_in21k_ft_in1k': _cfg(
        hf_hub_id='timm/vit_small_patch16_224.augreg_in21k_ft_in1k',
        notes=('backbone initialisation only (ImageNet ViT-S/16); fine-tune on a re-ID dataset',)),
    'aaformer_tiny.untrained': _cfg(),
})


def _create_aaformer(variant: str, pretrained: bool = False, **kwargs) -> AAformer:
    return create_with_cfg(AAformer, variant, pretrained, checkpoint_filter_fn, **kwargs)


@register_model
def aaformer_base(pretrained: bool = False, **kwargs) -> AAformer:
    """ AAformer with a ViT-B/16 backbone at 256x128, [PART] groups {2, 3} (the paper's model). """
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_aaformer('aaformer_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def aaformer_base_cls_embedding(pretrained: bool = False, **kwargs) -> AAformer:
    """ aaformer_base trained as the paper says, with the CLS token alone as the test feature - BEYOND the paper, whose
    test feature is CLS and [PART]s concatenated. Issue #11's best AAformer configuration on misaligned synthetic
    crops; the measurements are in BENCHMARKS.md ("Session 11"). """
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, embedding_tokens='cls')
    return _create_aaformer('aaformer_base_cls_embedding', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def aaformer_small(pretrained: bool = False, **kwargs) -> AAformer:
    """ AAformer with a ViT-S/16 backbone at 256x128, [PART] groups {2, 3}. """
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_aaformer('aaformer_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def aaformer_tiny(pretrained: bool = False, **kwargs) -> AAformer:
    """ A tiny AAformer (4 layers, D=64) at 256x128 for tests and demos; not for real re-ID. """
    model_args = dict(patch_size=16, embed_dim=64, depth=4, num_heads=2)
    return _create_aaformer('aaformer_tiny', pretrained=pretrained, **dict(model_args, **kwargs))
