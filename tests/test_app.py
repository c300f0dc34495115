"""The web app without a browser: the gallery's ranking under the evaluation protocol (hand-computed, and FAISS
against the exact search), its embedding cache, the uploads it refuses, the CLI's `app` and `space` commands, the
Space folder and its push (offline, patched HfApi), and the served app through gradio_client."""
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aaformer_hf.apps import gallery as galleries
from aaformer_hf.apps.cli import main
from aaformer_hf.apps.extract import extract_to_file, load_inference_model, names_to_labels

from .test_cli import market, model_dir  # noqa: F401  (the fixtures: a small SYNTHETIC set, a tiny model)
from .test_hub import hub  # noqa: F401  (the fixture)


@pytest.fixture(scope='module')
def demo(market, model_dir, tmp_path_factory):  # noqa: F811
    from aaformer_hf.apps.app import ReIDDemo, model_card_text
    model = load_inference_model(str(model_dir))
    gallery = galleries.gallery_from_dataset(model, str(model_dir), 'market1501', market,
                                             cache_dir=tmp_path_factory.mktemp('app_cache'))
    return ReIDDemo(model, str(model_dir), gallery, model_card_text(str(model_dir), model))


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format='PNG', **options)
    return buffer.getvalue()


# --- ranking ------------------------------------------------------------------------------------------------------
def _toy_gallery():
    # unit vectors at known angles: cosine distance 1 - cos(angle) to a query along x
    angles = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    embeddings = torch.stack([angles.cos(), angles.sin()], 1) * torch.tensor([[1.], [2.], [3.], [.5], [4.]])  # norms
    pids, cams = torch.tensor([7, 7, 8, -1, 7]), torch.tensor([0, 1, 0, 1, 2])
    paths = [Path(f'g{i}.jpg') for i in range(5)]
    return galleries.Gallery(paths, embeddings, pids, cams), angles


def test_rank_orders_by_cosine_distance_and_applies_the_protocol():
    gallery, angles = _toy_gallery()
    query = torch.tensor([3.0, 0.0])
    unlabelled = gallery.rank(query, 3)
    assert unlabelled.indices == [0, 1, 2] and unlabelled.correct is None and unlabelled.left_out == 0
    np.testing.assert_allclose(unlabelled.distances, (1 - angles[:3].cos()).tolist(), rtol=1e-5)
    # query id 7 under camera 0: g0 (7, cam 0) and the junk g3 are left out; g1 and g4 are the same person
    judged = gallery.rank(query, 10, identity=(7, 0))
    assert judged.indices == [1, 2, 4] and judged.correct == [True, False, True] and judged.left_out == 2


def test_rank_with_faiss_matches_the_exact_search(monkeypatch):
    pytest.importorskip('faiss', reason='FAISS is optional (aaformer-hf[search]); the dev extra installs it')
    torch.manual_seed(0)
    embeddings = torch.randn(300, 16)
    pids, cams = torch.randint(0, 20, (300,)), torch.randint(0, 3, (300,))
    gallery = galleries.Gallery([Path(f'{i}.jpg') for i in range(300)], embeddings, pids, cams)
    query, identity = torch.randn(16), (int(pids[5]), int(cams[5]))
    exact = gallery.rank(query, 12, identity)
    monkeypatch.setattr(galleries, 'FAISS_FROM', 1)
    monkeypatch.setattr(galleries, 'FAISS_NPROBE', 1000)  # every list searched: FAISS's IVF is then exhaustive
    indexed = galleries.Gallery(gallery.paths, embeddings, pids, cams)
    assert indexed.method.startswith('approximate: FAISS IVF69,Flat')
    approximate = indexed.rank(query, 12, identity)
    assert approximate.indices == exact.indices and approximate.correct == exact.correct
    np.testing.assert_allclose(approximate.distances, exact.distances, atol=1e-5)


# --- the gallery cache ------------------------------------------------------------------------------------------
def test_gallery_is_embedded_once_and_again_when_a_crop_or_the_model_changes(market, model_dir, tmp_path,
                                                                              monkeypatch):
    crops = tmp_path / 'crops'
    crops.mkdir()
    for path in sorted((market / 'bounding_box_test').glob('*.jpg'))[:6]:
        (crops / path.name).write_bytes(path.read_bytes())
    runs = []
    real = galleries.extract_to_file
    monkeypatch.setattr(galleries, 'extract_to_file', lambda *a, **k: runs.append(1) or real(*a, **k))
    model = load_inference_model(str(model_dir))
    first = galleries.gallery_from_images(model, 'm', crops, cache_dir=tmp_path / 'cache')
    again = galleries.gallery_from_images(model, 'm', crops, cache_dir=tmp_path / 'cache')
    assert len(runs) == 1 and torch.equal(first.embeddings, again.embeddings)
    assert torch.equal(first.pids, names_to_labels(sorted(crops.glob('*.jpg')))[0])  # labels from the names
    # a crop replaced by another image: embedded anew, and its row changes
    target = sorted(crops.glob('*.jpg'))[2]
    target.write_bytes(sorted((market / 'query').glob('*.jpg'))[0].read_bytes())
    changed = galleries.gallery_from_images(model, 'm', crops, cache_dir=tmp_path / 'cache')
    assert len(runs) == 2 and not torch.allclose(changed.embeddings[2], first.embeddings[2])
    # other weights: embedded anew
    with torch.no_grad():
        model.pos_embed.add_(0.5)
    galleries.gallery_from_images(model, 'm', crops, cache_dir=tmp_path / 'cache')
    assert len(runs) == 3


def test_an_embeddings_file_of_another_model_or_with_missing_crops_is_refused(market, model_dir, tmp_path):
    model = load_inference_model(str(model_dir))
    paths = sorted((market / 'bounding_box_test').glob('*.jpg'))[:4]
    out = extract_to_file(model, paths, tmp_path / 'g.safetensors', str(model_dir), process_index=0,
                          num_processes=1)
    gallery = galleries.gallery_from_embeddings(model, 'any name', out)  # the fingerprint decides, not the name
    assert len(gallery) == 4 and gallery.pids is not None
    other = load_inference_model(str(model_dir))
    with torch.no_grad():
        other.cls_token.add_(1.0)
    with pytest.raises(ValueError, match='another model'):
        galleries.gallery_from_embeddings(other, 'any name', out)
    copy = tmp_path / 'copy'
    copy.mkdir()
    moved = [copy / p.name for p in paths]
    for source, target in zip(paths, moved):
        target.write_bytes(source.read_bytes())
    out2 = extract_to_file(model, moved, tmp_path / 'g2.safetensors', 'm', process_index=0, num_processes=1)
    moved[1].unlink()
    with pytest.raises(FileNotFoundError, match=f'1 of its 4 crops.*{moved[1].name}'):
        galleries.gallery_from_embeddings(model, 'm', out2)


# --- uploads ------------------------------------------------------------------------------------------------------
def test_good_uploads_decode_and_bad_ones_say_why(demo):
    from aaformer_hf.apps.app import UploadError

    person = Image.new('RGB', (64, 128), (200, 30, 30))
    assert demo.decode_upload(_png(person)).size == (64, 128)
    assert demo.decode_upload(_png(person.convert('L'))).mode == 'RGB'  # grey: converted, not refused
    assert demo.decode_upload(_png(Image.new('RGB', (1500, 3000)))).size == (512, 1024)  # kept at most 1024 high
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 64, 3), dtype=np.uint8)).save(jpeg, 'JPEG')
    cases = {
        'not an image': b'%PDF-1.4 this is not a picture',
        'truncated': jpeg.getvalue()[:len(jpeg.getvalue()) // 2],
        r'16(/32)?-bit': _png(Image.fromarray(np.full((128, 64), 40000, dtype=np.uint16))),  # Pillow < 11: mode I
        'at least 16': _png(Image.new('RGB', (1, 1))),
        'limit is 25 MP': _png(Image.new('L', (10000, 10000))),
        'upload is empty': b'',
        'limit is 10 MB': b'\0' * (10 * 2 ** 20 + 1),
    }
    for reason, data in cases.items():
        with pytest.raises(UploadError, match=reason):
            demo.decode_upload(data)


def test_example_queries_are_chosen_by_position_and_carry_their_identity(demo, market):
    from aaformer_hf.apps.app import UploadError

    image, identity = demo.example(0)
    path = demo.gallery.queries[0][0]
    assert identity == tuple(int(v[0]) for v in names_to_labels([path]))
    with pytest.raises(UploadError):
        demo.example(len(demo.gallery.queries))
    ranked = demo.search(image, 5, identity)
    captions = [caption for _, caption in demo.results(ranked)]
    assert len(captions) == len(ranked.correct) == 5
    assert all(('✓' in c) == ok for c, ok in zip(captions, ranked.correct))
    assert 'left out' in demo.summary(ranked, identity)


def test_part_maps_change_with_the_layer_and_view(demo):
    image, _ = demo.example(1)
    last = np.asarray(demo.model_map(image, 1, 'majority over heads'))
    first = np.asarray(demo.model_map(image, 0, 'majority over heads'))
    heads = demo.model_map(image, 1, 'each head')
    groups = len(demo.model.part_groups)
    assert last.shape == first.shape and heads.height > last.shape[0] * (groups - 1)
    assert not np.array_equal(last, first)  # the two layers' assignments differ at random init


# --- CLI ----------------------------------------------------------------------------------------------------------
def test_app_without_arguments_needs_the_demo_model(tmp_path, monkeypatch, capsys):
    pytest.importorskip('gradio', reason='the app extra (aaformer-hf[app]) is not installed')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(['app'])
    assert stop.value.code == 2 and 'bash tools/demo.sh' in capsys.readouterr().err


@pytest.mark.parametrize('argv, message', [
    (['space', 'aaformer_tiny', '-o', 'x'], '--gallery'),
    (['space', 'aaformer_tiny', '--gallery', 'nowhere', '-o', 'x'], 'nowhere: no such folder'),
    (['space', 'aaformer_tiny', '--dataset', 'market1501', '-o', 'x'], '--dataset needs --root'),
])
def test_space_refuses_an_incomplete_gallery(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


# --- Spaces -------------------------------------------------------------------------------------------------------
def test_space_folder_carries_the_model_the_crops_and_their_identities(market, model_dir, tmp_path, hub):  # noqa: F811
    pytest.importorskip('gradio', reason='the Space front matter names the installed Gradio version')
    import gradio
    from aaformer_hf.data import load_reid_dataset

    out = tmp_path / 'space'
    assert main(['space', str(model_dir), '--dataset', 'market1501', '--root', str(market), '-o', str(out)]) == 0
    readme = (out / 'README.md').read_text()
    assert readme.startswith('---\n') and 'sdk: gradio\n' in readme and f'sdk_version: {gradio.__version__}' in readme
    assert 'app_file: app.py' in readme and 'Intended use and limitations' in readme
    assert (out / 'requirements.txt').read_text().startswith('aaformer-hf[app]==')
    assert sorted(p.name for p in (out / 'model').iterdir()) == ['config.json', 'model.safetensors',
                                                                  'preprocessor_config.json']
    compile((out / 'app.py').read_text(), 'app.py', 'exec')
    # the identities survive the copy: read back from the written names, as the Space will
    data = load_reid_dataset('market1501', market)['gallery']
    ids = 'pid_original' if 'pid_original' in data.column_names else 'pid'
    written = sorted((out / 'gallery').iterdir())
    pids, cams = names_to_labels(written)
    assert sorted(zip(pids.tolist(), cams.tolist())) == sorted(zip(data[ids], data['camid']))
    with pytest.raises(SystemExit):  # exists: not replaced without --overwrite
        main(['space', str(model_dir), '--dataset', 'market1501', '--root', str(market), '-o', str(out)])
    # pushed as a Gradio Space
    assert main(['space', str(model_dir), '--dataset', 'market1501', '--root', str(market), '-o', str(out),
                 '--overwrite', '--push', 'org/reid-demo']) == 0
    (repo_id, options), = hub.created
    assert repo_id == 'org/reid-demo' and options['repo_type'] == 'space' and options['space_sdk'] == 'gradio'
    assert hub.uploads[0]['repo_type'] == 'space' and 'app.py' in hub.uploads[0]['files']


def test_space_refuses_a_model_folder_with_pickled_weights(market, model_dir, tmp_path):
    pytest.importorskip('gradio', reason='the Space front matter names the installed Gradio version')
    from aaformer_hf.apps.space import write_space

    folder = tmp_path / 'model'
    folder.mkdir()
    for path in model_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / 'pytorch_model.bin').write_bytes(b'pickle')
    with pytest.raises(ValueError, match='pytorch_model.bin'):
        write_space(str(folder), tmp_path / 'space', dataset='market1501', root=market)
    assert not (tmp_path / 'space').exists() and not (tmp_path / 'space.partial').exists()


# --- served, through gradio_client ----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def served(demo):
    pytest.importorskip('gradio', reason='the app extra (aaformer-hf[app]) is not installed')
    from aaformer_hf.apps.app import launch
    app = launch(demo, host='127.0.0.1', block=False)
    yield app
    app.close()


def test_served_app_answers_queries_and_bad_uploads(served, demo, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(served.local_url, verbose=False)
    image, _ = demo.example(2)
    good, bad = tmp_path / 'q.png', tmp_path / 'bad.png'
    image.save(good)
    bad.write_bytes(b'not an image at all')
    query, status, results, caption, drawn = client.predict(handle_file(str(good)), 4, 1, 'majority over heads',
                                                           api_name='/search')
    assert len(results) == 4 and all(r['caption'].startswith(f'#{i + 1} ') for i, r in enumerate(results))
    assert Path(drawn).is_file() and 'layer 1' in caption and 'Top 4' in status
    _, status, results, _, drawn = client.predict(handle_file(str(bad)), 4, 1, 'majority over heads',
                                                  api_name='/search')
    assert 'not an image' in status and results == [] and drawn is None
    # two visitors at once: both answered (the queue runs two at a time)
    answers = []

    def visit():
        answers.append(Client(served.local_url, verbose=False).predict(
            handle_file(str(good)), 3, 0, 'each head', api_name='/search'))
    visitors = [threading.Thread(target=visit) for _ in range(2)]
    [v.start() for v in visitors]
    [v.join(timeout=60) for v in visitors]
    assert len(answers) == 2 and all(len(a[2]) == 3 for a in answers)


def test_pivl_models_show_their_attention(market):
    from aaformer_hf.apps.app import ReIDDemo, UploadError
    import timm
    from aaformer_hf.apps.visualize import attention_figure

    paths = sorted((market / 'bounding_box_test').glob('*.jpg'))[:3]
    image = Image.open(paths[0]).convert('RGB')
    torch.manual_seed(0)
    vit, cnn = timm.create_model('pivl_vit_tiny').eval(), timm.create_model('pivl_resnet_tiny').eval()
    depth_vit = len(vit.blocks)
    for model, depth in ((vit, depth_vit), (cnn, 1)):
        gallery = galleries.Gallery(paths, torch.randn(3, 8))
        demo = ReIDDemo(model, 'pivl', gallery)
        assert demo.kind == 'attention' and demo.depth == depth and len(demo.views()) == 1
        pixels = demo.transform(image).unsqueeze(0)
        for layer in range(depth):  # what `aaformer-hf visualize attention` draws for that layer
            expected = np.asarray(attention_figure(model, [image], pixels, layer))
            assert np.array_equal(np.asarray(demo.model_map(image, layer)), expected)
        with pytest.raises(UploadError, match=f'layer {depth}'):
            demo.model_map(image, depth)
    assert 'attention pool' in ReIDDemo(cnn, 'c', galleries.Gallery(paths, torch.randn(3, 8))).map_caption(0, None, 'Q')


def test_app_command_serves_the_demo_model_by_default_and_a_given_gallery(market, model_dir, tmp_path, monkeypatch,
                                                                          capsys):
    pytest.importorskip('gradio', reason='the app extra (aaformer-hf[app]) is not installed')
    import shutil
    from aaformer_hf.apps import app as app_module

    served = []
    monkeypatch.setattr(app_module, 'launch', lambda demo, *args: served.append((demo, args)))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(model_dir, tmp_path / 'outputs' / 'synthetic' / 'model')  # what tools/demo.sh leaves
    shutil.copytree(market, tmp_path / 'data' / 'synthetic_market')
    cache = ['--cache_dir', str(tmp_path / 'cache')]
    assert main(['app'] + cache) == 0
    demo, (host, port, share, concurrency) = served[-1]
    assert (host, port, share, concurrency, demo.max_upload_bytes) == ('127.0.0.1', None, False, 2, 10 * 2 ** 20)
    assert demo.model_name == 'outputs/synthetic/model' and demo.gallery.queries  # the dataset's queries
    crops = sorted((market / 'bounding_box_test').glob('*.jpg'))
    assert main(['app', str(model_dir), '--gallery', str(market / 'bounding_box_test'), '--port', '7999',
                 '--concurrency', '3'] + cache) == 0
    demo, (host, port, share, concurrency) = served[-1]
    assert len(demo.gallery) == len(crops) and port == 7999 and concurrency == 3 and not demo.gallery.queries
    assert f'{len(crops)} gallery crops' in capsys.readouterr().out
