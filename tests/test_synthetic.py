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


def _parsing_maps(root):
    from PIL import Image
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((root / 'parsing').rglob('*.png'))}


def test_severity_zero_is_the_original_generator(tmp_path):
    # the control: pixel content of the parsing maps (all geometry and every random draw before it) as the generator
    # wrote them before the severity options existed (sha256 recorded from that version)
    import hashlib
    root = generate_market_layout(tmp_path / 'd', train_ids=3, test_ids=2, images_per_id=3, distractors=1, junk=1,
                                  occlusion=0.5, parsing=True, seed=5, misalignment=0.0, view_mix=0.0)
    digest = hashlib.sha256()
    for stem, labels in _parsing_maps(root).items():
        digest.update(f'{stem}.png'.encode())
        digest.update(labels.tobytes())
    assert digest.hexdigest() == 'c51b2c87d602e5f742000b1cc3dff102cb24fa7fefa6a99af017be65a31d15bf'


def _body_rows(labels):
    rows = np.flatnonzero((labels > 0).any(axis=1))
    return rows.min(), rows.max()


def test_misalignment_moves_and_scales_the_person(tmp_path):
    upper = LIP_LABELS.index('Upper-clothes')
    common = dict(train_ids=20, test_ids=1, images_per_id=5, distractors=0, junk=0, parsing=True, seed=2)
    spans = {}
    for severity in (0.0, 1.0):
        maps = _parsing_maps(generate_market_layout(tmp_path / str(severity), misalignment=severity, **common))
        centres = np.array([np.flatnonzero((m == upper).any(axis=1)).mean() for m in maps.values()])
        spans[severity] = centres.max() - centres.min()
    # the torso's centre row (person-relative height .35) is 64 + dy - 19.2 * scale on 128 rows: ±5 % shift and
    # 0.85-1.1 scale keep it within 17 rows; ±25 % and 0.7-1.0 within 70
    assert spans[0.0] <= 17 and spans[1.0] >= 45, spans


def test_views_drop_the_face_and_mirror_the_sides(tmp_path):
    face, left_arm, right_arm = (LIP_LABELS.index(n) for n in ('Face', 'Left-arm', 'Right-arm'))
    common = dict(train_ids=10, test_ids=1, images_per_id=4, distractors=0, junk=0, parsing=True, seed=4)
    front = list(_parsing_maps(generate_market_layout(tmp_path / 'front', **common)).values())
    assert all((m == face).any() for m in front)
    assert all(np.flatnonzero((m == left_arm).any(0)).mean() < np.flatnonzero((m == right_arm).any(0)).mean()
               for m in front)
    turned = list(_parsing_maps(generate_market_layout(tmp_path / 'turned', view_mix=1.0, **common)).values())
    back = [m for m in turned if (m == right_arm).any()]  # a side view shows one arm (labelled left)
    side = [m for m in turned if not (m == right_arm).any()]
    assert back and side
    assert not any((m == face).any() for m in back) and all((m == face).any() for m in side)  # profile
    assert all(np.flatnonzero((m == left_arm).any(0)).mean() > np.flatnonzero((m == right_arm).any(0)).mean()
               for m in back)
    # a side view's body is narrower than the front view's
    width = lambda maps: np.mean([(m == LIP_LABELS.index('Upper-clothes')).any(0).sum() for m in maps])  # noqa: E731
    assert width(side) < 0.8 * width(front)


def test_occluders_from_any_side_cover_at_most_their_share():
    from aaformer_hf.data.synthetic import _occluder_box
    rng = np.random.default_rng(0)
    sides = set()
    for _ in range(2000):
        x0, y0, x1, y1 = _occluder_box(rng, 0.3)
        area = (x1 - x0) * (y1 - y0)
        assert 0.1 - 1e-9 <= area <= 0.3 + 1e-9 and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        sides.add('top' if y0 == 0 and x1 - x0 == 1 else 'bottom' if y1 == 1 and x1 - x0 == 1
                  else 'left' if x0 == 0 else 'right' if x1 == 1 else '?')
    assert sides == {'top', 'bottom', 'left', 'right'}


def test_presets(tmp_path):
    from aaformer_hf.data.synthetic import PRESETS
    common = dict(train_ids=4, test_ids=1, images_per_id=3, distractors=0, junk=0, parsing=True, seed=1)
    a = _parsing_maps(generate_market_layout(tmp_path / 'a', preset='misaligned', **common))
    b = _parsing_maps(generate_market_layout(tmp_path / 'b', **PRESETS['misaligned'], **common))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = _parsing_maps(generate_market_layout(tmp_path / 'c', preset='aligned', **common))
    d = _parsing_maps(generate_market_layout(tmp_path / 'd', **common))
    assert all(np.array_equal(c[k], d[k]) for k in c)
    assert any(not np.array_equal(x, y) for x, y in zip(a.values(), c.values()))
    with pytest.raises(ValueError, match="preset must be one of"):
        generate_market_layout(tmp_path / 'e', preset='hard')
    with pytest.raises(ValueError, match=r"preset 'misaligned' sets \['misalignment'\]"):
        generate_market_layout(tmp_path / 'f', preset='misaligned', misalignment=0.5)
    with pytest.raises(ValueError, match='misalignment and view_mix in'):
        generate_market_layout(tmp_path / 'g', misalignment=1.5)
