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
    write(tmp_path / 'bounding_box_train', ['0004_c2_f0046985.jpg'], mode='L')
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


@pytest.mark.parametrize('variant', ['labeled', 'detected'])
def test_cuhk03_np(tmp_path, variant):
    base = tmp_path / 'cuhk03-np' / variant
    write(base / 'bounding_box_train', ['0001_c1_1.png', '0001_c2_6.png', '0003_c1_2.png'])
    write(base / 'query', ['0002_c1_1.png'])
    write(base / 'bounding_box_test', ['0002_c2_6.png', '0004_c1_1.png'])
    ds = load_reid_dataset('cuhk03', tmp_path / 'cuhk03-np', variant=variant)
    assert list(ds['train']['pid']) == [0, 0, 1] and list(ds['train']['camid']) == [0, 1, 0]
    assert list(ds['gallery']['pid']) == [2, 4] and ds['query'][0]['path'].endswith(f'{variant}/query/0002_c1_1.png')
    other = 'detected' if variant == 'labeled' else 'labeled'
    with pytest.raises(ReIDDatasetError, match=f'{other}: folder not found'):
        load_reid_dataset('cuhk03', tmp_path / 'cuhk03-np', variant=other)
    with pytest.raises(ValueError, match='variant must be'):
        load_reid_dataset('cuhk03', tmp_path / 'cuhk03-np', variant='both')


def test_custom_folder_layout(tmp_path):
    write(tmp_path / 'train' / '17' / '0', ['a.jpg', 'b.jpg'])
    write(tmp_path / 'train' / '5' / '2', ['c.png'], mode='P')
    write(tmp_path / 'query' / '9' / '1', ['q.jpg'])
    write(tmp_path / 'gallery' / '9' / '0', ['g.jpg'], mode='RGBA')
    write(tmp_path / 'gallery' / '0' / '3', ['h.jpg'])
    ds = load_reid_dataset('folder', tmp_path)
    # sorted by path: train/17/... before train/5/...
    assert list(ds['train']['pid_original']) == [17, 17, 5] and list(ds['train']['pid']) == [1, 1, 0]
    assert list(ds['train']['camid']) == [0, 0, 2] and ds['train'][2]['image'].mode == 'RGB'
    assert list(ds['gallery']['pid']) == [0, 9] and ds['gallery'][1]['image'].mode == 'RGB'
    write(tmp_path / 'query' / 'alice' / '1', ['x.jpg'])
    with pytest.raises(ReIDDatasetError, match=r'alice/1/x.jpg: expected <split>/<pid>/<camid>/<image>'):
        load_reid_dataset('folder', tmp_path)


def test_datasets_repo_local_and_saved(tmp_path):
    import datasets
    write(tmp_path / 'img', ['a.png', 'b.png', 'c.png'])
    image = lambda n: str(tmp_path / 'img' / n)  # noqa: E731
    features = datasets.Features({'image': datasets.Image(), 'pid': datasets.Value('int64'),
                                  'camid': datasets.Value('int64')})
    splits = {'train': ([image('a.png'), image('b.png')], [30, 12], [0, 1]),
              'query': ([image('c.png')], [4], [0]), 'gallery': ([image('a.png')], [4], [1])}
    dsd = datasets.DatasetDict({name: datasets.Dataset.from_dict(
        {'image': paths, 'pid': pids, 'camid': cams}, features=features) for name, (paths, pids, cams) in splits.items()})
    dsd.save_to_disk(str(tmp_path / 'saved'))
    for name, (_, pids, _) in splits.items():  # a local repo of parquet files, as `datasets` would find on the Hub
        (tmp_path / 'repo' / 'data').mkdir(parents=True, exist_ok=True)
        dsd[name].to_parquet(str(tmp_path / 'repo' / 'data' / f'{name}-00000-of-00001.parquet'))
    for source in (tmp_path / 'saved', tmp_path / 'repo'):
        ds = load_reid_dataset('hub', source)
        assert list(ds['train']['pid']) == [1, 0] and list(ds['train']['pid_original']) == [30, 12]
        assert list(ds['query']['pid']) == [4] and ds['gallery'][0]['image'].mode == 'RGB'
    broken = datasets.DatasetDict({'train': dsd['train'], 'query': dsd['query'].remove_columns('camid'),
                                   'gallery': dsd['gallery']})
    broken.save_to_disk(str(tmp_path / 'broken'))
    with pytest.raises(ReIDDatasetError, match=r"\[query\]: missing column\(s\) \['camid'\]"):
        load_reid_dataset('hub', tmp_path / 'broken')


def test_truncated_and_unreadable_images(tmp_path, caplog):
    write(tmp_path / 'bounding_box_train', ['0002_c1s1_000451_03.jpg', '0003_c1s1_000451_03.jpg',
                                            '0004_c2s1_000551_01.jpg'])
    write(tmp_path / 'query', ['0001_c1s1_001051_00.jpg'])
    write(tmp_path / 'bounding_box_test', ['0001_c2s1_000301_01.jpg'])
    whole = (tmp_path / 'bounding_box_train' / '0003_c1s1_000451_03.jpg').read_bytes()
    (tmp_path / 'bounding_box_train' / '0003_c1s1_000451_03.jpg').write_bytes(whole[:len(whole) // 2])
    (tmp_path / 'bounding_box_train' / '0002_c1s1_000451_03.jpg').write_bytes(b'not an image')
    with pytest.raises(ReIDDatasetError, match=r'2 unreadable or truncated image\(s\) in train: .*0002_c1s1.*0003_c1s1'):
        load_reid_dataset('market1501', tmp_path)
    with caplog.at_level('WARNING'):
        ds = load_reid_dataset('market1501', tmp_path, skip_bad_images=True)
    assert 'skipped 2 unreadable or truncated image(s) in train' in caplog.text
    assert list(ds['train']['pid_original']) == [4] and list(ds['train']['pid']) == [0]
    assert len(load_reid_dataset('market1501', tmp_path, verify_images=False)['train']) == 3


def test_sixteen_bit_images_are_refused_by_name(tmp_path):
    write(tmp_path / 'bounding_box_train', ['0002_c1s1_000451_03.jpg'])
    write(tmp_path / 'query', ['0001_c1s1_001051_00.jpg'])
    write(tmp_path / 'bounding_box_test', ['0001_c2s1_000301_01.png'])
    wide = tmp_path / 'bounding_box_test' / '0001_c2s1_000301_01.png'
    Image.fromarray(np.full((16, 8), 3000, dtype=np.uint16)).save(wide)  # dark grey in 16 bits
    with Image.open(wide) as image:  # what the refusal prevents: PIL's RGB conversion turns it white
        assert image.mode.startswith('I') and image.convert('RGB').getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ReIDDatasetError, match=rf'1 unreadable .* in gallery: {wide} \(I;16 image \(16-bit\): '
                                               'convert it to 8-bit first'):
        load_reid_dataset('market1501', tmp_path)


def test_camera_zero_and_leaking_identities_are_refused(tmp_path):
    write(tmp_path / 'bounding_box_train', ['0002_c1s1_000451_03.jpg', '0003_c2s1_000451_03.jpg'])
    write(tmp_path / 'query', ['0001_c0s1_001051_00.jpg'])
    write(tmp_path / 'bounding_box_test', ['0001_c2s1_000301_01.jpg', '0000_c3s1_000000_02.jpg'])
    with pytest.raises(ReIDDatasetError, match=r'0001_c0s1_001051_00.jpg: camera 0 in the file name'):
        load_reid_dataset('market1501', tmp_path)
    (tmp_path / 'query' / '0001_c0s1_001051_00.jpg').rename(tmp_path / 'query' / '0001_c1s1_001051_00.jpg')
    assert len(load_reid_dataset('market1501', tmp_path)['gallery']) == 2  # distractor 0 is no leak
    write(tmp_path / 'bounding_box_test', ['0003_c4s1_000301_01.jpg'])  # training identity 3 in the gallery
    with pytest.raises(ReIDDatasetError, match=r'1 identities are in both the training and the test split \(3\)'):
        load_reid_dataset('market1501', tmp_path)
    assert len(load_reid_dataset('market1501', tmp_path, allow_shared_ids=True)['gallery']) == 3


def test_datasets_repo_with_float_ids_is_refused(tmp_path):
    import datasets
    write(tmp_path / 'img', ['a.png'])
    split = datasets.Dataset.from_dict({'image': [str(tmp_path / 'img' / 'a.png')], 'pid': [1.5], 'camid': [0]},
                                       features=datasets.Features({'image': datasets.Image(),
                                                                   'pid': datasets.Value('float64'),
                                                                   'camid': datasets.Value('int64')}))
    datasets.DatasetDict({'train': split, 'query': split, 'gallery': split}).save_to_disk(str(tmp_path / 'saved'))
    with pytest.raises(ReIDDatasetError, match=r"\[train\]: column 'pid' must hold integers, has float64"):
        load_reid_dataset('hub', tmp_path / 'saved')
