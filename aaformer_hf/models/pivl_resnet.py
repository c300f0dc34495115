""" π-VL's CNN inference model: CLIP's ResNet-50 image tower with CLIP-ReID's re-ID head.

Papers: `Exploring Part-Informed Visual-Language Learning for Person Re-Identification` (Lin et al.,
arXiv 2308.02738), Table 2's CNN rows, and `CLIP-ReID` (Li et al., AAAI 2023), whose CNN model π-VL trains.

The image tower is timm's own ``ByobNet`` in its ``resnet50_clip`` configuration (OpenAI CLIP's "modified ResNet":
a three-convolution stem, anti-aliased strided convolutions, an attention pool in place of average pooling) with the
last stage's stride set to 1, as CLIP-ReID builds it: at 256x128 the last map is 16x8 and the attention pool's
position embedding is resized to that grid (bilinearly, once, when CLIP weights are loaded - as CLIP-ReID does).

CLIP-ReID's CNN head: the last map average-pooled (2048-d) and the attention pool's output for its mean token (the
CLIP projection, 1024-d), one BNNeck and one bias-free identity classifier on each; the test feature is the two
concatenated (3072-d), before the BNNecks as in CLIP-ReID's CNN config (``embedding``).
"""
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.layers import AttentionPool2d, resample_abs_pos_embed, to_2tuple
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models.byobnet import ByobNet, ByoBlockCfg, _convert_openai_clip, model_cfgs

from ..layers import BNNeck
from ._loading import classifier_fits, create_with_cfg, finish_loading, unwrap_state_dict
from .pivl import CLIPReIDHead, EmbeddingSource, PiVLHeadOutput, check_head_arguments, pivl_cfg

__all__ = ['PiVLResNet', 'clip_resnet_state_dict']  # model_registry will add each entrypoint fn to this


class PiVLResNet(CLIPReIDHead, ByobNet):
    """CLIP ResNet image tower + CLIP-ReID re-ID head (π-VL's CNN inference model).

    ``forward_features`` returns the last stage's map (B, C, h, w) (timm's CNN convention),
    ``forward_head(pre_logits=True)`` the re-ID embedding (the pooled map and its CLIP projection, C + E wide),
    ``forward`` the two classifiers' logits (B, 2, num_classes) or the embedding when ``num_classes=0``. The
    attention pool is ``attn_pool`` (timm's ``resnet50_clip`` calls it ``head``; here the classifiers are the head).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = (256, 128),
            in_chans: int = 3,
            num_classes: int = 0,
            global_pool: str = 'token',
            depths: Tuple[int, ...] = (3, 4, 6, 3),
            widths: Tuple[int, ...] = (256, 512, 1024, 2048),
            stem_widths: Tuple[int, ...] = (32, 32, 64),
            proj_dim: int = 1024,
            last_stride: int = 1,
            embedding: EmbeddingSource = 'before_bnneck',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
            **kwargs: Any,
    ) -> None:
        """
        Args:
            img_size: Input (H, W); 256x128 as in CLIP-ReID and π-VL. Sets the attention pool's position grid.
            in_chans: Image channels.
            num_classes: Training identities; 0 builds no classifiers and ``forward`` returns the embedding.
            global_pool: 'token' pools into the re-ID head; '' makes ``forward_head`` return the map unpooled.
            depths, widths: Bottleneck blocks and output channels of the four stages (ResNet-50: 3, 4, 6, 3 and
                256 ... 2048).
            stem_widths: The three stem convolutions' channels (32, 32, 64).
            proj_dim: The attention pool's output width, CLIP's image-text space (1024 for ResNet-50).
            last_stride: Stride of the last stage: 1 (default, CLIP-ReID's and π-VL's "last stride 1") or 2
                (CLIP's own).
            embedding: Test feature, 'before_bnneck' (default: CLIP-ReID's configs, ``NECK_FEAT 'before'``) or
                'after_bnneck'. π-VL's paper does not state it.
            drop_rate: Dropout before the classifiers.
            drop_path_rate: timm's stochastic depth (0 in CLIP-ReID).
            device, dtype: For parameters and buffers.
            kwargs: Other timm ``ByobNet`` arguments.
        """
        check_head_arguments(global_pool, embedding, num_classes)
        if last_stride not in (1, 2):
            raise ValueError(f'last_stride must be 1 or 2, got {last_stride}')
        if not len(depths) == len(widths) == 4 or len(stem_widths) != 3:
            raise ValueError(f'depths and widths need 4 stages and stem_widths 3 convolutions, got {depths}, '
                             f'{widths}, {stem_widths}')
        if widths[-1] % 64:
            raise ValueError(f'the last width ({widths[-1]}) must be a multiple of 64: the attention pool has heads '
                             'of 64 channels, as CLIP\'s')
        dd = {'device': device, 'dtype': dtype}
        cfg = model_cfgs['resnet50_clip']
        blocks = tuple(ByoBlockCfg(type=b.type, d=d, c=c, s=last_stride if i == 3 else b.s, br=b.br)
                       for i, (b, d, c) in enumerate(zip(cfg.blocks, depths, widths)))
        cfg = replace(cfg, blocks=blocks, stem_chs=tuple(stem_widths))
        self.img_size = to_2tuple(img_size)
        # ByobNet's own attention-pool head, built for this grid; moved to `attn_pool` below
        super().__init__(cfg, num_classes=proj_dim, in_chans=in_chans, global_pool='token', img_size=self.img_size,
                         drop_rate=0., drop_path_rate=drop_path_rate, **dd, **kwargs)
        self.attn_pool = self.head  # heads of 64 channels (timm's default head_dim), as CLIP's
        self.global_pool = global_pool
        self.embedding = embedding
        self.depths, self.widths, self.stem_widths = tuple(depths), tuple(widths), tuple(stem_widths)
        self.proj_dim = proj_dim
        self.last_stride = last_stride
        self.drop_path_rate = drop_path_rate
        self.head_drop = nn.Dropout(drop_rate)
        self.bnneck = BNNeck(self.num_features, **dd)
        self.bnneck_proj = BNNeck(proj_dim, **dd)
        self.reid_width = self.num_features  # the head average-pools the last map
        self.head_hidden_size = self.num_features + proj_dim
        self.num_classes = num_classes
        self.head = self._make_classifier(num_classes, **dd)

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """timm's ByobNet pruning; with the head, the attention pool and BNNecks go too (they would be unused)."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        if prune_head or len(self.stages) < len(self.depths):  # ByobNet has reset the classifiers
            self.attn_pool, self.bnneck, self.bnneck_proj = nn.Identity(), nn.Identity(), nn.Identity()
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[0]

    def forward_stages(self, x: torch.Tensor, output_hidden_states: bool = False
                       ) -> Tuple[torch.Tensor, Optional[List[torch.Tensor]]]:
        """``forward_features`` that can also return the stem's output and every stage's (transformers' ResNet
        ``hidden_states``: 1 + 4 maps; CLIP-ReID's triplet loss uses the third stage's, π-VL's fusion three)."""
        x = self.stem(x)
        if not output_hidden_states:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(self.stages, x, flatten=True)
            else:
                x = self.stages(x)
            return self.final_conv(x), None
        hidden_states = [x]
        for stage in self.stages:
            x = stage(x)
            hidden_states.append(x)
        return self.final_conv(x), hidden_states

    def forward_reid_head(self, x: torch.Tensor) -> PiVLHeadOutput:
        """The last map average-pooled and the attention pool's projection, before and after the BNNecks, and the
        logits."""
        return self._reid_head(x.mean((2, 3)), self.attn_pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: PiVLResNet) -> Dict[str, torch.Tensor]:
    """Adapt a CLIP ResNet image tower or a π-VL checkpoint to ``model``.

    CLIP checkpoints, in timm's layout (``resnet50_clip.openai``: the attention pool is ``head``) or OpenAI's
    (``visual.*``, converted with timm's own converter): the attention pool becomes ``attn_pool``, its position
    embedding (7x7 at 224) is resized to the model's grid (16x8 at 256x128 with last stride 1) bilinearly as
    CLIP-ReID resizes it, and the BNNecks and classifiers keep their fresh initialisation. π-VL checkpoints load as
    they are (classifiers for another number of identities, or for a model without any, are left out). Encoder
    weights the model needs and the checkpoint lacks, or has in another shape, are an error naming them.
    """
    state_dict = unwrap_state_dict(state_dict)
    is_clip = 'bnneck.weight' not in state_dict
    if is_clip:
        state_dict = clip_resnet_state_dict(state_dict)
    own = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k == 'attn_pool.pos_embed' and k in own and v.shape != own[k].shape:
            v = _resized_attn_pool_pos_embed(v, model)
        if not classifier_fits(k, v, own):
            continue
        out[k] = v
    return finish_loading(out, own, ('head.',) + (('bnneck.', 'bnneck_proj.') if is_clip else ()))


def clip_resnet_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A CLIP ResNet image tower in OpenAI's layout (``visual.*``, through timm's own converter) or timm's
    (``resnet50_clip``: the attention pool as ``head``) in this model's keys (the pool as ``attn_pool``)."""
    if 'visual.conv1.weight' in state_dict:
        # timm's converter keeps the attnpool keys for a model whose `head` is an attention pool (any one will do)
        state_dict = _convert_openai_clip(state_dict, SimpleNamespace(head=AttentionPool2d(64, feat_size=1)))
    return {('attn_pool.' + k.removeprefix('head.') if k.startswith('head.') else k): v for k, v in state_dict.items()}


def _resized_attn_pool_pos_embed(pos_embed: torch.Tensor, model: PiVLResNet) -> torch.Tensor:
    """CLIP's (1 + s*s, C) attention-pool position embedding on the model's (h, w) grid, bilinear without
    anti-aliasing (CLIP-ReID's ``resize_pos_embed``); the mean token's row stays as it is."""
    side = round((pos_embed.shape[0] - 1) ** 0.5)
    if side * side + 1 != pos_embed.shape[0]:
        raise ValueError(f'attention-pool position embedding of {pos_embed.shape[0]} rows: not 1 + a square grid')
    grid = model.attn_pool.feat_size
    return resample_abs_pos_embed(pos_embed.unsqueeze(0), new_size=grid, old_size=(side, side), num_prefix_tokens=1,
                                  interpolation='bilinear', antialias=False, verbose=True)[0]


def _cfg(**kwargs) -> Dict[str, Any]:
    # CLIP-ReID's CNN config normalises with ImageNet's statistics (INPUT.PIXEL_MEAN / PIXEL_STD), not OpenAI CLIP's;
    # π-VL keeps CLIP-ReID's settings
    return pivl_cfg(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), first_conv='stem.conv1.conv', **kwargs)


default_cfgs = generate_default_cfgs({
    # OpenAI's CLIP ResNet-50 image tower, the initialisation CLIP-ReID's and π-VL's CNN models start from
    'pivl_resnet50.clip_openai': _cfg(
        hf_hub_id='timm/resnet50_clip.openai', license='mit',
        notes=('backbone initialisation only (OpenAI CLIP ResNet-50); train with examples/train.py',)),
    'pivl_resnet_tiny.untrained': _cfg(),
})


def _create_pivl_resnet(variant: str, pretrained: bool = False, **kwargs) -> PiVLResNet:
    kwargs.setdefault('out_indices', 4)  # features_only: the last 4 taps (a last stride of 1 merges two stages' taps)
    return create_with_cfg(PiVLResNet, variant, pretrained, checkpoint_filter_fn, **kwargs)


@register_model
def pivl_resnet50(pretrained: bool = False, **kwargs) -> PiVLResNet:
    """ π-VL / CLIP-ReID CNN inference model: CLIP ResNet-50 at 256x128, last stride 1, CLIP-ReID's re-ID head. """
    model_args = dict(depths=(3, 4, 6, 3), widths=(256, 512, 1024, 2048), stem_widths=(32, 32, 64), proj_dim=1024)
    return _create_pivl_resnet('pivl_resnet50', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def pivl_resnet_tiny(pretrained: bool = False, **kwargs) -> PiVLResNet:
    """ A tiny π-VL CNN (one block per stage, CLIP's proportions at width 8, projection 64) for tests and demos; not
    for re-ID. """
    model_args = dict(depths=(1, 1, 1, 1), widths=(32, 64, 128, 256), stem_widths=(4, 4, 8), proj_dim=64)
    return _create_pivl_resnet('pivl_resnet_tiny', pretrained=pretrained, **dict(model_args, **kwargs))
