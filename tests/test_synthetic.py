"""The synthetic Market-layout generator: loadable by the real loader, deterministic, identities carried by parts."""
import numpy as np
import pytest
from PIL import Image

from aaformer_hf.data import load_reid_dataset
from aaformer_hf.data.synthetic import LIP_LABELS, generate_market_layout, main


def test_generated_layout_loads_like_market(tmp_path):
    root = generate_market_layout(tmp_path / 'syn', train_ids=5, test_ids=4, images_per_id=4, num_cameras=3,
                                  distractors=2, junk=3, parsing=True, seed=1)
    ds = load_reid_dataset('market1501', root)
    assert len(ds['train']) == 20 and sorted(set(ds['train']['pid'])) == list(range(5))
    assert len(ds['query']) == 4
    assert len(ds['gallery']) == 4 * 3 + 2  # junk (-1) files dropped by the loader, distractors (0) kept
    assert len(list((root / 'bounding_box_test').glob('-1_*.jpg'))) == 3
    assert list(ds['gallery']['pid']).count(0) == 2
    # every query has a gallery match on another camera
    for q in ds['query']:
        matches = [g for g in ds['gallery'] if g['pid'] == q['pid'] and g['camid'] != q['camid']]
        assert matches
    image = ds['train'][0]['image']
    assert image.size == (64, 128) and image.mode == 'RGB'
    maps = sorted((root / 'parsing' / 'bounding_box_train').glob('*.png'))
    assert len(maps) == 20
    labels = np.asarray(Image.open(maps[0]))
    assert labels.shape == (128, 64) and labels.max() < len(LIP_LABELS)
    assert {2, 5, 13}.issubset(set(np.unique(labels)))  # hair, upper clothes, face


def test_deterministic_per_seed(tmp_path):
    a = generate_market_layout(tmp_path / 'a', train_ids=2, test_ids=2, images_per_id=2, seed=3)
    b = generate_market_layout(tmp_path / 'b', train_ids=2, test_ids=2, images_per_id=2, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob('*.jpg'))
    assert files == sorted(p.relative_to(b) for p in b.rglob('*.jpg'))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_same_identity_looks_alike(tmp_path):
    # the torso colour is an identity cue: images of one identity are closer in torso colour than of two
    root = generate_market_layout(tmp_path / 's', train_ids=6, test_ids=2, images_per_id=4, seed=4)
    ds = load_reid_dataset('market1501', root)['train']
    torso = np.stack([np.asarray(x['image'], dtype=np.float32)[45:60, 26:38].reshape(-1, 3).mean(0) for x in ds])
    pids = np.asarray(ds['pid'])
    dist = np.linalg.norm(torso[:, None] - torso[None], axis=-1)
    same, other = pids[:, None] == pids[None], pids[:, None] != pids[None]
    np.fill_diagonal(same, False)
    assert dist[same].mean() < 0.5 * dist[other].mean()


def test_cli(tmp_path, capsys):
    main(['--root', str(tmp_path / 'cli'), '--train_ids', '2', '--test_ids', '2', '--images_per_id', '2'])
    assert 'SYNTHETIC' in capsys.readouterr().out
    assert (tmp_path / 'cli' / 'query').is_dir()


def test_refuses_an_existing_dataset_and_empty_splits(tmp_path, capsys):
    root = tmp_path / 'first'
    main(['--root', str(root), '--train_ids', '2', '--test_ids', '2', '--images_per_id', '2'])
    before = sorted(p.name for p in (root / 'bounding_box_train').iterdir())
    with pytest.raises(SystemExit):  # a second dataset into the same root would merge the two
        main(['--root', str(root), '--train_ids', '3', '--test_ids', '2', '--images_per_id', '2', '--seed', '1'])
    assert f'{root}: exists and is not an empty folder' in capsys.readouterr().err
    assert sorted(p.name for p in (root / 'bounding_box_train').iterdir()) == before
    for flag in ('--train_ids', '--test_ids'):
        with pytest.raises(SystemExit):
            main(['--root', str(tmp_path / 'empty'), flag, '0'])
        assert 'need train_ids >= 1 and test_ids >= 1' in capsys.readouterr().err
    assert not (tmp_path / 'empty').exists()
