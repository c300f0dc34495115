"""One preprocessing truth per model folder: transformers' AutoImageProcessor (from either file it may read, whichever
its version picks), its pipeline, timm's ``resolve_data_config`` + ``create_transform`` and the package's own
extraction transform all give the pixels of a hand computation with the folder's stated mean/std/interpolation, for
every kind of folder: trained by the example trainer, staged for the Hub from a timm model made with other
statistics, a π-VL model, a converted CLIP-ReID checkpoint, and a repo loaded from the (offline) Hub cache."""
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from transformers import AutoImageProcessor, pipeline

from aaformer_hf.hub.cards import model_card
from aaformer_hf.data import build_transforms
from aaformer_hf.apps.extract import load_inference_model
from aaformer_hf.hf.convert_clipreid import convert_clipreid_checkpoint
from aaformer_hf.hub import folder_config, prepare_folder, push_to_hub

from .test_convert_clipreid import clipreid_state_dict
from .test_hub import hub  # noqa: F401  (the fixture)

HALF = (0.5, 0.5, 0.5)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# PIL (the hand computation, timm's transform) and torchvision tensors (the processor, the extraction transform)
# resample with their own rounding: measured on this image in [0, 1] pixel values, at most 0.0002 apart on average and
# 0.032 at a pixel (bicubic); bilinear and bicubic resizing of it are 0.007 apart on average, another mean/std more
MEAN_TOLERANCE, MAX_TOLERANCE = 0.001, 0.04


def _image() -> Image.Image:
    """A crop of another size than the model's (so resizing matters) with sharp edges (so the interpolation does)."""
    y, x = np.mgrid[0:300, 0:140]
    rgb = np.stack([x * 255 / 140, y * 255 / 300, 128 + 120 * np.sign(np.sin(x / 2.3) * np.cos(y / 3.1))], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def _by_hand(image: Image.Image, mean, std, interpolation: str, size=(256, 128)) -> torch.Tensor:
    """Resize with PIL, scale to [0, 1], normalise: the folder's stated preprocessing, computed here."""
    resample = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[interpolation]
    array = np.asarray(image.resize(size[::-1], resample), dtype=np.float32) / 255
    return torch.from_numpy((array - np.array(mean, np.float32)) / np.array(std, np.float32)).permute(2, 0, 1)


def _close(name: str, got: torch.Tensor, expected: torch.Tensor, std) -> None:
    """Within the resampling implementations' rounding, measured in [0, 1] pixel values (times each channel's std)."""
    difference = (got.reshape(expected.shape).float() - expected).abs() * torch.tensor(std).view(3, 1, 1)
    assert difference.mean() < MEAN_TOLERANCE and difference.max() < MAX_TOLERANCE, \
        f'{name}: mean |diff| {difference.mean():.4f}, max {difference.max():.4f}'


def _trained_aaformer(tmp_path: Path, root: Path) -> Path:
    from train import TrainConfig, train  # the training example (examples/ is on the test path)
    train(TrainConfig(model='aaformer_tiny', pretrained=False, dataset='market1501', data_root=str(root),
                      output_dir=str(tmp_path / 'run'), epochs=1, warmup_epochs=1, batch_size=8, num_instances=4,
                      eval_every=100, num_workers=0, eval_batch_size=64, checkpointing_steps=None))
    return tmp_path / 'run' / 'model'


def _staged_from_timm(tmp_path: Path, name: str, **overlay) -> Path:
    model = timm.create_model(name, num_classes=3, pretrained_cfg_overlay=overlay or None)
    return prepare_folder(model, tmp_path / 'staged')


def _converted_clipreid(tmp_path: Path) -> Path:
    path = tmp_path / 'clipreid.pth'
    torch.save(clipreid_state_dict(), path)
    convert_clipreid_checkpoint(path, tmp_path / 'converted')
    return tmp_path / 'converted'


def _check_every_reader(source: str, folder: Path, mean, std, interpolation: str) -> None:
    image = _image()
    expected = _by_hand(image, mean, std, interpolation)
    processor = AutoImageProcessor.from_pretrained(source)
    assert tuple(processor.image_mean) == pytest.approx(mean) and tuple(processor.image_std) == pytest.approx(std)
    _close('AutoImageProcessor', processor(image, return_tensors='pt')['pixel_values'], expected, std)
    # transformers <= 5.24 reads preprocessor_config.json, >= 5.25 config.json for a local folder: both give this
    for file in ('preprocessor_config.json', 'config.json'):
        from_file = type(processor).from_dict(json.loads((folder / file).read_text()))
        _close(f'processor from {file}', from_file(image, return_tensors='pt')['pixel_values'], expected, std)
    extractor = pipeline('image-feature-extraction', model=source)
    _close('pipeline', extractor.preprocess(image)['pixel_values'], expected, std)
    timm_name = f'hf-hub:{source}' if source != str(folder) else f'local-dir:{folder}'
    timm_model = timm.create_model(timm_name, pretrained=False)
    data_config = resolve_data_config(model=timm_model)
    assert data_config['mean'] == pytest.approx(mean) and data_config['interpolation'] == interpolation
    _close('timm create_transform', create_transform(**data_config)(image), expected, std)
    ours = build_transforms(timm_model.pretrained_cfg, train=False)(image)
    _close('aaformer-hf extract transform', ours, expected, std)
    card = (folder / 'README.md').read_text() if (folder / 'README.md').is_file() else str(
        model_card(folder_config(folder), 'org/name'))
    assert '(' + ', '.join(f'{v:.4g}' for v in mean) + ')' in card, 'the card states another mean'


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
    from aaformer_hf.data.synthetic import generate_market_layout
    return generate_market_layout(tmp_path_factory.mktemp('synthetic') / 'market', train_ids=4, test_ids=3,
                                  images_per_id=4, distractors=1, junk=1, seed=3)


def test_a_trained_aaformer_folder(tmp_path, synthetic_root):
    folder = _trained_aaformer(tmp_path, synthetic_root)
    _check_every_reader(str(folder), folder, HALF, HALF, 'bilinear')


def test_a_folder_staged_from_a_timm_model_with_other_statistics(tmp_path):
    folder = _staged_from_timm(tmp_path, 'aaformer_tiny', mean=IMAGENET[0], std=IMAGENET[1],
                               interpolation='bicubic')
    _check_every_reader(str(folder), folder, *IMAGENET, 'bicubic')


def test_a_pivl_folder_has_clipreids_preprocessing(tmp_path):
    """The π-VL family's defaults are CLIP-ReID's (mean = std = 0.5, bilinear), which π-VL keeps."""
    folder = _staged_from_timm(tmp_path, 'pivl_vit_tiny')
    _check_every_reader(str(folder), folder, HALF, HALF, 'bilinear')


def test_a_pivl_folder_with_openai_clip_statistics(tmp_path):
    folder = _staged_from_timm(tmp_path / 'openai', 'pivl_vit_tiny', mean=CLIP[0], std=CLIP[1], interpolation='bicubic')
    _check_every_reader(str(folder), folder, *CLIP, 'bicubic')


def test_a_pivl_cnn_folder_has_clipreids_cnn_preprocessing(tmp_path):
    """CLIP-ReID's CNN config normalises with ImageNet's statistics (not OpenAI CLIP's), bilinear resizing."""
    folder = _staged_from_timm(tmp_path, 'pivl_resnet_tiny')
    _check_every_reader(str(folder), folder, *IMAGENET, 'bilinear')


def test_a_converted_clipreid_folder_keeps_clipreids_preprocessing(tmp_path):
    """CLIP-ReID normalises with mean = std = 0.5 and resizes bilinearly (the π-VL family's defaults too)."""
    folder = _converted_clipreid(tmp_path)
    _check_every_reader(str(folder), folder, HALF, HALF, 'bilinear')


def test_a_hub_repo(tmp_path, hub):  # noqa: F811  (the fixture)
    push_to_hub(_converted_clipreid(tmp_path), 'org/clipreid')
    snapshot, = (hub.cache / 'models--org--clipreid' / 'snapshots').iterdir()
    _check_every_reader('org/clipreid', snapshot, HALF, HALF, 'bilinear')


def test_a_folder_whose_two_files_disagree_is_refused(tmp_path):
    """A hand-edited preprocessor_config.json: transformers would read it or not depending on its version."""
    folder = _converted_clipreid(tmp_path)
    path = folder / 'preprocessor_config.json'
    processor = json.loads(path.read_text())
    path.write_text(json.dumps({**processor, 'image_mean': list(CLIP[0])}))
    for action in (lambda: folder_config(folder), lambda: prepare_folder(folder, tmp_path / 'out'),
                   lambda: load_inference_model(str(folder))):
        with pytest.raises(ValueError, match='preprocessor_config.json and .*config.json describe different') as error:
            action()
        assert 'mean' in str(error.value)


def test_preprocessing_fields_are_checked_and_always_saved(tmp_path):
    from aaformer_hf import AAformerConfig, PiVLConfig
    assert AAformerConfig(image_std=0.25).image_std == (0.25, 0.25, 0.25)  # one number for every channel
    assert PiVLConfig().image_mean == HALF and PiVLConfig().interpolation == 'bilinear'  # CLIP-ReID's, the family's
    from aaformer_hf import PiVLResNetConfig
    assert (PiVLResNetConfig().image_mean, PiVLResNetConfig().image_std) == IMAGENET  # CLIP-ReID's CNN config
    for bad, match in ((dict(image_mean=(0.5, 0.5)), 'image_mean must hold one number per channel'),
                       (dict(image_std=(0.5, 0.0, 0.5)), 'image_std must be > 0'),
                       (dict(interpolation='nearest'), 'interpolation must be one of')):
        with pytest.raises(ValueError, match=match):
            AAformerConfig(**bad)
    # written even when equal to today's defaults: a later release changing a family default keeps saved pixels
    AAformerConfig().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / 'config.json').read_text())
    assert (saved['image_mean'], saved['image_std'], saved['interpolation']) == ([0.5] * 3, [0.5] * 3, 'bilinear')
    assert saved['pretrained_cfg']['crop_mode'] == 'squash' and saved['pretrained_cfg']['crop_pct'] == 1.0
