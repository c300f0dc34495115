"""The aaformer-hf command: extract (sharded, resumable, split among processes), evaluate, the delegated commands,
and their errors."""
import json
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from aaformer_hf import AAformerConfig, AAformerModel, AAformerImageProcessor
from aaformer_hf.apps.cli import main
from aaformer_hf.data import load_reid_dataset
from aaformer_hf.data.synthetic import generate_market_layout
from aaformer_hf.apps.extract import extract_to_file, load_embeddings, load_inference_model
from aaformer_hf.reid.evaluation import evaluate

from .test_hub import hub  # noqa: F401  (the fixture)

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
TINY_CNN = dict(depths=(1, 1, 1, 1), hidden_sizes=(32, 64, 128, 256), stem_sizes=(4, 4, 8), projection_dim=32)


@pytest.fixture(scope='module')
def market(tmp_path_factory):
    return generate_market_layout(tmp_path_factory.mktemp('cli') / 'market', train_ids=2, test_ids=6,
                                  images_per_id=3, distractors=2, junk=1, seed=5)


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp('cli_model') / 'model'
    AAformerModel(AAformerConfig(**TINY)).save_pretrained(folder)
    AAformerImageProcessor().save_pretrained(folder)
    return folder


def _reference_embeddings(model_dir, paths):
    """Through the transformers front door and its image processor: another loader and another preprocessing path."""
    model, processor = AutoModel.from_pretrained(model_dir).eval(), AutoImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        return torch.cat([model(**processor([Image.open(p).convert('RGB')], return_tensors='pt')).pooler_output
                          for p in paths])


def test_extract_writes_embeddings_paths_and_labels(tmp_path, market, model_dir, capsys):
    out = tmp_path / 'gallery.safetensors'
    assert main(['extract', str(model_dir), str(market / 'bounding_box_test'), '-o', str(out), '--batch_size',
                 '4']) == 0
    saved = load_embeddings(out)
    paths = sorted((market / 'bounding_box_test').glob('*.jpg'))
    assert saved['paths'] == [str(p) for p in paths] and saved['model'] == str(model_dir)
    assert saved['embeddings'].shape == (len(paths), 6 * 64)
    torch.testing.assert_close(saved['embeddings'], _reference_embeddings(model_dir, paths), rtol=1e-4, atol=1e-4)
    # identities and cameras from the file names, as the dataset loader reads them
    gallery = load_reid_dataset('market1501', market)['gallery']
    by_path = {row['path']: (row['pid'], row['camid']) for row in gallery.select_columns(['path', 'pid', 'camid'])}
    labels = dict(zip(map(str, paths), zip(saved['pids'].tolist(), saved['camids'].tolist())))
    assert {p: labels[p] for p in by_path} == by_path
    assert all(labels[p][0] == -1 for p in labels if p not in by_path)  # junk crops, which the loader leaves out
    assert 'embeddings of' in capsys.readouterr().out
    assert not (tmp_path / 'gallery.safetensors.parts').exists()


def test_extract_from_a_file_list_without_labels(tmp_path, market, model_dir):
    images = sorted((market / 'query').glob('*.jpg'))[:3]
    renamed = []
    for i, path in enumerate(images):  # names that carry no identity
        renamed.append(tmp_path / f'crop{i}.jpg')
        renamed[-1].write_bytes(path.read_bytes())
    (tmp_path / 'list.txt').write_text('\n'.join(p.name for p in reversed(renamed)) + '\n')
    out = tmp_path / 'e.safetensors'
    assert main(['extract', str(model_dir), str(tmp_path / 'list.txt'), '-o', str(out)]) == 0
    saved = load_embeddings(out)
    assert saved['paths'] == [str(p) for p in reversed(renamed)]  # the list's order, not sorted
    assert 'pids' not in saved and 'camids' not in saved


class CountingModel(torch.nn.Module):
    """Wraps a timm model and counts the crops it embeds."""

    def __init__(self, model):
        super().__init__()
        self.model, self.pretrained_cfg, self.seen = model, model.pretrained_cfg, 0

    def forward_features(self, x):
        self.seen += len(x)
        return self.model.forward_features(x)

    def forward_head(self, x, pre_logits=False):
        return self.model.forward_head(x, pre_logits=pre_logits)


def test_shards_split_among_processes_and_resume(tmp_path, market, model_dir):
    paths = sorted((market / 'bounding_box_test').glob('*.jpg'))
    model = load_inference_model(str(model_dir))
    whole = tmp_path / 'whole.safetensors'
    extract_to_file(model, paths, whole, 'm', shard_size=5, process_index=0, num_processes=1)
    # process 1 of 2 stops after its shards (1, 3, ...); a single-process run then computes only the others
    out = tmp_path / 'out.safetensors'
    counting = CountingModel(model)
    assert extract_to_file(counting, paths, out, 'm', shard_size=5, process_index=1, num_processes=2) is None
    shards = [paths[i:i + 5] for i in range(0, len(paths), 5)]
    assert counting.seen == sum(len(s) for s in shards[1::2])
    assert sorted(p.name for p in (tmp_path / 'out.safetensors.parts').iterdir()) == [
        f'part_{i:06d}.safetensors' for i in range(1, len(shards), 2)]
    counting.seen = 0
    extract_to_file(counting, paths, out, 'm', shard_size=5, process_index=0, num_processes=1)
    assert counting.seen == sum(len(s) for s in shards[0::2])
    assert torch.equal(load_embeddings(out)['embeddings'], load_embeddings(whole)['embeddings'])
    # shards of another job are not mixed in
    extract_to_file(model, paths, tmp_path / 'x.safetensors', 'm', shard_size=5, process_index=1, num_processes=2)
    with pytest.raises(FileExistsError, match='x.safetensors.parts: holds shards of another job'):
        extract_to_file(model, paths[1:], tmp_path / 'x.safetensors', 'm', shard_size=5, process_index=0,
                        num_processes=1)


def test_evaluate_prints_and_writes_the_benchmark_metrics(tmp_path, market, model_dir, capsys):
    assert main(['evaluate', str(model_dir), '--dataset', 'market1501', '--root', str(market), '--rerank',
                 '--rerank_k1', '4', '--rerank_k2', '2', '--json', str(tmp_path / 'm.json')]) == 0
    saved = json.loads((tmp_path / 'm.json').read_text())
    data = load_reid_dataset('market1501', market)
    q, g = data['query'], data['gallery']
    qf, gf = _reference_embeddings(model_dir, q['path']), _reference_embeddings(model_dir, g['path'])
    expected = evaluate(qf, gf, q['pid'], g['pid'], q['camid'], g['camid'])
    assert saved['plain']['mAP'] == pytest.approx(expected['mAP'], abs=1e-4)
    assert saved['plain']['num_valid_queries'] == expected['num_valid_queries'] and 're-ranked' in saved
    printed = capsys.readouterr().out
    assert '| plain |' in printed and '| re-ranked |' in printed


def test_errors_name_the_input_and_exit_2(tmp_path, model_dir, market, capsys):
    cases = [
        (['extract', str(model_dir), str(tmp_path / 'nothing'), '-o', str(tmp_path / 'o.safetensors')],
         'nothing: no such folder or file list'),
        (['extract', str(tmp_path), str(market / 'query'), '-o', str(tmp_path / 'o.safetensors')],
         'not a model folder (no config.json)'),
        (['extract', 'no_such_model_name', str(market / 'query'), '-o', str(tmp_path / 'o.safetensors')],
         'no_such_model_name: unknown model'),
        (['evaluate', str(model_dir), '--dataset', 'market1501', '--root', str(tmp_path / 'none')],
         'dataset folder not found'),
    ]
    (tmp_path / 'exists.safetensors').write_bytes(b'keep me')
    cases.append((['extract', str(model_dir), str(market / 'query'), '-o', str(tmp_path / 'exists.safetensors')],
                  'exists.safetensors: already exists (pass --overwrite'))
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        assert message in capsys.readouterr().err, argv
    assert (tmp_path / 'exists.safetensors').read_bytes() == b'keep me'
    bad = tmp_path / 'bad_images'
    bad.mkdir()
    (bad / 'broken.jpg').write_bytes(b'not an image')
    with pytest.raises(SystemExit) as exit_info:
        main(['extract', str(model_dir), str(bad), '-o', str(tmp_path / 'b.safetensors')])
    assert exit_info.value.code == 2 and 'broken.jpg: unreadable image' in capsys.readouterr().err
    assert not (tmp_path / 'b.safetensors').exists()


def test_a_hub_id_loads_offline(hub, model_dir):  # noqa: F811  (the fixture)
    from aaformer_hf.hub import push_to_hub
    push_to_hub(model_dir, 'org/cli-model')
    model = load_inference_model('org/cli-model')
    reference = load_inference_model(str(model_dir))
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_delegated_commands_and_the_module_entry_point(tmp_path, capsys):
    assert main(['synth', '--root', str(tmp_path / 's'), '--train_ids', '2', '--test_ids', '2']) == 0
    assert (tmp_path / 's' / 'bounding_box_train').is_dir()
    result = subprocess.run([sys.executable, '-m', 'aaformer_hf', '--help'], capture_output=True, text=True)
    assert result.returncode == 0 and 'extract' in result.stdout and 'evaluate' in result.stdout
    result = subprocess.run([sys.executable, '-m', 'aaformer_hf', 'extract'], capture_output=True, text=True)
    assert result.returncode == 2 and 'required' in result.stderr
    # a delegated command's usage and errors name it as typed, not its module
    for command in ('card', 'convert', 'parse', 'synth'):
        with pytest.raises(SystemExit):
            main([command, '--no_such_flag'])
        assert f'usage: aaformer-hf {command} ' in capsys.readouterr().err
    assert main(['card', '--planned', str(tmp_path / 'cards'), '--org', 'my-lab']) == 0
    assert 'my-lab/aaformer-market1501' in (tmp_path / 'cards' / 'aaformer-market1501.md').read_text()


def test_two_processes_share_the_shards_and_join_in_input_order(tmp_path, market, model_dir):
    import os
    out = tmp_path / 'two.safetensors'
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                           '29541', '-m', 'aaformer_hf', 'extract', str(model_dir), str(market / 'bounding_box_test'),
                           '-o', str(out), '--shard_size', '3'], capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'ACCELERATE_USE_CPU': 'true', 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count('embeddings of') == 1  # the main process joins and reports, once
    paths = sorted((market / 'bounding_box_test').glob('*.jpg'))
    single = extract_to_file(load_inference_model(str(model_dir)), paths, tmp_path / 'one.safetensors', 'm',
                             shard_size=3, process_index=0, num_processes=1)
    torch.testing.assert_close(load_embeddings(out)['embeddings'], load_embeddings(single)['embeddings'],
                               rtol=1e-5, atol=1e-5)
    assert load_embeddings(out)['paths'] == [str(p) for p in paths]


@pytest.mark.parametrize('family', ['aaformer', 'pivl', 'pivl_resnet'])
def test_export_onnx_matches_pytorch_at_any_batch(tmp_path, family, capsys):
    import onnxruntime  # dev extras
    from aaformer_hf import PiVLConfig, PiVLModel, PiVLResNetConfig, PiVLResNetModel
    torch.manual_seed(0)
    folder = tmp_path / 'model'
    {'aaformer': lambda: AAformerModel(AAformerConfig(**TINY)),
     'pivl': lambda: PiVLModel(PiVLConfig(**TINY, projection_dim=32)),
     'pivl_resnet': lambda: PiVLResNetModel(PiVLResNetConfig(**TINY_CNN))}[family]().save_pretrained(folder)
    out = tmp_path / 'reid.onnx'
    assert main(['export-onnx', str(folder), '-o', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'opset 18' in printed
    # an AAformer's deployed graph also outputs its assignments, which assign every patch as PyTorch does
    assert ('assignment decisions differing: 0.0000%' in printed) == (family == 'aaformer')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model', 'reid.onnx']  # no temporary file left
    session = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    assert [o.name for o in session.get_outputs()] == (['embeddings', 'assignments'] if family == 'aaformer'
                                                       else ['embeddings'])
    reference = load_inference_model(str(folder))
    for batch in (2, 5):  # sizes the export never saw
        x = torch.randn(batch, 3, 256, 128)
        got = session.run(None, {'pixel_values': x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got[0]), reference.forward_head(
                reference.forward_features(x), pre_logits=True), rtol=1e-4, atol=1e-4)
            if family == 'aaformer':  # (layers, batch, heads, parts, patches), as visualize parts reads them
                expected = torch.stack(reference.forward_tokens(x, output_assignments=True).assignments)
                assert torch.equal(torch.from_numpy(got[1]), expected)
    with pytest.raises(SystemExit) as exit_info:
        main(['export-onnx', str(folder), '-o', str(out)])
    assert exit_info.value.code == 2 and 'reid.onnx: already exists' in capsys.readouterr().err


def test_extract_a_dataset_split_with_its_labels(tmp_path, market, model_dir, capsys):
    out = tmp_path / 'query.safetensors'
    assert main(['extract', str(model_dir), '--dataset', 'market1501', '--root', str(market), '--split', 'query',
                 '-o', str(out)]) == 0
    query = load_reid_dataset('market1501', market)['query']
    saved = load_embeddings(out)
    assert saved['paths'] == query['path']
    assert saved['pids'].tolist() == query['pid'] and saved['camids'].tolist() == query['camid']
    torch.testing.assert_close(saved['embeddings'], _reference_embeddings(model_dir, query['path']),
                               rtol=1e-4, atol=1e-4)
    for argv, message in (([str(market / 'query'), '--dataset', 'market1501', '--root', str(market)], 'not both'),
                          (['--dataset', 'market1501'], '--dataset needs --root')):
        with pytest.raises(SystemExit) as exit_info:
            main(['extract', str(model_dir), *argv, '-o', str(tmp_path / 'x.safetensors')])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_extract_a_training_split_gives_the_dataset_ids_not_the_labels(tmp_path, market, model_dir):
    out = tmp_path / 'train.safetensors'
    assert main(['extract', str(model_dir), '--dataset', 'market1501', '--root', str(market), '--split', 'train',
                 '-o', str(out)]) == 0
    saved = load_embeddings(out)
    # the ids in the file names (the generator numbers training ids from 1), not the 0..C-1 training labels
    assert saved['pids'].tolist() == [int(p.rsplit('/', 1)[1].split('_')[0]) for p in saved['paths']]
    assert min(saved['pids'].tolist()) >= 1


def test_extract_any_datasets_split_of_images(tmp_path, market, model_dir, capsys):
    import datasets
    files = sorted((market / 'query').glob('*.jpg'))[:5]
    crops = [Image.open(p).convert('RGB') for p in files]  # embedded as bytes: no file behind them, as on the Hub
    split = datasets.Dataset.from_dict({'crop': crops, 'note': [f'n{i}' for i in range(5)]},
                                       features=datasets.Features({'crop': datasets.Image(),
                                                                   'note': datasets.Value('string')}))
    repo = tmp_path / 'repo' / 'data'  # a datasets repo of parquet files, laid out as the Hub serves one
    repo.mkdir(parents=True)
    split.to_parquet(str(repo / 'test-00000-of-00001.parquet'))
    out = tmp_path / 'street.safetensors'
    assert main(['extract', str(model_dir), '--dataset', 'hub', '--root', str(tmp_path / 'repo'), '--split', 'test',
                 '--image_column', 'crop', '--shard_size', '2', '-o', str(out)]) == 0
    saved = load_embeddings(out)
    assert saved['paths'] == [f'{tmp_path / "repo"}[test]#{i}' for i in range(5)]
    assert 'pids' not in saved  # no identity columns: no labels
    torch.testing.assert_close(saved['embeddings'], _reference_embeddings(model_dir, files), rtol=1e-4, atol=1e-4)
    # a save_to_disk folder with integer identity columns keeps them, as stored
    gallery = datasets.Dataset.from_dict({'image': crops[:3], 'pid': [7, 7, 9], 'camid': [0, 2, 1]},
                                         features=datasets.Features({'image': datasets.Image(),
                                                                     'pid': datasets.Value('int64'),
                                                                     'camid': datasets.Value('int32')}))
    datasets.DatasetDict({'gallery': gallery}).save_to_disk(str(tmp_path / 'saved'))
    out = tmp_path / 'saved.safetensors'
    assert main(['extract', str(model_dir), '--dataset', 'hub', '--root', str(tmp_path / 'saved'), '-o',
                 str(out)]) == 0
    saved = load_embeddings(out)
    assert saved['pids'].tolist() == [7, 7, 9] and saved['camids'].tolist() == [0, 2, 1]
    torch.testing.assert_close(saved['embeddings'], _reference_embeddings(model_dir, files[:3]), rtol=1e-4, atol=1e-4)
    for argv, message in ((['--split', 'val'], "no split 'val'; found ['test']"),
                          (['--split', 'test', '--image_column', 'note'],
                           "column 'note' is not an image column (image columns: ['crop'])"),
                          (['--revision', 'v2', '--dataset', 'market1501'], 'read with --dataset hub only')):
        with pytest.raises(SystemExit) as exit_info:
            main(['extract', str(model_dir), '--dataset', 'hub', '--root', str(tmp_path / 'repo'), *argv,
                  '-o', str(tmp_path / 'x.safetensors')])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture(scope='module')
def stripes_dir(tmp_path_factory):
    """A model whose answer is known: MGN stripes (group 1: top / bottom half, group 2: thirds), 2 heads."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp('stripes') / 'model'
    AAformerModel(AAformerConfig(**TINY, assignment='stripes')).save_pretrained(folder)
    return folder


def test_visualize_parts_and_attention_draw_what_the_stripes_are(tmp_path, stripes_dir):
    from aaformer_hf.apps.visualize import CELL, PALETTE
    black = tmp_path / 'black.png'
    Image.new('RGB', (128, 256)).save(black)
    out = tmp_path / 'parts.png'
    assert main(['visualize', 'parts', str(stripes_dir), str(black), str(black), '-o', str(out)]) == 0
    figure = Image.open(out).convert('RGB')
    panel, gap = (8 * CELL, 16 * CELL), 6
    # a row: image | group 1 majority, 2 heads | group 2 majority, 2 heads | agreement = 8 panels; 2 rows
    assert figure.size == (8 * panel[0] + 7 * gap, 2 * panel[1] + gap)

    def pixel(column, y):
        return figure.getpixel((column * (panel[0] + gap) + 20, y))

    def tinted(column, y, part):  # a patch blended 60 % with its part's colour, on black (PIL rounds either way)
        return all(abs(a - 0.6 * b) <= 1 for a, b in zip(pixel(column, y), PALETTE[part]))

    top, middle, bottom = 10, panel[1] // 2, panel[1] - 10
    assert tinted(1, top, 0) and tinted(1, bottom, 1)  # group 1, majority over heads: halves
    assert tinted(2, top, 0) and tinted(3, bottom, 1)  # each head the same
    assert tinted(4, top, 2) and tinted(4, middle, 3) and tinted(4, bottom, 4)  # group 2: thirds
    assert pixel(7, 10) == (255, 255, 255)  # every head agrees with the majority
    out = tmp_path / 'attention.png'
    assert main(['visualize', 'attention', str(stripes_dir), str(black), '-o', str(out), '--layer', '0']) == 0
    figure = Image.open(out).convert('RGB')
    # image | CLS per head (2) | [PART] 1..5: [PART] 1 (top half) has no attention on the bottom half
    assert figure.size == (8 * panel[0] + 7 * gap, panel[1])
    assert pixel(3, bottom) == (0, 0, 0) and pixel(3, top)[0] > 0
    with pytest.raises(SystemExit):  # a π-VL model has no [PART]s to draw
        from aaformer_hf import PiVLConfig, PiVLModel
        PiVLModel(PiVLConfig(**TINY, projection_dim=32)).save_pretrained(tmp_path / 'pivl')
        main(['visualize', 'parts', str(tmp_path / 'pivl'), str(black), '-o', str(tmp_path / 'x.png')])


def test_visualize_attention_of_the_pivl_model_is_timms_own_attention(tmp_path):
    """π-VL's model is a plain CLIP ViT at inference: its maps are CLS's attention per head and averaged, equal to
    what timm's own (unfused) attention computes, captured where timm applies attention dropout."""
    import timm

    from aaformer_hf import PiVLConfig, PiVLModel
    from aaformer_hf.apps.visualize import CELL, vit_attention
    torch.manual_seed(0)
    folder = tmp_path / 'pivl'
    PiVLModel(PiVLConfig(**TINY, projection_dim=32)).save_pretrained(folder)
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    pixels = torch.randn(2, 3, 256, 128)
    captured = []
    block = model.blocks[1]
    block.attn.fused_attn = False
    handle = block.attn.attn_drop.register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.no_grad():
        model(pixels)
        mine = vit_attention(model, pixels, layer=-1)
    handle.remove()
    torch.testing.assert_close(mine, captured[0], rtol=1e-5, atol=1e-6)
    image = tmp_path / 'a.png'
    Image.new('RGB', (128, 256), (90, 90, 90)).save(image)
    out = tmp_path / 'attention.png'
    assert main(['visualize', 'attention', str(folder), str(image), '-o', str(out), '--layer', '0']) == 0
    panel, gap = (8 * CELL, 16 * CELL), 6
    assert Image.open(out).size == (4 * panel[0] + 3 * gap, panel[1])  # image | CLS, 2 heads | CLS, mean
    with pytest.raises(SystemExit) as exit_info:
        main(['visualize', 'attention', str(folder), str(image), '-o', str(tmp_path / 'x.png'), '--layer', '2'])
    assert exit_info.value.code == 2


def test_visualize_attention_of_the_pivl_cnn_is_its_attention_pools(tmp_path, capsys):
    """π-VL's CNN has one attention, its pool: the map is the mean token's attention over the last map's cells,
    checked by rebuilding the pool's output (the CLIP projection) from those probabilities and the pool's values."""
    import timm

    from aaformer_hf import PiVLResNetConfig, PiVLResNetModel
    from aaformer_hf.apps.visualize import CELL, attention_pool_attention
    torch.manual_seed(0)
    folder = tmp_path / 'cnn'
    PiVLResNetModel(PiVLResNetConfig(**TINY_CNN)).save_pretrained(folder)
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    with torch.no_grad():  # a fresh pool attends almost uniformly; weights at this scale make each row its own
        for param in model.attn_pool.parameters():
            param.normal_(0, 0.3)
    pixels = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        probs = attention_pool_attention(model, pixels)  # (B, heads, 1 + 16 * 8)
        x = model.forward_features(pixels)
        pool = model.attn_pool
        tokens = x.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + pool.pos_embed
        v = pool.v(tokens).reshape(2, -1, pool.num_heads, pool.head_dim).transpose(1, 2)
        rebuilt = pool.proj((probs.unsqueeze(2) @ v).transpose(1, 2).reshape(2, -1))
        torch.testing.assert_close(rebuilt, pool(x), rtol=1e-5, atol=1e-5)
    assert probs.shape == (2, 4, 1 + 16 * 8) and probs.max() > 10 / probs.shape[-1]  # far from uniform
    image = tmp_path / 'a.png'
    Image.new('RGB', (128, 256), (90, 90, 90)).save(image)
    out = tmp_path / 'attention.png'
    assert main(['visualize', 'attention', str(folder), str(image), '-o', str(out)]) == 0
    panel, gap = (8 * CELL, 16 * CELL), 6
    assert Image.open(out).size == (6 * panel[0] + 5 * gap, panel[1])  # image | 4 heads | mean
    for argv, message in ((['attention', '--layer', '1'], r'has 1 attention layer \(its attention pool\)'),
                          (['parts'], 'assigns no patches to \\[PART\\]s')):
        with pytest.raises(SystemExit) as exit_info:
            main(['visualize', argv[0], str(folder), str(image), '-o', str(tmp_path / 'x.png'), *argv[1:]])
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err)


def test_visualize_ranks_frames_follow_the_protocol(tmp_path, market, model_dir):
    """Rank lists: each gallery panel's frame says whether it is the query's identity; the order is the nearest
    first with same-camera matches left out, checked against torch.cdist."""
    out = tmp_path / 'ranks.png'
    assert main(['visualize', 'ranks', str(model_dir), '--dataset', 'market1501', '--root', str(market), '-o',
                 str(out), '--limit', '3', '--top', '4']) == 0
    figure = Image.open(out).convert('RGB')
    data = load_reid_dataset('market1501', market)
    model = load_inference_model(str(model_dir))
    from aaformer_hf.data import build_transforms
    transform = build_transforms(model.pretrained_cfg, train=False)
    with torch.no_grad():
        feats = {s: model(torch.stack([transform(i) for i in data[s]['image']])) for s in ('query', 'gallery')}
    dist = torch.cdist(feats['query'][:3], feats['gallery'])
    g_pids, g_cams = torch.tensor(data['gallery']['pid']), torch.tensor(data['gallery']['camid'])
    assert figure.size == (5 * 64 + 4 * 6, 3 * 128 + 2 * 6)
    for q in range(3):
        pid, cam = data['query'][q]['pid'], data['query'][q]['camid']
        ranked = [g for g in dist[q].argsort().tolist() if not (g_pids[g] == pid and g_cams[g] == cam)][:4]
        expected = [(0, 170, 0) if g_pids[g] == pid else (220, 0, 0) for g in ranked]
        frames = [figure.getpixel((c * (64 + 6) + 1, q * (128 + 6) + 1)) for c in range(1, 5)]
        assert frames == expected
    assert (figure.getpixel((1, 1))) == (128, 128, 128)  # the query's own frame


def test_majority_row_colours_each_patch_by_the_part_most_heads_chose():
    """A hand case: 3 heads, one group of 2 parts, a 2x2 grid; each patch takes the part with most head votes."""
    from PIL import Image
    from aaformer_hf.apps.visualize import CELL, PALETTE, majority_row

    votes_for_part0 = [[1, 0, 1, 1], [1, 0, 0, 1], [0, 0, 1, 1]]  # heads x patches: 1 = assigned to part 0
    assigned = torch.tensor([[row, [1 - v for v in row]] for row in votes_for_part0], dtype=torch.bool)  # (3, 2, 4)
    expected = [0, 1, 0, 0]  # patch 0: 2 of 3 heads chose part 0; patch 1: none; patch 2: 2 of 3; patch 3: all
    grey = Image.new('RGB', (7, 9), (100, 100, 100))
    image, panel = majority_row(grey, assigned, (2,), (2, 2))
    assert image.size == panel.size == (2 * CELL, 2 * CELL)
    for patch, part in enumerate(expected):
        y, x = divmod(patch, 2)
        colour = panel.getpixel((x * CELL + CELL // 2, y * CELL + CELL // 2))
        want = tuple(round(0.4 * 100 + 0.6 * c) for c in PALETTE[part])
        assert all(abs(a - b) <= 1 for a, b in zip(colour, want)), (patch, colour, want)


def test_demo_writes_the_assignment_picture(tmp_path, capsys):
    from PIL import Image
    from aaformer_hf.apps.demo import main as demo

    demo(['--output_dir', str(tmp_path)])
    out = capsys.readouterr().out
    assert 'embedding  (384,) = (1 CLS + 5 [PART]s) x 64' in out and 'SYNTHETIC person image' in out
    picture = Image.open(tmp_path / 'part_assignment.png')
    assert picture.size == (3 * 128 + 2 * 6, 256)  # the image and one panel per [PART] group, tiled


def test_extract_in_onnx_runtime_matches_pytorch(market, model_dir, tmp_path, capsys):
    """``extract --runtime onnxruntime`` (issue #26): the model exported and run in ONNX Runtime gives PyTorch's
    embeddings (to float rounding) and the same file otherwise; a graph passed with --onnx is checked to be MODEL's."""
    pytest.importorskip('onnxruntime', reason='the onnx extra is not installed (the dev extra installs it)')
    pytest.importorskip('onnxscript', reason='the onnx extra is not installed (the dev extra installs it)')
    crops = market / 'query'
    runs = {}
    for runtime in ('torch', 'onnxruntime'):
        out = tmp_path / f'{runtime}.safetensors'
        assert main(['extract', str(model_dir), str(crops), '-o', str(out), '--runtime', runtime]) == 0
        runs[runtime] = load_embeddings(out)
    assert runs['onnxruntime']['paths'] == runs['torch']['paths']
    assert torch.equal(runs['onnxruntime']['pids'], runs['torch']['pids'])
    torch.testing.assert_close(runs['onnxruntime']['embeddings'], runs['torch']['embeddings'], atol=1e-4, rtol=1e-4)
    assert runs['onnxruntime']['model_job'] != runs['torch']['model_job']  # another graph: never resumes the other's
    # a graph written by export-onnx, passed in; one of another model is refused
    graph = tmp_path / 'model.onnx'
    assert main(['export-onnx', str(model_dir), '-o', str(graph)]) == 0
    given = tmp_path / 'given.safetensors'
    assert main(['extract', str(model_dir), str(crops), '-o', str(given), '--runtime', 'onnxruntime',
                 '--onnx', str(graph)]) == 0
    torch.testing.assert_close(load_embeddings(given)['embeddings'], runs['onnxruntime']['embeddings'])
    torch.manual_seed(1)
    other = tmp_path / 'other'
    AAformerModel(AAformerConfig(**TINY)).save_pretrained(other)
    AAformerImageProcessor().save_pretrained(other)
    with pytest.raises(SystemExit) as stop:
        main(['extract', str(other), str(crops), '-o', str(tmp_path / 'x.safetensors'), '--runtime', 'onnxruntime',
              '--onnx', str(graph)])
    assert stop.value.code == 2 and 'not' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['extract', str(model_dir), str(crops), '-o', str(tmp_path / 'y.safetensors'), '--onnx', str(graph)])


def test_export_onnx_quantized_to_int8_runs_in_extract(market, model_dir, tmp_path, capsys):
    """``export-onnx --quantize int8`` (issue #26): the kept file holds int8 integer products, not float ones, is
    smaller, is marked as quantized, and ``extract --onnx`` runs it: embeddings close to PyTorch's on real crops
    (cosine) but not equal to them - it is not the float graph; a --min_cosine it cannot meet writes nothing."""
    pytest.importorskip('onnxruntime', reason='the onnx extra is not installed (the dev extra installs it)')
    pytest.importorskip('onnxscript', reason='the onnx extra is not installed (the dev extra installs it)')
    import onnx
    float_graph, int8_graph = tmp_path / 'float.onnx', tmp_path / 'int8.onnx'
    assert main(['export-onnx', str(model_dir), '-o', str(float_graph)]) == 0
    assert main(['export-onnx', str(model_dir), '-o', str(int8_graph), '--quantize', 'int8']) == 0
    assert 'quantized to int8' in capsys.readouterr().out
    def operators(path):
        return [node.op_type for node in onnx.load(str(path)).graph.node]
    # the weights' products become integer ones; the attention's products of two activations stay float
    assert 'MatMulInteger' not in operators(float_graph) and 'MatMulInteger' in operators(int8_graph)
    assert operators(int8_graph).count('MatMul') < operators(float_graph).count('MatMul')
    assert int8_graph.stat().st_size < 0.8 * float_graph.stat().st_size  # the tiny model: much of it is the conv
    props = {p.key: p.value for p in onnx.load(str(int8_graph)).metadata_props}
    assert 'int8' in props['aaformer_hf.quantization']
    crops = market / 'query'
    runs = {}
    for name, extra in (('torch', []), ('int8', ['--runtime', 'onnxruntime', '--onnx', str(int8_graph)])):
        out = tmp_path / f'{name}.safetensors'
        assert main(['extract', str(model_dir), str(crops), '-o', str(out)] + extra) == 0
        runs[name] = load_embeddings(out)['embeddings']
    cosine = torch.nn.functional.cosine_similarity(runs['int8'], runs['torch'], dim=1)
    assert cosine.min() > 0.9 and (runs['int8'] - runs['torch']).abs().max() > 1e-3
    with pytest.raises(SystemExit) as stop:  # a cosine of 1 is more than int8 products give: nothing written
        main(['export-onnx', str(model_dir), '-o', str(tmp_path / 'strict.onnx'), '--quantize', 'int8',
              '--min_cosine', '1'])
    assert stop.value.code == 2 and 'not written' in capsys.readouterr().err
    assert not list(tmp_path.glob('*strict.onnx*'))  # neither the file nor a temporary one beside it
    with pytest.raises(SystemExit):  # read with --quantize only
        main(['export-onnx', str(model_dir), '-o', str(tmp_path / 'x.onnx'), '--min_cosine', '0.9'])


def test_extract_accepts_a_quantized_graph_at_a_lower_cosine_than_a_float_one(market, model_dir, tmp_path, capsys,
                                                                               monkeypatch):
    """``extract --onnx`` checks that the graph is MODEL's: a float graph must give its embeddings to a cosine of
    0.999, a graph marked as quantized only to 0.98 (int8 products move a trained ViT-B's by ~0.004 on random inputs).
    Here the graph's embeddings are made to differ by a cosine of ~0.995."""
    pytest.importorskip('onnxruntime', reason='the onnx extra is not installed (the dev extra installs it)')
    pytest.importorskip('onnxscript', reason='the onnx extra is not installed (the dev extra installs it)')
    from aaformer_hf.apps import export
    graph = tmp_path / 'model.onnx'
    assert main(['export-onnx', str(model_dir), '-o', str(graph)]) == 0
    exact, made = export.OnnxEmbedder.__call__, export.OnnxEmbedder.__init__

    def off_by_a_little(self, pixels):  # each embedding turned away by an angle of cosine 1/sqrt(1.01) = 0.995
        embeddings = exact(self, pixels)
        noise = torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(0))
        noise -= (noise * embeddings).sum(1, keepdim=True) / (embeddings * embeddings).sum(1, keepdim=True) * embeddings
        return embeddings + 0.1 * noise * embeddings.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)
    monkeypatch.setattr(export.OnnxEmbedder, '__call__', off_by_a_little)
    crops = market / 'query'
    for marked in (None, 'int8 dynamic'):
        def marked_as(self, *args, marked=marked, **kwargs):
            made(self, *args, **kwargs)
            self.quantization = marked
        monkeypatch.setattr(export.OnnxEmbedder, '__init__', marked_as)
        argv = ['extract', str(model_dir), str(crops), '-o', str(tmp_path / f'{marked}.safetensors'), '--runtime',
                'onnxruntime', '--onnx', str(graph)]
        if marked is None:
            with pytest.raises(SystemExit) as stop:
                main(argv)
            assert stop.value.code == 2 and 'cosine 0.99' in capsys.readouterr().err
        else:
            assert main(argv) == 0
