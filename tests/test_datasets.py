"""Dataset loaders on generated miniatures of each layout, file names exactly as the real datasets name them."""
import numpy as np
import pytest
from PIL import Image

from aaformer_hf.data import ReIDDatasetError, load_reid_dataset


def write(folder, names, mode='RGB'):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        pixels = np.full((16, 8, 3), 40 * i % 255, dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        image.save(folder / name, format='PNG' if name.endswith('.png') else 'JPEG' if mode != 'RGBA' else 'PNG')


def test_market1501_layout(tmp_path):
    write(tmp_path / 'bounding_box_train', ['0002_c1s1_000451_03.jpg', '0002_c2s1_000551_01.jpg',
                                            '0007_c3s1_000101_01.jpg', 'Thumbs.db'])
    write(tmp_path / 'query', ['0001_c1s1_001051_00.jpg'])
    write(tmp_path / 'bounding_box_test', ['0001_c2s1_000301_01.jpg', '0000_c3s1_000000_02.jpg',
                                           '-1_c1s1_000401_03.jpg'])
    ds = load_reid_dataset('market1501', tmp_path)
    assert set(ds) == {'train', 'query', 'gallery'}
    assert list(ds['train']['pid']) == [0, 0, 1] and list(ds['train']['pid_original']) == [2, 2, 7]
    assert list(ds['train']['camid']) == [0, 1, 2]
    assert list(ds['query']['pid']) == [1] and list(ds['query']['camid']) == [0]
    assert list(ds['gallery']['pid']) == [0, 1]  # junk (-1) dropped, distractor (0) kept; sorted by file name
    assert ds['gallery'][1]['image'].mode == 'RGB' and ds['gallery'][1]['path'].endswith('0001_c2s1_000301_01.jpg')


def test_dukemtmc_layout_and_modes(tmp_path):
    write(tmp_path / 'bounding_box_train', ['0005_c2_f0046985.jpg'], mode='L')
    write(tmp_path / 'query', ['0005_c1_f0045843.jpg'])
    write(tmp_path / 'bounding_box_test', ['0005_c3_f0047123.jpg'], mode='CMYK')
    ds = load_reid_dataset('dukemtmc', tmp_path)
    assert ds['train'][0]['image'].mode == 'RGB' and ds['gallery'][0]['image'].mode == 'RGB'
    assert list(ds['query']['camid']) == [0] and list(ds['gallery']['camid']) == [2]


def test_errors_name_the_path(tmp_path):
    with pytest.raises(ReIDDatasetError, match='dataset folder not found'):
        load_reid_dataset('market1501', tmp_path / 'missing')
    write(tmp_path / 'bounding_box_train', ['0002_c1s1_000451_03.jpg'])
    with pytest.raises(ReIDDatasetError, match='query: folder not found'):
        load_reid_dataset('market1501', tmp_path)
    write(tmp_path / 'query', ['not_a_reid_name.jpg'])
    with pytest.raises(ReIDDatasetError, match='not_a_reid_name.jpg: file name does not follow'):
        load_reid_dataset('market1501', tmp_path)
    (tmp_path / 'query' / 'not_a_reid_name.jpg').unlink()
    with pytest.raises(ReIDDatasetError, match='query: no images'):
        load_reid_dataset('market1501', tmp_path)
    with pytest.raises(ValueError, match='unknown dataset'):
        load_reid_dataset('imagenet', tmp_path)


@pytest.mark.parametrize('version', ['V1', 'V2'])
def test_msmt17_lists(tmp_path, version):
    train_dir, test_dir = ('train', 'test') if version == 'V1' else ('mask_train_v2', 'mask_test_v2')
    train = ['0000/0000_000_01_0303morning_0015_0.jpg 0', '0000/0000_001_05_0303morning_0016_0.jpg 0',
             '0001/0001_000_02_0303noon_0101_1.jpg 1']
    val = ['0002/0002_000_03_0303afternoon_0200_0.jpg 2']
    query = ['0000/0000_000_12_0303morning_0500_0.jpg 0']
    gallery = ['0000/0000_010_13_0303morning_0501_1.jpg 0', '0007/0007_000_01_0303morning_0600_0.jpg 7']
    for folder, lines in ((train_dir, train + val), (test_dir, query + gallery)):
        for line in lines:
            relative = line.split()[0]
            write(tmp_path / folder / relative.split('/')[0], [relative.split('/')[1]])
    for name, lines in (('train', train), ('val', val), ('query', query), ('gallery', gallery)):
        (tmp_path / f'list_{name}.txt').write_text('\n'.join(lines) + '\n')
    ds = load_reid_dataset('msmt17', tmp_path)
    assert list(ds['train']['pid']) == [0, 0, 1] and list(ds['train']['camid']) == [0, 4, 1]
    assert list(ds['query']['camid']) == [11] and list(ds['gallery']['pid']) == [0, 7]
    with_val = load_reid_dataset('msmt17', tmp_path, include_val=True)
    assert len(with_val['train']) == 4 and list(with_val['train']['pid_original'])[-1] == 2
    (tmp_path / 'list_query.txt').write_text('0000/not_msmt.jpg 0\n')
    with pytest.raises(ReIDDatasetError, match='list_query.txt:1: expected'):
        load_reid_dataset('msmt17', tmp_path)
    with pytest.raises(ValueError, match='unknown option'):
        load_reid_dataset('market1501', tmp_path, include_val=True)
