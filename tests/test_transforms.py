"""Train/test transforms take size, mean and std from the model's config."""
import random

import numpy as np
import timm
import torch
from PIL import Image

import aaformer_hf  # noqa: F401
from aaformer_hf.data import build_transforms


def test_test_transform_resizes_and_normalises_with_the_model_config():
    cfg = dict(timm.create_model('aaformer_tiny', device='meta').pretrained_cfg)
    image = Image.fromarray(np.full((300, 100, 3), 255, dtype=np.uint8))
    out = build_transforms(cfg, train=False)(image)
    assert out.shape == (3, 256, 128)
    torch.testing.assert_close(out, torch.ones_like(out))  # (1 - 0.5) / 0.5
    imagenet = dict(cfg, input_size=(3, 384, 128), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    out = build_transforms(imagenet, train=False)(image)
    assert out.shape == (3, 384, 128)
    torch.testing.assert_close(out[0], torch.full((384, 128), (1 - 0.485) / 0.229))


def test_train_transform_augments_reproducibly():
    cfg = dict(timm.create_model('aaformer_tiny', device='meta').pretrained_cfg)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (256, 128, 3), dtype=np.uint8))
    transform = build_transforms(cfg, train=True)
    # torchvision draws from torch's generator, timm's RandomErasing also from Python's (DataLoader workers seed both)
    torch.manual_seed(0), random.seed(0)
    a = [transform(image) for _ in range(8)]
    torch.manual_seed(0), random.seed(0)
    b = [transform(image) for _ in range(8)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(x.shape == (3, 256, 128) for x in a)
    assert len({x.sum().item() for x in a}) > 1  # flips, crops and erasing differ between draws
    plain = build_transforms(cfg, train=True, flip=0, padding=0, erasing=0)(image)
    torch.testing.assert_close(plain, build_transforms(cfg, train=False)(image))  # augmentations off = test path
