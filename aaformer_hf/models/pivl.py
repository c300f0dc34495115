""" π-VL's inference model: a CLIP ViT image tower with CLIP-ReID's re-ID head.

Papers: `Exploring Part-Informed Visual-Language Learning for Person Re-Identification` (Lin et al.,
arXiv 2308.02738) and the method it builds on, `CLIP-ReID: Exploiting Vision-Language Model for Image
Re-Identification without Concrete Text Labels` (Li et al., AAAI 2023). π-VL's text prompts and fusion head exist
only in training; at inference it is this encoder.

The image tower is timm's own ``VisionTransformer`` in the CLIP configuration (pre-norm, LayerNorm eps 1e-5, QuickGELU
for OpenAI's weights) at 256x128 (a 16x8 patch grid). CLIP-ReID's head: the CLS token after the final norm (768-d)
and its CLIP projection (512-d), one BNNeck and one bias-free identity classifier on each; the test feature is the two
concatenated (1280-d), before the BNNecks as in CLIP-ReID's configs (``embedding``).
"""
from functools import partial
from typing import Any, Dict, List, Literal, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.layers import LayerNorm
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer, _convert_openai_clip

from ..layers import BNNeck, OverlappingPatchEmbed
from ._loading import classifier_fits, create_with_cfg, finish_loading, resampled_pos_embed, unwrap_state_dict

__all__ = ['PiVLViT', 'PiVLHeadOutput', 'CLIPReIDHead']  # model_registry will add each entrypoint fn to this


EmbeddingSource = Literal['before_bnneck', 'after_bnneck']


class PiVLHeadOutput(NamedTuple):
    features: Tuple[torch.Tensor, torch.Tensor]  # (B, D) CLS and (B, E) its projection, before the BNNecks
    bn_features: Tuple[torch.Tensor, torch.Tensor]  # the same after the BNNecks (the classifiers use these)
    logits: Optional[torch.Tensor]  # (B, 2, C): the CLS and projection classifiers' identity logits


class ReIDClassifierPair(nn.Module):
    """CLIP-ReID's two bias-free identity classifiers, on the CLS feature and on its projection (BoT's N(0, 0.001)
    init). Output (B, 2, C), one row per classifier, the layout the identity loss (Eq. 6) averages over."""

    def __init__(self, cls_features: int, proj_features: int, num_classes: int, device=None, dtype=None) -> None:
        super().__init__()
        self.cls = nn.Linear(cls_features, num_classes, bias=False, device=device, dtype=dtype)
        self.proj = nn.Linear(proj_features, num_classes, bias=False, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.cls.weight, std=0.001)
        nn.init.normal_(self.proj.weight, std=0.001)

    def forward(self, cls: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.cls(cls), self.proj(proj)], dim=1)


def check_head_arguments(global_pool: str, embedding: str, num_classes: int) -> None:
    """The re-ID head's constructor arguments, checked once for both π-VL towers."""
    if global_pool not in ('', 'token'):
        raise ValueError(f"global_pool must be '' or 'token', got {global_pool!r}")
    if embedding not in ('before_bnneck', 'after_bnneck'):
        raise ValueError(f"embedding must be 'before_bnneck' or 'after_bnneck', got {embedding!r}")
    if num_classes < 0:
        raise ValueError(f'num_classes must be >= 0 (0: no identity classifiers), got {num_classes}')


class CLIPReIDHead:
    """CLIP-ReID's re-ID head on a CLIP image tower, shared by π-VL's ViT and CNN: a pooled feature of width
    ``reid_width`` and its CLIP projection (``proj_dim``), a BNNeck on each (``bnneck``, ``bnneck_proj``), the two
    classifiers as ``head`` and the embedding on the side of the BNNecks ``embedding`` names. The tower implements
    ``forward_reid_head`` (how it pools and projects)."""

    reid_width: int
    proj_dim: int
    num_classes: int
    global_pool: str
    embedding: str

    def _make_classifier(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return ReIDClassifierPair(self.reid_width, self.proj_dim, num_classes, device=device, dtype=dtype)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False
                         ) -> None:
        """Replace the identity classifiers (num_classes=0 removes them); ``reset_other`` (timm's pruning) is
        accepted and changes nothing more: the projection and BNNecks make the embedding, not the classifier."""
        global_pool = self.global_pool if global_pool is None else global_pool
        check_head_arguments(global_pool, self.embedding, num_classes)
        self.global_pool, self.num_classes = global_pool, num_classes
        ref = self.bnneck.weight
        self.head = self._make_classifier(num_classes, device=ref.device, dtype=ref.dtype).train(self.training)

    def _reid_head(self, pooled: torch.Tensor, proj: torch.Tensor) -> PiVLHeadOutput:
        """The BNNecks and classifiers on the pooled feature and its projection."""
        bn_pooled, bn_proj = self.bnneck(pooled), self.bnneck_proj(proj)
        logits = None
        if self.num_classes > 0:
            logits = self.head(self.head_drop(bn_pooled), self.head_drop(bn_proj))
        return PiVLHeadOutput((pooled, proj), (bn_pooled, bn_proj), logits)

    def embed(self, head: PiVLHeadOutput) -> torch.Tensor:
        """The re-ID embedding (pooled + projection widths) on the side of the BNNecks ``embedding`` names."""
        return torch.cat(head.features if self.embedding == 'before_bnneck' else head.bn_features, dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not self.global_pool:
            return x
        head = self.forward_reid_head(x)
        if pre_logits or head.logits is None:
            return self.embed(head)
        return head.logits


def pivl_cfg(**kwargs) -> Dict[str, Any]:
    """A π-VL timm pretrained cfg: 256x128 re-ID crops resized whole, bilinear, the paper's metadata; the tower's
    statistics and first layer in ``kwargs``."""
    return {
        'url': '',
        'num_classes': 0,
        'input_size': (3, 256, 128),
        'pool_size': None,
        'crop_pct': 1.0,
        'crop_mode': 'squash',  # re-ID crops are resized whole to 256x128 (no aspect-keeping crop)
        # CLIP-ReID resizes bilinearly (torchvision's default Resize), not as OpenAI CLIP (bicubic); π-VL keeps it
        'interpolation': 'bilinear',
        'fixed_input_size': True,
        'classifier': ('head.cls', 'head.proj'),
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2308.02738',
        'paper_name': 'Exploring Part-Informed Visual-Language Learning for Person Re-Identification',
        **kwargs,
    }


class PiVLViT(CLIPReIDHead, VisionTransformer):
    """CLIP ViT image tower + CLIP-ReID re-ID head (the π-VL / CLIP-ReID inference model).

    ``forward_features`` returns all tokens after the final norm (timm's ViT), ``forward_head(pre_logits=True)`` the
    re-ID embedding (CLS and its projection, D + E wide), ``forward`` the two classifiers' logits (B, 2, num_classes)
    or the embedding when ``num_classes=0``.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = (256, 128),
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 0,
            global_pool: Literal['', 'token'] = 'token',
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            proj_dim: int = 512,
            embedding: EmbeddingSource = 'before_bnneck',
            patch_stride: Optional[int] = None,
            num_cameras: int = 0,
            camera_embed_scale: float = 1.0,
            act_layer: Union[str, type] = 'quick_gelu',
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
            **kwargs: Any,
    ) -> None:
        """
        Args:
            img_size: Input (H, W); 256x128 as in CLIP-ReID and π-VL.
            patch_size: Patch size (16 for ViT-B/16).
            in_chans: Image channels.
            num_classes: Training identities; 0 builds no classifiers and ``forward`` returns the embedding.
            global_pool: 'token' pools the CLS token into the re-ID head; '' returns unpooled tokens.
            embed_dim, depth, num_heads, mlp_ratio: The CLIP image tower (768, 12, 12, 4 for ViT-B/16).
            proj_dim: Width of CLIP's image projection (512 for ViT-B/16), the space the text features live in.
            embedding: Test feature, 'before_bnneck' (default: CLIP-ReID's configs, ``NECK_FEAT 'before'``) or
                'after_bnneck'. π-VL's paper does not state it.
            patch_stride: Stride of the patch embedding; None = ``patch_size``. CLIP-ReID's "OLP" option (its
                ``STRIDE_SIZE``) uses 12: overlapping 16x16 patches, a 21x10 grid at 256x128. Off by default.
            num_cameras: > 0 adds CLIP-ReID's side-information embedding (SIE): a learned per-camera vector added to
                the CLS token before the blocks, so every forward then needs ``camera_ids``. 0 (default) = none.
            camera_embed_scale: Factor on the camera embedding (CLIP-ReID's ``SIE_COE``; 1.0 in its SIE+OLP run).
            act_layer: MLP activation: 'quick_gelu' for OpenAI's CLIP weights, 'gelu' for open_clip's others.
            drop_rate: Dropout before the classifiers.
            pos_drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: timm ViT regularisation (all 0 in
                CLIP-ReID).
            device, dtype: For parameters and buffers.
            kwargs: Other timm ``VisionTransformer`` arguments.
        """
        check_head_arguments(global_pool, embedding, num_classes)
        if num_cameras < 0:
            raise ValueError(f'num_cameras must be >= 0 (0: no camera embedding), got {num_cameras}')
        dd = {'device': device, 'dtype': dtype}
        if patch_stride is not None and patch_stride != patch_size:
            kwargs['embed_layer'] = partial(OverlappingPatchEmbed, stride=patch_stride)
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0, global_pool='token',
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, pre_norm=True,
            norm_layer=partial(LayerNorm, eps=1e-5), act_layer=act_layer, drop_rate=drop_rate,
            pos_drop_rate=pos_drop_rate, proj_drop_rate=proj_drop_rate, attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate, **dd, **kwargs)
        self.global_pool = global_pool
        self.embedding = embedding
        self.proj_dim = proj_dim
        # CLIP's image projection (timm keeps it as the `head` of its CLIP models; here the classifiers are the head)
        self.proj = nn.Linear(embed_dim, proj_dim, bias=False, **dd)
        self.bnneck = BNNeck(embed_dim, **dd)
        self.bnneck_proj = BNNeck(proj_dim, **dd)
        self.reid_width = embed_dim  # the head pools the CLS token
        self.head_hidden_size = embed_dim + proj_dim
        self.patch_stride = patch_stride or patch_size
        self.num_cameras = num_cameras
        self.camera_embed_scale = camera_embed_scale
        self.camera_embed = None
        if num_cameras:
            self.camera_embed = nn.Parameter(torch.zeros(num_cameras, embed_dim, **dd))
            trunc_normal_(self.camera_embed, std=.02)  # CLIP-ReID's cv_embed init
        self.num_classes = num_classes
        self.head = self._make_classifier(num_classes, **dd)

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """timm's ViT pruning; with the head, the projection and BNNecks go too (they would be left unused)."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        if prune_head:
            self.proj, self.bnneck, self.bnneck_proj = nn.Identity(), nn.Identity(), nn.Identity()
        return take_indices

    @torch.jit.ignore
    def no_weight_decay(self):
        return super().no_weight_decay() | {'camera_embed'}

    def _pos_embed(self, x: torch.Tensor, camera_ids: Optional[torch.Tensor] = None,
                   without_cameras: bool = False) -> torch.Tensor:
        """timm's CLS + position embedding, plus (SIE) the scaled camera embedding on the CLS token only."""
        x = super()._pos_embed(x)
        if without_cameras:
            return x
        if self.camera_embed is None:
            if camera_ids is not None:
                raise ValueError('camera_ids given to a model without a camera embedding (num_cameras=0)')
            return x
        if camera_ids is None:
            raise ValueError(f'this model adds a camera embedding (SIE, num_cameras={self.num_cameras}): pass '
                             'camera_ids, 0-based, one per image')
        camera_ids = torch.as_tensor(camera_ids, device=x.device)
        if camera_ids.shape != (x.shape[0],):
            raise ValueError(f'camera_ids must have shape ({x.shape[0]},), got {tuple(camera_ids.shape)}')
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling() and (
                bool((camera_ids < 0).any()) or bool((camera_ids >= self.num_cameras).any())):
            raise ValueError(f'camera_ids must lie in [0, {self.num_cameras}), got {camera_ids.tolist()}')
        cls = x[:, :1] + self.camera_embed_scale * self.camera_embed[camera_ids].unsqueeze(1).to(x.dtype)
        return torch.cat([cls, x[:, 1:]], dim=1)

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                         camera_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if camera_ids is None:
            return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise ValueError('attn_mask / is_causal are not supported together with camera_ids')
        return self.forward_tokens(x, camera_ids=camera_ids)[0]

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                camera_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.forward_features(x, attn_mask=attn_mask, is_causal=is_causal, camera_ids=camera_ids)
        return self.forward_head(x)

    def forward_tokens(self, x: torch.Tensor, output_hidden_states: bool = False,
                       camera_ids: Optional[torch.Tensor] = None, without_cameras: bool = False
                       ) -> Tuple[torch.Tensor, Optional[List[torch.Tensor]]]:
        """``forward_features`` that can also return the embeddings (after ``norm_pre``) and every block's output,
        and takes the camera ids of a model with a camera embedding. ``without_cameras``: leave the camera embedding
        out on purpose (CLIP-ReID's stage-1 image features do); otherwise a model with one needs ``camera_ids``."""
        if without_cameras and camera_ids is not None:
            raise ValueError('camera_ids given together with without_cameras=True')
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x), camera_ids, without_cameras)))
        if not output_hidden_states:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                return self.norm(checkpoint_seq(self.blocks, x)), None
            return self.norm(self.blocks(x)), None
        hidden_states = [x]
        for blk in self.blocks:
            x = blk(x)
            hidden_states.append(x)
        return self.norm(x), hidden_states

    def forward_reid_head(self, x: torch.Tensor) -> PiVLHeadOutput:
        """CLS (after the final norm) and its projection, before and after the BNNecks, and the logits."""
        cls = x[:, 0]
        return self._reid_head(cls, self.proj(cls))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: PiVLViT) -> Dict[str, torch.Tensor]:
    """Adapt a CLIP image tower or a π-VL checkpoint to ``model``.

    CLIP checkpoints, in timm's layout (``vit_base_patch16_clip_quickgelu_224.openai``: the projection is ``head``) or
    OpenAI's (``visual.*``, converted with timm's own converter): the projection becomes ``proj``, the position grid
    (14x14 at 224) is resampled to the model's (16x8 at 256x128, 21x10 with overlapping patches) bilinearly as CLIP-ReID
    resamples it, and the BNNecks, classifiers and camera embedding keep their fresh initialisation. π-VL checkpoints
    load as they are (classifiers for another number of identities, or for a model without any, are left out). Encoder weights the model needs and the
    checkpoint lacks, or has in another shape, are an error naming them.
    """
    state_dict = unwrap_state_dict(state_dict)
    if 'visual.proj' in state_dict:  # OpenAI / open_clip layout
        state_dict = _convert_openai_clip(state_dict, model)
    own = model.state_dict()
    is_clip = 'bnneck.weight' not in state_dict
    out = {}
    for k, v in state_dict.items():
        if is_clip and k in ('head.weight', 'head.bias'):
            if k == 'head.weight':
                out['proj.weight'] = v
            elif bool(v.abs().max() > 0):
                raise ValueError('the CLIP checkpoint\'s projection has a bias; CLIP\'s image projection has none')
            continue
        if not classifier_fits(k, v, own):
            continue
        out[k] = resampled_pos_embed(v, model, 'bilinear') if k == 'pos_embed' else v  # bilinear as CLIP-ReID
    return finish_loading(out, own, ('head.',) + (('bnneck.', 'bnneck_proj.', 'camera_embed') if is_clip else ()))


def _cfg(**kwargs) -> Dict[str, Any]:
    # CLIP-ReID trains and tests its CLIP ViTs at mean = std = 0.5 (its ViT configs' INPUT.PIXEL_MEAN / PIXEL_STD), not
    # OpenAI CLIP's statistics; π-VL keeps CLIP-ReID's settings
    return pivl_cfg(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), first_conv='patch_embed.proj', **kwargs)


default_cfgs = generate_default_cfgs({
    # OpenAI's CLIP ViT-B/16 image tower, the initialisation CLIP-ReID and π-VL start from
    'pivl_vit_base_patch16.clip_openai': _cfg(
        hf_hub_id='timm/vit_base_patch16_clip_224.openai', license='mit',
        notes=('backbone initialisation only (OpenAI CLIP ViT-B/16); train with examples/train.py',)),
    'pivl_vit_tiny.untrained': _cfg(),
})


def _create_pivl(variant: str, pretrained: bool = False, **kwargs) -> PiVLViT:
    return create_with_cfg(PiVLViT, variant, pretrained, checkpoint_filter_fn, **kwargs)


@register_model
def pivl_vit_base_patch16(pretrained: bool = False, **kwargs) -> PiVLViT:
    """ π-VL / CLIP-ReID inference model: CLIP ViT-B/16 image tower at 256x128 with CLIP-ReID's re-ID head. """
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, proj_dim=512)
    return _create_pivl('pivl_vit_base_patch16', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def pivl_vit_tiny(pretrained: bool = False, **kwargs) -> PiVLViT:
    """ A tiny π-VL model (4 layers, D=64, projection 32) at 256x128 for tests and demos; not for real re-ID. """
    model_args = dict(patch_size=16, embed_dim=64, depth=4, num_heads=2, proj_dim=32)
    return _create_pivl('pivl_vit_tiny', pretrained=pretrained, **dict(model_args, **kwargs))
