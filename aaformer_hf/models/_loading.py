"""What every model family shares in building and loading: timm's ``build_model_with_cfg`` with pretrained files
named in errors, and the checkpoint-filter steps (unwrapping, classifier fit, position-grid resampling, the encoder
key check and the model's own initialisation for what may be missing)."""
import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
from safetensors import SafetensorError
from timm.layers import resample_abs_pos_embed
from timm.models import build_model_with_cfg

__all__ = ['create_with_cfg', 'unwrap_state_dict', 'classifier_fits', 'resampled_pos_embed', 'finish_loading']

_logger = logging.getLogger(__name__)


def create_with_cfg(model_cls: type, variant: str, pretrained: bool, filter_fn: Callable, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a family's entrypoints (feature getter, the family's checkpoint filter),
    with a missing or unreadable local pretrained file named in the error."""
    out_indices = kwargs.pop('out_indices', 3)
    with _pretrained_file_checked(variant, kwargs if pretrained else {}):
        return build_model_with_cfg(
            model_cls, variant, pretrained,
            pretrained_filter_fn=filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
            **kwargs,
        )


def unwrap_state_dict(state_dict: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint saved bare or under 'state_dict' / 'model'."""
    state_dict = state_dict.get('state_dict', state_dict)
    return state_dict.get('model', state_dict)


def classifier_fits(key: str, value: torch.Tensor, own: Dict[str, torch.Tensor]) -> bool:
    """False (logged) for a re-ID checkpoint's identity classifier the model does not have in that shape: loaded as a
    feature extractor (num_classes=0) or for other identities, the model keeps its own."""
    if not key.startswith('head.') or (key in own and own[key].shape == value.shape):
        return True
    _logger.info('not loading %s %s: the model has %s', key, tuple(value.shape),
                 tuple(own[key].shape) if key in own else 'no identity classifier')
    return False


def resampled_pos_embed(pos_embed: torch.Tensor, model: nn.Module, interpolation: str) -> torch.Tensor:
    """A checkpoint's (1, 1 + N, D) position embedding on the model's patch grid (unchanged if already there)."""
    if pos_embed.shape == model.pos_embed.shape:
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed, new_size=model.patch_embed.grid_size, old_size=_source_grid(pos_embed.shape[1] - 1, model),
        num_prefix_tokens=1, interpolation=interpolation, antialias=False, verbose=True)


def _source_grid(n: int, model: nn.Module) -> Tuple[int, int]:
    """Patch grid of a checkpoint's pos_embed, stated explicitly rather than guessed by resampling code."""
    if n == model.patch_embed.num_patches:
        return tuple(model.patch_embed.grid_size)
    side = math.isqrt(n)
    if side * side == n:  # ImageNet and CLIP ViTs are square (224 / 16 = 14x14)
        return side, side
    raise ValueError(
        f'Cannot tell the patch grid of a checkpoint pos_embed with {n} patch positions: it is neither the model grid '
        f'{tuple(model.patch_embed.grid_size)} nor square. Resample it to the model grid before loading.')


def finish_loading(loaded: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor], may_lack: Tuple[str, ...]
                   ) -> Dict[str, torch.Tensor]:
    """Check the encoder keys (``check_encoder_keys``), then keep the model's own initialisation for what ``loaded``
    may lack (keys starting with ``may_lack``)."""
    check_encoder_keys(loaded, own, may_lack)
    for k, v in own.items():
        loaded.setdefault(k, v)
    return loaded


def check_encoder_keys(loaded: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor], may_lack: Tuple[str, ...]
                       ) -> None:
    """Encoder weights missing, left over or of another shape mean the checkpoint is another architecture."""
    missing = [k for k in own if k not in loaded and not k.startswith(may_lack)]
    unexpected = [k for k in loaded if k not in own]
    reshaped = [f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}' for k, v in loaded.items()
                if k in own and v.shape != own[k].shape]
    problems = [f'{len(keys)} {what}: {", ".join(keys[:6])}{", ..." if len(keys) > 6 else ""}'
                for what, keys in (('missing', missing), ('unexpected', unexpected), ('of another shape', reshaped))
                if keys]
    if problems:
        raise ValueError('the checkpoint does not fit this model\'s encoder (another depth, width or patch size?): '
                         + '; '.join(problems))


def _pretrained_file(kwargs: Dict[str, Any]) -> Optional[str]:
    """The local file a timm call loads pretrained weights from, if it names one."""
    for key in ('pretrained_cfg_overlay', 'pretrained_cfg'):
        cfg = kwargs.get(key)
        if isinstance(cfg, dict) and cfg.get('file'):
            return str(cfg['file'])
    return None


def _is_local_dir(kwargs: Dict[str, Any]) -> bool:
    cfg = kwargs.get('pretrained_cfg')
    return isinstance(cfg, dict) and cfg.get('source') == 'local-dir'


@contextlib.contextmanager
def _pretrained_file_checked(variant: str, kwargs: Dict[str, Any]) -> Iterator[None]:
    """Around timm's ``build_model_with_cfg``: a missing local pretrained file, or an unreadable safetensors file,
    is an error naming the file (timm's own are empty or name none). ``kwargs``: the entrypoint's, when pretrained."""
    file = _pretrained_file(kwargs)
    if file is not None and _is_local_dir(kwargs):  # timm's 'local-dir:' names the folder, not the file
        if not Path(file).is_dir():
            raise FileNotFoundError(f'{file}: model folder not found')
    elif file is not None and not Path(file).is_file():
        raise FileNotFoundError(f'{file}: pretrained weights file not found')
    try:
        yield
    except SafetensorError as error:
        raise ValueError(f'{file or variant + " pretrained weights"}: unreadable safetensors file ({error}); '
                         'truncated or not a safetensors file?') from error
