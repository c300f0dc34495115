"""Train and test transforms for re-ID crops (the BoT / TransReID recipe), from torchvision.transforms.v2 and timm.

Train: resize to the model's input size, horizontal flip (0.5), pad 10 + random crop back to size, to tensor,
normalise, random erasing (0.5, timm's, per-pixel random values as TransReID uses). Test: resize, normalise.
Called with an image and a ``torchvision.tv_tensors.Mask`` (a parsing map), the geometric steps move both alike
(the mask resized with nearest labels, padded with background 0) and erasing touches the image only.
Mean, std, size and interpolation come from the model's timm ``pretrained_cfg`` (or ``data_config``), never a
hard-coded ImageNet default.
"""
from typing import Any, Dict

import torch
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2

__all__ = ['build_transforms']

_INTERPOLATION = {'bilinear': v2.InterpolationMode.BILINEAR, 'bicubic': v2.InterpolationMode.BICUBIC}


def build_transforms(config: Dict[str, Any], train: bool, flip: float = 0.5, padding: int = 10,
                     erasing: float = 0.5) -> v2.Compose:
    """``config``: a timm pretrained/data config with ``input_size`` (C, H, W), ``mean``, ``std`` and optionally
    ``interpolation`` (e.g. ``model.pretrained_cfg``). Takes PIL images, returns normalised float tensors."""
    _, height, width = config['input_size']
    interpolation = _INTERPOLATION.get(config.get('interpolation', 'bilinear'), v2.InterpolationMode.BILINEAR)
    steps = [v2.ToImage(), v2.Resize((height, width), interpolation=interpolation, antialias=True)]
    if train:
        steps += [v2.RandomHorizontalFlip(flip), v2.Pad(padding), v2.RandomCrop((height, width))]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(config['mean']), list(config['std']))]
    if train and erasing > 0:
        steps.append(_ImageOnly(RandomErasing(probability=erasing, mode='pixel', device='cpu')))
    return v2.Compose(steps)


class _ImageOnly:
    """Apply a single-input transform (timm's RandomErasing) to the image and pass a mask through unchanged."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image, *others):
        return (self.transform(image), *others) if others else self.transform(image)

    def __repr__(self) -> str:
        return repr(self.transform)
