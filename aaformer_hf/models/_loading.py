"""Loading rules every model family shares: pretrained files named in errors, encoder weights checked."""
import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from safetensors import SafetensorError

__all__ = ['check_encoder_keys', 'pretrained_file_checked']


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


@contextlib.contextmanager
def pretrained_file_checked(variant: str, kwargs: Dict[str, Any]) -> Iterator[None]:
    """Around timm's ``build_model_with_cfg``: a missing local pretrained file, or an unreadable safetensors file,
    is an error naming the file (timm's own are empty or name none). ``kwargs``: the entrypoint's, when pretrained."""
    file = _pretrained_file(kwargs)
    if file is not None and not Path(file).is_file():
        raise FileNotFoundError(f'{file}: pretrained weights file not found')
    try:
        yield
    except SafetensorError as error:
        raise ValueError(f'{file or variant + " pretrained weights"}: unreadable safetensors file ({error}); '
                         'truncated or not a safetensors file?') from error
