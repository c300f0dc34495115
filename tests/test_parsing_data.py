"""Parsing maps beside a re-ID dataset (aaformer_hf.data.parsing) and their transform with the image."""
import numpy as np
import pytest
import torch
from PIL import Image

from aaformer_hf.data import ReIDDatasetError, ReIDItems, add_parsing_column, build_transforms, load_reid_dataset
from aaformer_hf.data.synthetic import generate_market_layout


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return generate_market_layout(tmp_path_factory.mktemp('d') / 'synthetic', train_ids=4, test_ids=2,
                                  images_per_id=3, distractors=0, junk=0, parsing=True)


def test_parsing_column_points_at_each_images_map(root):
    train = add_parsing_column(load_reid_dataset('market1501', root)['train'], root)
    for image, parsing in zip(train['path'], train['parsing']):
        assert parsing == str(root / 'parsing' / 'bounding_box_train' / (image.rsplit('/', 1)[1][:-4] + '.png'))


def test_missing_and_bad_maps_are_counted_and_named(root, tmp_path):
    import shutil
    copy = shutil.copytree(root, tmp_path / 'copy')
    train = load_reid_dataset('market1501', copy)['train']
    maps = sorted((copy / 'parsing' / 'bounding_box_train').iterdir())
    maps[0].unlink(), maps[1].unlink()
    with pytest.raises(ReIDDatasetError, match=rf'2 of 12 images have no parsing map \(expected at .*{maps[0].name}'):
        add_parsing_column(train, copy)
    kept = add_parsing_column(train, copy, missing='keep')
    assert sum(p is None for p in kept['parsing']) == 2
    Image.new('L', (32, 64)).save(maps[2])  # half size
    Image.fromarray(np.full((128, 64), 25, np.uint8)).save(maps[3])  # not a LIP label
    Image.new('RGB', (64, 128)).save(maps[4])  # a colour visualisation, not labels
    with pytest.raises(ReIDDatasetError, match='3 bad parsing map') as info:
        add_parsing_column(train, copy, missing='keep')
    message = str(info.value)
    assert f'{maps[2]} (size 32x64, its image is 64x128)' in message
    assert f'{maps[3]} (label 25; LIP labels are 0..19)' in message and f'{maps[4]} (mode RGB' in message


def test_map_follows_the_images_flip_pad_and_crop(tmp_path):
    """An image whose pixel values are its labels: after the train transform both must still agree everywhere."""
    import datasets
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 20, (256, 128)).astype(np.uint8)
    Image.fromarray(np.repeat(labels[..., None] * 10, 3, axis=2)).save(tmp_path / 'image.png')
    Image.fromarray(labels).save(tmp_path / 'map.png')
    split = datasets.Dataset.from_dict({'image': [str(tmp_path / 'image.png')], 'pid': [0], 'camid': [0],
                                        'parsing': [str(tmp_path / 'map.png')]},
                                       features=datasets.Features({'image': datasets.Image(mode='RGB'),
                                                                   'pid': datasets.Value('int64'),
                                                                   'camid': datasets.Value('int64'),
                                                                   'parsing': datasets.Value('string')}))
    cfg = dict(input_size=(3, 256, 128), mean=(0, 0, 0), std=(1, 1, 1), interpolation='bilinear')
    items = ReIDItems(split, build_transforms(cfg, train=True, flip=1.0, erasing=0.0), parsing=True)
    padded = np.pad(np.fliplr(labels), 10)  # flipped, padded with background, then cropped somewhere
    for seed in range(4):
        pixels, _, _, parsing, has = items[(0, seed)]
        assert has and parsing.dtype == torch.int64 and parsing.shape == (256, 128)
        torch.testing.assert_close(torch.round(pixels[0] * 255 / 10).long(), parsing)  # aligned, padding 0 on both
        crops = [(dy, dx) for dy in range(21) for dx in range(21)
                 if np.array_equal(padded[dy:dy + 256, dx:dx + 128], parsing.numpy())]
        assert len(crops) == 1
    # erasing changes the image only
    erase = ReIDItems(split, build_transforms(cfg, train=True, flip=0.0, padding=0, erasing=1.0), parsing=True)
    pixels, _, _, parsing, _ = erase[(0, 1)]
    assert torch.equal(parsing, torch.from_numpy(labels).long())
    assert not torch.allclose(torch.round(pixels[0] * 255 / 10), parsing.float())


def test_region_masks_put_a_patch_in_every_region_it_contains():
    """SPReID's regions on a 2x2 grid of a 4x4 map, by hand: the top-left patch holds face (head) and upper-clothes
    pixels, so it belongs to head, upper body and foreground; a region with no pixel has an empty mask."""
    from aaformer_hf.data.parsing import SPREID_REGIONS, region_masks
    labels = torch.tensor([[13, 13, 0, 0],
                           [5, 0, 0, 9],
                           [0, 0, 0, 0],
                           [0, 0, 18, 0]])
    masks = region_masks(labels[None], (2, 2))
    assert list(SPREID_REGIONS) == ['foreground', 'head', 'upper_body', 'lower_body', 'shoes']
    expected = torch.tensor([[1, 1, 0, 1],   # foreground: every patch with any person label
                             [1, 0, 0, 0],   # head: face
                             [1, 0, 0, 0],   # upper body: upper-clothes
                             [0, 1, 0, 0],   # lower body: pants
                             [0, 0, 0, 1]],  # shoes
                            dtype=torch.bool)
    assert torch.equal(masks[0], expected)
    # a threshold: the top-left patch has 2 face pixels but 1 upper-clothes pixel
    assert region_masks(labels[None], (2, 2), min_pixels=2)[0, :, 0].tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError, match='does not split into a 3x2 grid'):
        region_masks(labels[None], (3, 2))
