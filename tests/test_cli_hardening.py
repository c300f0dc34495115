"""What a trial of the CLI and Hub paths got wrong (issue #22), each as the behaviour a user should meet: one lock per
extract output, shards keyed on the weights, one image reader (16-bit refused everywhere), pushes that check their
weights, cards that state the run's real init and data, evaluate == training's numbers, outputs checked before any
work under one overwrite rule, and a clear exit-2 message naming the file or flag instead of a traceback."""
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file

from aaformer_hf import AAformerConfig, AAformerImageProcessor, AAformerModel
from aaformer_hf.files import atomic_path, hold_lock
from aaformer_hf.apps.cli import main
from aaformer_hf.data.synthetic import generate_market_layout
from aaformer_hf.apps.extract import FORMAT, extract_to_file, load_embeddings, load_inference_model
from aaformer_hf.hub import push_to_hub

from .test_hub import hub  # noqa: F401  (the fixture)

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


@pytest.fixture(scope='module')
def market(tmp_path_factory):
    return generate_market_layout(tmp_path_factory.mktemp('hardening') / 'market', train_ids=4, test_ids=12,
                                  images_per_id=4, distractors=4, junk=1, seed=7)


def _model(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    AAformerModel(AAformerConfig(**TINY)).save_pretrained(folder)
    AAformerImageProcessor().save_pretrained(folder)
    return folder


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, market):
    """A tiny AAformer trained by the example trainer from a random init on the synthetic set."""
    from train import TrainConfig, train
    out = tmp_path_factory.mktemp('run') / 'run'
    train(TrainConfig(model='aaformer_tiny', pretrained=False, dataset='market1501', data_root=str(market),
                      output_dir=str(out), epochs=2, warmup_epochs=1, batch_size=8, num_instances=4, eval_every=100,
                      num_workers=0, eval_batch_size=64, checkpointing_steps=None))
    return out


def _fails(argv, capsys, *messages):
    """The command exits 2 with a one-line error holding every message (no traceback)."""
    capsys.readouterr()  # what came before (the fixtures' own output)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert 'Traceback' not in err and err.count('\n') == 1, err
    for message in messages:
        assert message in err, (message, err)
    return err


# --- extract: one job per output, resumed only by the same job -----------------------------------------------------

def test_a_second_extract_into_the_same_output_stops_naming_the_holder(tmp_path, market, capsys):
    model = _model(tmp_path / 'a', 0)
    out = tmp_path / 'emb.safetensors'
    with hold_lock(Path(f'{out}.lock'), 'another extract'):  # a live job (this process) holds the output
        _fails(['extract', str(model), str(market / 'query'), '-o', str(out)], capsys,
               f'{out} (extract) is in use by another process (pid {os.getpid()}', f'{out}.lock')
    assert not out.exists() and not Path(f'{out}.parts').exists()
    # a lock left by a process that is gone (a killed job) is taken over
    Path(f'{out}.lock').write_text(json.dumps({'host': os.uname().nodename, 'pid': 2 ** 22 + 12345}))
    assert main(['extract', str(model), str(market / 'query'), '-o', str(out)]) == 0
    assert out.is_file() and not Path(f'{out}.lock').exists()


def test_shards_are_keyed_on_the_weights_not_the_name(tmp_path, market, caplog):
    paths = sorted((market / 'bounding_box_test').glob('*.jpg'))
    folder = _model(tmp_path / 'model', 0)
    out = tmp_path / 'emb.safetensors'
    # process 1 of 2 leaves its shards behind (a job that stopped half-way)
    extract_to_file(load_inference_model(str(folder)), paths, out, str(folder), shard_size=4, process_index=1,
                    num_processes=2)
    # the folder is retrained (same name, new model.safetensors): the old shards are not reused
    _model(folder, 1)
    retrained = load_inference_model(str(folder))
    with pytest.raises(FileExistsError, match='holds shards of another job .* pass --overwrite'):
        extract_to_file(retrained, paths, out, str(folder), shard_size=4, process_index=0, num_processes=1)
    extract_to_file(retrained, paths, out, str(folder), shard_size=4, process_index=0, num_processes=1,
                    overwrite=True)
    fresh = tmp_path / 'fresh.safetensors'
    extract_to_file(retrained, paths, fresh, str(folder), shard_size=4, process_index=0, num_processes=1)
    assert torch.equal(load_embeddings(out)['embeddings'], load_embeddings(fresh)['embeddings'])
    # the same weights resume, and say how much they reuse
    again = tmp_path / 'again.safetensors'
    extract_to_file(retrained, paths, again, str(folder), shard_size=4, process_index=1, num_processes=2)
    with caplog.at_level(logging.INFO, logger='aaformer_hf'):
        extract_to_file(retrained, paths, again, str(folder), shard_size=4, process_index=0, num_processes=1)
    shards = -(-len(paths) // 4)
    assert f'resuming; {shards // 2} of {shards} shards already written' in caplog.text
    assert torch.equal(load_embeddings(again)['embeddings'], load_embeddings(fresh)['embeddings'])


def test_a_bare_timm_name_never_resumes_another_random_init(tmp_path, market):
    paths = sorted((market / 'query').glob('*.jpg'))
    out = tmp_path / 'emb.safetensors'
    extract_to_file(load_inference_model('aaformer_tiny'), paths, out, 'aaformer_tiny', shard_size=2,
                    process_index=1, num_processes=2)
    with pytest.raises(FileExistsError, match='holds shards of another job'):
        extract_to_file(load_inference_model('aaformer_tiny'), paths, out, 'aaformer_tiny', shard_size=2,
                        process_index=0, num_processes=1)


def test_extract_stores_resolved_paths_and_logs_progress_without_a_terminal(tmp_path, market, caplog, monkeypatch):
    model = _model(tmp_path / 'model', 0)
    crops = tmp_path / 'crops'
    crops.mkdir()
    for path in sorted((market / 'query').glob('*.jpg'))[:3]:
        (crops / path.name).write_bytes(path.read_bytes())
    (crops / 'list.txt').write_text('\n'.join(p.name for p in sorted(crops.glob('*.jpg'))))
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger='aaformer_hf'):
        relative = [Path('crops') / p.name for p in sorted(crops.glob('*.jpg'))]
        extract_to_file(load_inference_model(str(model)), relative, Path('out.safetensors'), 'm', batch_size=1,
                        process_index=0, num_processes=1, log_every=1)
    saved = load_embeddings(tmp_path / 'out.safetensors')
    assert saved['paths'] == [str((crops / p.name).resolve()) for p in sorted(crops.glob('*.jpg'))]
    assert 'out.safetensors: 3 / 3 images embedded' in caplog.text  # pytest's capture is not a terminal


# --- one image reader -------------------------------------------------------------------------------------------

def test_16_bit_images_are_refused_by_extract_and_visualize(tmp_path, capsys):
    model = _model(tmp_path / 'model', 0)
    crops = tmp_path / 'crops'
    crops.mkdir()
    Image.fromarray(np.full((64, 32, 3), 90, dtype=np.uint8)).save(crops / 'a.png')
    Image.fromarray(np.full((64, 32), 3000, dtype=np.uint16)).save(crops / 'wide.png')  # dark grey in 16 bits
    mode = Image.open(crops / 'wide.png').mode  # I;16, or I before Pillow 11
    assert mode in ('I;16', 'I')
    _fails(['extract', str(model), str(crops), '-o', str(tmp_path / 'e.safetensors')], capsys,
           f'wide.png: {mode} image (16', 'convert it to 8-bit first')
    _fails(['visualize', 'parts', str(model), str(crops / 'wide.png'), '-o', str(tmp_path / 'p.png')], capsys,
           f'wide.png: {mode} image (16')
    (crops / 'broken.png').write_bytes((crops / 'a.png').read_bytes()[:60])
    _fails(['visualize', 'parts', str(model), str(crops / 'broken.png'), '-o', str(tmp_path / 'p.png')], capsys,
           'broken.png: unreadable image')


# --- Hub and cards ------------------------------------------------------------------------------------------------

def test_push_to_hub_checks_the_weights_before_uploading(tmp_path, hub):  # noqa: F811  (the fixture)
    folder = _model(tmp_path / 'model', 0)
    weights = folder / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:len(weights.read_bytes()) // 2])  # truncated
    with pytest.raises(ValueError, match=r'model.safetensors: not uploaded: the weights do not load'):
        push_to_hub(folder, 'org/truncated')
    assert hub.created == [] and hub.uploads == []


def test_the_card_states_the_runs_init_and_data_and_is_not_replaced_unasked(trained_run, capsys):
    folder = trained_run / 'model'
    assert main(['card', str(folder), '--repo_id', 'me/tiny']) == 0
    card = ModelCard.load(folder / 'README.md')
    assert card.data.base_model is None  # --pretrained false: no base model to claim
    assert 'trained from a random initialisation' in card.text
    assert 'aaformer-hf synthetic re-ID set' in card.text and 'Market-1501' not in card.data.model_name
    assert {r.dataset_name for r in card.data.eval_results} == {'aaformer-hf synthetic re-ID set'}
    (folder / 'README.md').write_text('my own card')
    _fails(['card', str(folder)], capsys, 'README.md: already exists (pass --overwrite')
    assert (folder / 'README.md').read_text() == 'my own card'
    assert main(['card', str(folder), '--overwrite']) == 0 and 'my own card' not in (folder / 'README.md').read_text()


def test_a_run_from_a_hub_checkpoint_names_it_as_base_model():
    from aaformer_hf.hub.cards import model_card
    card = model_card(AAformerConfig(**TINY), 'me/x', metrics=dict(
        dataset='market1501', mAP=0.5, init={'kind': 'hub', 'hub_id': 'timm/vit_base_patch16_224.orig_in21k_ft_in1k'}))
    assert card.data.base_model == 'timm/vit_base_patch16_224.orig_in21k_ft_in1k'
    assert model_card(AAformerConfig(**TINY), 'me/x', metrics=dict(dataset='market1501', mAP=0.5)).data.base_model \
        is None  # not recorded: not claimed


def test_evaluate_reproduces_the_runs_metrics(trained_run, market, tmp_path, capsys):
    recorded = json.loads((trained_run / 'metrics.json').read_text())
    out = tmp_path / 'm.json'
    assert main(['evaluate', str(trained_run / 'model'), '--dataset', 'market1501', '--root', str(market),
                 '--json', str(out)]) == 0
    measured = json.loads(out.read_text())
    for key in ('rank1', 'rank5', 'mAP', 'mINP'):
        assert measured['plain'][key] == pytest.approx(recorded[key], abs=1e-6), key
    assert measured['dataset'] == recorded['dataset'] == 'synthetic'


# --- outputs: checked first, one overwrite rule ------------------------------------------------------------------

def test_outputs_are_checked_before_any_work_and_never_replaced_unasked(tmp_path, market, capsys):
    model = _model(tmp_path / 'model', 0)
    missing = tmp_path / 'no_such_folder'
    # a dataset root that does not exist: the output error must come first, naming the user's path
    err = _fails(['evaluate', str(model), '--dataset', 'market1501', '--root', str(tmp_path / 'none'), '--json',
                  str(missing / 'm.json')], capsys, f'{missing / "m.json"}: its folder {missing} does not exist')
    assert '.m.json.' not in err
    _fails(['export-onnx', str(model), '-o', str(missing / 'r.onnx')], capsys, f'{missing / "r.onnx"}: its folder')
    existing = tmp_path / 'exists'
    existing.write_bytes(b'keep')
    for argv in (['visualize', 'parts', str(model), str(market / 'query'), '-o', str(existing)],
                 ['evaluate', str(model), '--dataset', 'market1501', '--root', str(market), '--json', str(existing)],
                 ['export-onnx', str(model), '-o', str(existing)],
                 ['extract', str(model), str(market / 'query'), '-o', str(existing)]):
        _fails(argv, capsys, f'{existing}: already exists (pass --overwrite to replace it)')
    assert existing.read_bytes() == b'keep'
    assert main(['visualize', 'parts', str(model), str(market / 'query'), '-o', str(existing), '--overwrite']) == 0
    assert Image.open(existing).format == 'PNG'


def test_files_get_the_umask_and_a_full_disk_names_the_file(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / 'a.json') as tmp:
            tmp.write_text('{}')
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / 'a.json').stat().st_mode) == 0o644  # not mkstemp's 0600
    with pytest.raises(OSError, match=rf'{tmp_path / "b.json"}: not written \(No space left on device\)'):
        with atomic_path(tmp_path / 'b.json') as tmp:
            raise OSError(28, 'No space left on device', str(tmp))
    assert list(tmp_path.iterdir()) == [tmp_path / 'a.json']  # no temporary file left


def test_a_full_disk_during_extract_names_the_file(tmp_path, market, capsys, monkeypatch):
    """safetensors reports a full disk as its own error type, not an OSError: still one line naming the file."""
    import aaformer_hf.apps.extract as embeddings
    from safetensors import SafetensorError
    model = _model(tmp_path / 'model', 0)

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')

    monkeypatch.setattr(embeddings, 'save_file', full)
    out = tmp_path / 'e.safetensors'
    _fails(['extract', str(model), str(market / 'query'), '-o', str(out)], capsys,
           f'{out}.parts/part_000000.safetensors: not written (', 'No space left on device')
    assert not out.exists() and not list(Path(f'{out}.parts').iterdir())


# --- bad input: exit 2 naming the file or flag ------------------------------------------------------------------

@pytest.fixture
def embeddings(tmp_path, market):
    model = _model(tmp_path / 'model', 0)
    gallery, query = tmp_path / 'g.safetensors', tmp_path / 'q.safetensors'
    main(['extract', str(model), str(market / 'bounding_box_test'), '-o', str(gallery)])
    main(['extract', str(model), str(market / 'query'), '-o', str(query)])
    return gallery, query


def test_search_refuses_bad_flags_and_files(tmp_path, embeddings, capsys):
    gallery, query = embeddings
    out = str(tmp_path / 'm.json')
    for top in ('-3', '0'):
        _fails(['search', str(gallery), str(query), '-o', out, '--top', top], capsys, f'--top {top}: give at least 1')
    _fails(['search', str(gallery), str(query), '-o', out, '--backend', 'faiss', '--index', 'IVF4096,Flat'], capsys,
           "index 'IVF4096,Flat': 4096 inverted lists need at least 4096 gallery embeddings", 'Flat')
    _fails(['search', str(gallery), str(query), '-o', out, '--backend', 'faiss', '--index', 'Bogus,Flat'], capsys,
           "index 'Bogus,Flat': not an index faiss can build", 'could not parse')
    if not torch.cuda.is_available():  # the message only a machine without a GPU gives
        _fails(['search', str(gallery), str(query), '-o', out, '--device', 'cuda'], capsys,
               '--device cuda: no CUDA GPU is available')
    saved = load_embeddings(gallery)
    tensors = {k: saved[k] for k in ('embeddings', 'pids', 'camids')}
    metadata = {'format': FORMAT, 'model': saved['model'], 'flip': 'false', 'paths': json.dumps(saved['paths'][:-1])}
    short = tmp_path / 'short.safetensors'
    save_file(tensors, str(short), metadata=metadata)
    _fails(['search', str(short), str(query), '-o', out], capsys,
           f'{short}: {len(saved["paths"])} embeddings but {len(saved["paths"]) - 1} paths')
    zeros = tmp_path / 'zeros.safetensors'
    save_file({**tensors, 'embeddings': torch.zeros_like(saved['embeddings'])}, str(zeros),
              metadata={**metadata, 'paths': json.dumps(saved['paths'])})
    _fails(['search', str(zeros), str(query), '-o', out], capsys, f'{zeros}: {len(saved["paths"])} all-zero')
    assert not Path(out).exists()


def test_visualize_names_a_layer_the_model_lacks(tmp_path, market, capsys):
    model = _model(tmp_path / 'model', 0)
    _fails(['visualize', 'parts', str(model), str(market / 'query'), '-o', str(tmp_path / 'p.png'), '--layer', '99'],
           capsys, '--layer 99: ', 'has 2 layers')


def test_a_truncated_config_is_named(tmp_path, market, capsys):
    model = _model(tmp_path / 'model', 0)
    (model / 'config.json').write_text((model / 'config.json').read_text()[:40])
    _fails(['extract', str(model), str(market / 'query'), '-o', str(tmp_path / 'e.safetensors')], capsys,
           f'{model / "config.json"}: unreadable JSON')


def test_convert_refuses_wrong_shapes_missing_keys_and_nan(tmp_path, capsys):
    from .test_convert_clipreid import clipreid_state_dict
    cases = {'shape': dict(clipreid_state_dict(), **{'image_encoder.ln_pre.weight': torch.ones(7)}),
             'missing': {k: v for k, v in clipreid_state_dict().items() if k != 'image_encoder.ln_post.weight'},
             'nan': dict(clipreid_state_dict(), **{'classifier.weight': torch.full((5, 128), float('nan'))})}
    expected = {'shape': 'not a complete CLIP-ReID checkpoint (', 'missing': 'Missing key(s)',
                'nan': '1 tensor(s) hold NaN or Inf (classifier.weight)'}
    for name, state_dict in cases.items():
        path = tmp_path / f'{name}.pth'
        torch.save(state_dict, path)
        _fails(['convert', str(path), str(tmp_path / f'out_{name}')], capsys, f'{path}: ', expected[name])
        assert not (tmp_path / f'out_{name}').exists() or not any((tmp_path / f'out_{name}').iterdir())
    good = tmp_path / 'good.pth'
    torch.save(clipreid_state_dict(), good)
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'x').write_text('x')
    _fails(['convert', str(good), str(tmp_path / 'full')], capsys, 'not empty', '--overwrite')


def test_trainer_names_a_broken_yaml_and_a_damaged_checkpoint(tmp_path, market, caplog):
    from train import TrainConfig, parse_config, resumed_at, train
    from train_outputs import OutputDirError, resume_folder
    config = tmp_path / 'bad.yaml'
    config.write_text('epochs: 3\nlr: [0.1\n')
    with pytest.raises(ValueError, match=rf'{config}: not valid YAML'):
        parse_config(['--config', str(config)])
    out = tmp_path / 'run'
    with caplog.at_level(logging.INFO, logger='train'):
        train(TrainConfig(model='aaformer_tiny', pretrained=False, dataset='market1501', data_root=str(market),
                          output_dir=str(out), epochs=1, warmup_epochs=1, batch_size=8, num_instances=4,
                          eval_every=100, num_workers=0, eval_batch_size=64, checkpointing_steps='epoch', log_every=1))
    # no terminal here (pytest captures the output): the epoch's progress still shows, a line per step
    assert 'epoch 1: step 1 / ' in caplog.text and 'loss ' in caplog.text
    checkpoint = out / 'checkpoints' / 'epoch_1'
    weights = next(checkpoint.rglob('model.safetensors'))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(OutputDirError, match=rf'{weights}: damaged checkpoint file'):
        resume_folder('latest', out)
    # where a two-stage run resumes, in its own terms
    assert resumed_at({'stage': 1, 'stage1_epoch': 2, 'stage1_step_in_epoch': 4, 'stage1_step': 52, 'epoch': 0,
                       'step_in_epoch': 0, 'global_step': 0}) == 'stage 1, epoch 2, step 4 (52 stage-1 steps done)'
    assert resumed_at({'epoch': 3, 'step_in_epoch': 0, 'global_step': 36}) == 'epoch 3, step 0 (36 steps done)'
    loaded = load_file(next((out / 'model').glob('*.safetensors')))
    assert loaded  # the run itself was saved whole


def test_hints_name_the_cli_flag(tmp_path, market):
    from aaformer_hf.data import add_parsing_column, load_reid_dataset
    train_split = load_reid_dataset('market1501', market)['train']  # a set written without parsing maps
    with pytest.raises(ValueError, match=r'--parsing_missing keep'):
        add_parsing_column(train_split, market)
