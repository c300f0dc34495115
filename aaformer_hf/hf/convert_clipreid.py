# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Convert a CLIP-ReID checkpoint (Li et al., AAAI 2023; the ``.pth`` state dicts its README links), ViT-B/16 or
RN50, into the π-VL inference model's layout (``PiVLConfig`` / ``PiVLResNetConfig``) and a ``save_pretrained``
folder that timm and transformers both load.

    python -m aaformer_hf.hf.convert_clipreid ViT-B-16_60.pth ./clipreid-msmt17
    python -m aaformer_hf.hf.convert_clipreid RN50_120.pth ./clipreid-rn50-msmt17

CLIP-ReID keeps OpenAI's CLIP image tower as ``image_encoder.*`` (position embedding already on the re-ID grid), two
BatchNorm necks (``bottleneck``, ``bottleneck_proj``), two bias-free classifiers (``classifier``,
``classifier_proj``) and, with SIE, a camera embedding ``cv_embed``; its prompt learner and text encoder are
training-only and are left out (the converter says how many tensors it leaves). The checkpoint does not record the
input size or the patch stride: the size is an argument (CLIP-ReID's 256x128 by default), the stride is read off the
position grid (16, or 12 for "OLP"), nor its preprocessing: CLIP-ReID's ViT configs use mean = std = 0.5, its CNN
config ImageNet's mean and std, and its test transform resizes bilinearly (``T.Resize``), which the saved config
states (and with it timm's ``pretrained_cfg``, the image processor and the card). The RN50 variant keeps OpenAI's
ResNet tower (``image_encoder.layer*``, ``attnpool``; the last stage at stride 1, the attention pool's position
embedding on the re-ID grid) and has no camera embedding. Files are read with ``torch.load(weights_only=True)``;
nothing is unpickled.
"""
import argparse
import logging
import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from timm.models.vision_transformer import _convert_openai_clip

from ..models._loading import unwrap_state_dict
from ..models.pivl_resnet import clip_resnet_state_dict
from .configuration_pivl import PiVLConfig
from .configuration_pivl_resnet import PiVLResNetConfig
from .image_processing_pivl import PiVLImageProcessor
from .modeling_pivl import PiVLForReID, PiVLModel
from .modeling_pivl_resnet import PiVLResNetForReID, PiVLResNetModel

__all__ = ['convert_clipreid_state_dict', 'convert_clipreid_checkpoint', 'main']

_logger = logging.getLogger(__name__)

CLIPREID_MEAN = CLIPREID_STD = (0.5, 0.5, 0.5)  # INPUT.PIXEL_MEAN / PIXEL_STD in CLIP-ReID's ViT person configs
CLIPREID_CNN_MEAN, CLIPREID_CNN_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # its CNN config: ImageNet's
CLIPREID_INTERPOLATION = 'bilinear'  # its test transform's T.Resize default
_TRAINING_ONLY = ('prompt_learner.', 'text_encoder.')
_NECKS = {'bottleneck.': 'bnneck.', 'bottleneck_proj.': 'bnneck_proj.'}
_CLASSIFIERS = {'classifier.weight': 'head.cls.weight', 'classifier_proj.weight': 'head.proj.weight'}


def _patch_stride(num_positions: int, image_size: Tuple[int, int], patch: int) -> int:
    """The stride (patch size down to 1) whose grid on ``image_size`` has ``num_positions`` patches."""
    for stride in range(patch, 0, -1):
        if ((image_size[0] - patch) // stride + 1) * ((image_size[1] - patch) // stride + 1) == num_positions:
            return stride
    raise ValueError(f'the checkpoint\'s position embedding has {num_positions} patch positions, which no patch '
                     f'stride gives at image size {tuple(image_size)}; pass the size it was trained at')


def convert_clipreid_state_dict(
        state_dict: Dict[str, torch.Tensor],
        image_size: Sequence[int] = (256, 128),
        camera_embed_scale: float = 1.0,
        embedding: str = 'before_bnneck',
        image_mean: Optional[Sequence[float]] = None,
        image_std: Optional[Sequence[float]] = None,
        interpolation: str = CLIPREID_INTERPOLATION,
) -> Tuple[Dict[str, torch.Tensor], PiVLConfig | PiVLResNetConfig]:
    """CLIP-ReID weights -> (π-VL weights in timm's layout, the config describing them: ``PiVLConfig`` for a ViT,
    ``PiVLResNetConfig`` for RN50).

    ``camera_embed_scale`` is CLIP-ReID's ``SIE_COE`` (not stored in checkpoints; used only if it has ``cv_embed``);
    ``image_mean`` / ``image_std`` / ``interpolation``: the preprocessing it was trained with (None: CLIP-ReID's
    config for that backbone, 0.5 for the ViT, ImageNet's for RN50).
    Keys the converter does not know are an error naming them; the training-only prompt learner and text encoder are
    left out and logged.
    """
    state_dict = unwrap_state_dict(state_dict)
    state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()}  # DataParallel / DDP saves
    broken = [k for k, v in state_dict.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise ValueError(f'{len(broken)} tensor(s) hold NaN or Inf ({", ".join(broken[:4])}'
                         f'{", ..." if len(broken) > 4 else ""}): a diverged or damaged checkpoint')
    resnet = 'image_encoder.attnpool.c_proj.weight' in state_dict
    if 'image_encoder.proj' not in state_dict and not resnet:
        raise ValueError('not a CLIP-ReID checkpoint: neither a ViT image tower (image_encoder.proj) nor an RN50 one '
                         '(image_encoder.attnpool.*)')
    image_size = tuple(int(s) for s in image_size)
    visual, out, left_out, unknown = {}, {}, [], []
    for key, value in state_dict.items():
        if key.startswith('image_encoder.'):
            visual['visual.' + key.removeprefix('image_encoder.')] = value
        elif key.startswith(tuple(_NECKS)):
            prefix = 'bottleneck_proj.' if key.startswith('bottleneck_proj.') else 'bottleneck.'
            out[_NECKS[prefix] + key.removeprefix(prefix)] = value
        elif key in _CLASSIFIERS:
            out[_CLASSIFIERS[key]] = value
        elif key == 'cv_embed':
            out['camera_embed'] = value
        elif key.startswith(_TRAINING_ONLY):
            left_out.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f'{len(unknown)} CLIP-ReID checkpoint key(s) this converter does not know: '
                         f'{", ".join(unknown[:6])}{", ..." if len(unknown) > 6 else ""}')
    if left_out:
        _logger.info('left out %d training-only tensors (prompt learner, text encoder)', len(left_out))
    num_labels = out['head.cls.weight'].shape[0] if 'head.cls.weight' in out else 2
    if resnet:
        if 'camera_embed' in out:
            raise ValueError('an RN50 checkpoint with a camera embedding (cv_embed): CLIP-ReID\'s CNN model never '
                             'uses it, so its features would not be what the checkpoint was evaluated with')
        tower, config = _resnet_tower(visual, image_size, num_labels, embedding=embedding,
                                      image_mean=tuple(image_mean or CLIPREID_CNN_MEAN),
                                      image_std=tuple(image_std or CLIPREID_CNN_STD), interpolation=interpolation)
        return {**tower, **out}, config

    conv = visual['visual.conv1.weight']
    width, patch = conv.shape[0], conv.shape[-1]
    depth = len({int(m.group(1)) for k in visual if (m := re.match(r'visual\.transformer\.resblocks\.(\d+)\.', k))})
    stride = _patch_stride(visual['visual.positional_embedding'].shape[0] - 1, image_size, patch)
    config = PiVLConfig(
        image_size=image_size, patch_size=patch, num_channels=conv.shape[1], hidden_size=width,
        num_hidden_layers=depth, num_attention_heads=width // 64,  # CLIP's head width is 64
        intermediate_size=visual['visual.transformer.resblocks.0.mlp.c_fc.weight'].shape[0],
        projection_dim=visual['visual.proj'].shape[1], hidden_act='quick_gelu', embedding=embedding,
        patch_stride=None if stride == patch else stride,
        num_cameras=out['camera_embed'].shape[0] if 'camera_embed' in out else 0,
        camera_embed_scale=camera_embed_scale, image_mean=tuple(image_mean or CLIPREID_MEAN),
        image_std=tuple(image_std or CLIPREID_STD), interpolation=interpolation, num_labels=num_labels)
    tower = _convert_openai_clip(visual, model=None)  # timm's OpenAI-CLIP key mapping; the projection is `head`
    tower['proj.weight'] = tower.pop('head.weight')
    del tower['head.bias']  # zeros timm adds; CLIP's projection has none
    return {**tower, **out}, config


def _resnet_tower(visual: Dict[str, torch.Tensor], image_size: Tuple[int, int], num_labels: int, **fields
                  ) -> Tuple[Dict[str, torch.Tensor], PiVLResNetConfig]:
    """OpenAI's CLIP ResNet (``visual.*``) as CLIP-ReID keeps it -> timm's layout and its ``PiVLResNetConfig``."""
    def layer_of(key: str) -> Optional[Tuple[int, int]]:
        m = re.match(r'visual\.layer(\d)\.(\d+)\.', key)
        return (int(m.group(1)), int(m.group(2))) if m else None

    blocks = {layer_of(k) for k in visual if layer_of(k)}
    absent = [f'image_encoder.layer{stage}.*' for stage in (1, 2, 3, 4) if not any(s == stage for s, _ in blocks)]
    needed = [f'visual.{name}.weight' for name in ('conv1', 'conv2', 'conv3', 'attnpool.c_proj')]
    absent += [k.replace('visual.', 'image_encoder.') for k in needed + ['visual.attnpool.positional_embedding']
               if k not in visual]
    if absent:
        raise ValueError(f'not a complete CLIP-ReID RN50 checkpoint: no {", ".join(absent)}')
    depths = tuple(1 + max(b for s, b in blocks if s == stage) for stage in (1, 2, 3, 4))
    widths = tuple(visual[f'visual.layer{stage}.0.conv3.weight'].shape[0] for stage in (1, 2, 3, 4))
    stems = tuple(visual[f'visual.conv{i}.weight'].shape[0] for i in (1, 2, 3))
    positions = visual['visual.attnpool.positional_embedding'].shape[0] - 1
    last_stride = next((s for s in (1, 2) if (image_size[0] // (16 * s)) * (image_size[1] // (16 * s)) == positions),
                       None)
    if last_stride is None:
        raise ValueError(f'the attention pool\'s position embedding has {positions} positions, which neither last '
                         f'stride gives at image size {tuple(image_size)}; pass the size it was trained at')
    config = PiVLResNetConfig(
        image_size=image_size, num_channels=visual['visual.conv1.weight'].shape[1], stem_sizes=stems,
        hidden_sizes=widths, depths=depths, projection_dim=visual['visual.attnpool.c_proj.weight'].shape[0],
        last_stride=last_stride, num_labels=num_labels, **fields)
    return clip_resnet_state_dict(visual), config


def convert_clipreid_checkpoint(
        checkpoint: str | Path,
        output_dir: str | Path,
        image_size: Sequence[int] = (256, 128),
        camera_embed_scale: float = 1.0,
        embedding: str = 'before_bnneck',
        image_mean: Optional[Sequence[float]] = None,
        image_std: Optional[Sequence[float]] = None,
        interpolation: str = CLIPREID_INTERPOLATION,
        overwrite: bool = False,
) -> PiVLModel | PiVLForReID | PiVLResNetModel | PiVLResNetForReID:
    """Read a CLIP-ReID ``.pth`` (weights only), convert it and ``save_pretrained`` it (with its image processor)
    into ``output_dir``; returns the model (the ``...ForReID`` class when the checkpoint has its classifiers)."""
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if not checkpoint.is_file():
        raise FileNotFoundError(f'{checkpoint}: CLIP-ReID checkpoint not found')
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f'{output_dir}: exists and is not a folder')
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f'{output_dir}: not empty; choose another folder or pass --overwrite (overwrite=True)')
    if not output_dir.parent.is_dir():
        raise FileNotFoundError(f'{output_dir}: its folder {output_dir.parent} does not exist')
    try:
        state_dict = torch.load(checkpoint, map_location='cpu', weights_only=True)
    except Exception as error:  # unpickling refused or a damaged file: name it
        raise ValueError(f'{checkpoint}: not a plain state dict torch.load(weights_only=True) can read ({error})') \
            from error
    try:
        weights, config = convert_clipreid_state_dict(state_dict, image_size, camera_embed_scale, embedding,
                                                       image_mean, image_std, interpolation)
        classes = (PiVLResNetForReID, PiVLResNetModel) if isinstance(config, PiVLResNetConfig) else (PiVLForReID,
                                                                                                     PiVLModel)
        model = classes[0 if 'head.cls.weight' in weights else 1](config)
        model.timm_model.load_state_dict(weights, strict=True)  # every tensor placed, none left over
    except (KeyError, RuntimeError) as error:  # a key missing, a tensor of another shape
        detail = f'missing tensor {error}' if isinstance(error, KeyError) else ' '.join(str(error).split())
        raise ValueError(f'{checkpoint}: not a complete CLIP-ReID checkpoint ({detail})') from error
    except ValueError as error:
        raise ValueError(f'{checkpoint}: {error}') from error
    model.eval().save_pretrained(output_dir)
    PiVLImageProcessor.from_config(config).save_pretrained(output_dir)
    return model


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = argparse.ArgumentParser(
        prog=prog or 'python -m aaformer_hf.hf.convert_clipreid', allow_abbrev=False,
        description='Convert a CLIP-ReID checkpoint (ViT-B/16 or RN50) into a timm / transformers π-VL model folder.')
    parser.add_argument('checkpoint', help='CLIP-ReID .pth state dict (read with weights_only=True)')
    parser.add_argument('output_dir', help='folder for save_pretrained (must be new or empty)')
    parser.add_argument('--image_size', type=int, nargs=2, default=(256, 128), metavar=('H', 'W'),
                        help='input size the checkpoint was trained at (default: 256 128)')
    parser.add_argument('--sie_coe', type=float, default=1.0,
                        help='CLIP-ReID MODEL.SIE_COE of an SIE checkpoint (default: 1.0, its SIE+OLP run)')
    parser.add_argument('--neck_feat', choices=('before', 'after'), default='before',
                        help='test feature before or after the BNNecks (CLIP-ReID TEST.NECK_FEAT, default before)')
    parser.add_argument('--overwrite', action='store_true', help='write into a non-empty output folder')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        model = convert_clipreid_checkpoint(args.checkpoint, args.output_dir, args.image_size, args.sie_coe,
                                            f'{args.neck_feat}_bnneck', overwrite=args.overwrite)
    except (OSError, ValueError) as error:
        parser.exit(2, f'{parser.prog}: error: {error}\n')
    config = model.config
    identities = config.num_labels if isinstance(model, (PiVLForReID, PiVLResNetForReID)) else 0
    if isinstance(config, PiVLResNetConfig):
        tower = (f'RN50-style, depths {config.depths}, last stride {config.last_stride}, grid '
                 f'{tuple(model.timm_model.attn_pool.feat_size)}')
    else:
        tower = (f'{config.num_hidden_layers} layers, grid {tuple(model.timm_model.patch_embed.grid_size)}, '
                 f'{config.num_cameras} camera(s)')
    print(f'{args.output_dir}: {type(model).__name__}, {tower}, {identities} identities; '
          f'embedding {config.embedding_size}-d')


if __name__ == '__main__':
    main()
