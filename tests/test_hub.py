"""Hub distribution, offline: pushes go through patched ``HfApi`` methods into a hand-made HF cache, and both libraries
(and transformers' pipeline) load the pushed repo from that cache as they would from the Hub."""
import hashlib
import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import timm
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoImageProcessor, AutoModel, pipeline

from aaformer_hf import (
    AAformerConfig, AAformerForReID, AAformerModel, PiVLConfig, PiVLForReID, PiVLResNetConfig, PiVLResNetForReID,
)
from aaformer_hf.hf import AAFORMER
from aaformer_hf.hub.cards import main as cards_main, planned_cards
from aaformer_hf.hub import check_push_supported, prepare_folder, push_to_hub

TINY_AAFORMER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
TINY_PIVL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 projection_dim=32)
TINY_PIVL_RESNET = dict(depths=(1, 1, 1, 1), hidden_sizes=(16, 32, 64, 128), stem_sizes=(8, 8, 16), projection_dim=32)
REPO = Path(__file__).resolve().parents[1]


class FakeHub:
    """Stands in for the Hub: ``upload_folder`` stores the folder as a snapshot in an HF cache laid out as
    huggingface_hub's downloads leave it (refs/<branch> -> snapshots/<sha>/), which offline loading then reads."""

    def __init__(self, cache: Path) -> None:
        self.cache, self.created, self.branches, self.uploads = cache, [], [], []

    def install(self, monkeypatch) -> 'FakeHub':
        hub = self
        monkeypatch.setattr(HfApi, 'create_repo', lambda api, repo_id, **kw: hub.created.append((repo_id, kw)))
        monkeypatch.setattr(HfApi, 'create_branch',
                            lambda api, repo_id, branch, **kw: hub.branches.append((repo_id, branch)))
        monkeypatch.setattr(HfApi, 'upload_folder', lambda api, **kw: hub.upload(**kw))
        monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(self.cache))
        monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
        return self

    def upload(self, repo_id, folder_path, revision=None, **kw):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        sha = hashlib.sha1(f'{repo_id}{revision}{len(self.uploads)}'.encode()).hexdigest()
        repo = self.cache / f'models--{repo_id.replace("/", "--")}'
        shutil.copytree(folder_path, repo / 'snapshots' / sha)
        (repo / 'refs').mkdir(parents=True, exist_ok=True)
        (repo / 'refs' / (revision or 'main')).write_text(sha)
        self.uploads.append(dict(repo_id=repo_id, files=files, revision=revision, sha=sha, **kw))
        return SimpleNamespace(commit_url=f'https://huggingface.co/{repo_id}/commit/{sha}', oid=sha)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    return FakeHub(tmp_path / 'hf_cache').install(monkeypatch)


def _pixels(seed=0):
    return torch.randn(2, 3, 256, 128, generator=torch.Generator().manual_seed(seed))


def _timm_embedding(model, x):
    return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.mark.parametrize('family', ['aaformer', 'pivl', 'pivl_resnet'])
def test_one_repo_loads_in_timm_transformers_and_the_pipeline(hub, family):
    torch.manual_seed(0)
    model = {'aaformer': lambda: AAformerForReID(AAformerConfig(**TINY_AAFORMER, num_labels=5)),
             'pivl': lambda: PiVLForReID(PiVLConfig(**TINY_PIVL, num_labels=5)),
             'pivl_resnet': lambda: PiVLResNetForReID(PiVLResNetConfig(**TINY_PIVL_RESNET, num_labels=5))}[family]()
    model.eval()
    commit = push_to_hub(model, 'org/tiny-reid')
    upload, = hub.uploads
    assert hub.created == [('org/tiny-reid', dict(private=None, exist_ok=True))]
    assert upload['files'] == ['README.md', 'config.json', 'model.safetensors', 'preprocessor_config.json']
    assert commit.oid == upload['sha']

    x = _pixels()
    with torch.no_grad():
        expected = model(x).embeddings
        by_transformers = AutoModel.from_pretrained('org/tiny-reid').eval()(x).pooler_output
        by_timm = timm.create_model('hf-hub:org/tiny-reid', pretrained=True).eval()
        assert by_timm.num_classes == 5  # a re-ID checkpoint keeps its identity classifiers in timm too
        torch.testing.assert_close(by_transformers, expected, rtol=0, atol=0)
        torch.testing.assert_close(_timm_embedding(by_timm, x), expected, rtol=0, atol=0)
    # the processor the repo carries is the family's, with the timm model's preprocessing
    processor = AutoImageProcessor.from_pretrained('org/tiny-reid')
    assert list(processor.image_mean) == list(by_timm.pretrained_cfg['mean'])
    assert (processor.size['height'], processor.size['width']) == (256, 128)
    image = Image.fromarray((torch.rand(300, 140, 3) * 255).byte().numpy())
    extractor = pipeline('image-feature-extraction', model='org/tiny-reid', pool=True)
    with torch.no_grad():
        pixels = processor(image, return_tensors='pt')
        direct = AutoModel.from_pretrained('org/tiny-reid').eval()(**pixels).pooler_output
    torch.testing.assert_close(torch.tensor(extractor(image)), direct, rtol=1e-5, atol=1e-5)


def test_revision_pins_a_version_in_both_libraries(hub):
    torch.manual_seed(0)
    first = AAformerModel(AAformerConfig(**TINY_AAFORMER)).eval()
    second = AAformerModel(AAformerConfig(**TINY_AAFORMER)).eval()
    push_to_hub(first, 'org/pinned')
    push_to_hub(second, 'org/pinned', revision='v2')
    assert hub.branches == [('org/pinned', 'v2')]
    x = _pixels()
    with torch.no_grad():
        for model, rev in ((first, None), (second, 'v2')):
            expected = model(x).pooler_output
            by_transformers = AutoModel.from_pretrained('org/pinned', revision=rev).eval()(x).pooler_output
            by_timm = timm.create_model('hf-hub:org/pinned' + (f'@{rev}' if rev else ''), pretrained=True).eval()
            torch.testing.assert_close(by_transformers, expected, rtol=0, atol=0)
            torch.testing.assert_close(by_timm(x), expected, rtol=0, atol=0)
        # the pinned commit itself (a sha) works as well
        sha = hub.uploads[1]['sha']
        torch.testing.assert_close(AutoModel.from_pretrained('org/pinned', revision=sha).eval()(x).pooler_output,
                                   second(x).pooler_output, rtol=0, atol=0)


def test_a_timm_module_is_pushed_as_the_same_repo(hub):
    torch.manual_seed(0)
    model = timm.create_model('aaformer_tiny', num_classes=7).eval()
    push_to_hub(model, 'org/from-timm')
    x = _pixels()
    with torch.no_grad():
        reloaded = timm.create_model('hf-hub:org/from-timm', pretrained=True).eval()
        torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(AutoModel.from_pretrained('org/from-timm').eval()(x).pooler_output,
                                   _timm_embedding(model, x), rtol=0, atol=0)
    config = json.loads((hub.cache / 'models--org--from-timm' / 'snapshots' / hub.uploads[0]['sha'] /
                         'config.json').read_text())
    assert config['architectures'] == ['AAformerForReID'] and config['num_classes'] == 7


def test_timm_keys_are_regenerated_not_carried_over(tmp_path):
    """A re-ID checkpoint re-saved with other identities (or a hand-edited config) must not keep stale timm keys,
    which timm would build the model from."""
    AAformerForReID(AAformerConfig(**TINY_AAFORMER, num_labels=5)).save_pretrained(tmp_path / 'a')
    config_file = tmp_path / 'a' / 'config.json'
    saved = json.loads(config_file.read_text())
    assert saved['num_classes'] == 5 and saved['model_args']['embed_dim'] == 64
    assert saved['model_args']['depth'] == 2 and saved['pretrained_cfg']['input_size'] == [3, 256, 128]
    saved.update(num_classes=99, model_args={'embed_dim': 1}, architecture='vit_base_patch16_224')
    config_file.write_text(json.dumps(saved))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # timm's keys are expected in a config.json, not "unknown keys"
        config = AutoConfig.from_pretrained(tmp_path / 'a')
    assert not hasattr(config, 'model_args')  # timm's keys are not kept as attributes
    config.num_labels = 3
    config.save_pretrained(tmp_path / 'b')
    resaved = json.loads((tmp_path / 'b' / 'config.json').read_text())
    assert resaved['num_classes'] == 3 and resaved['pretrained_cfg']['num_classes'] == 3
    assert resaved['architecture'] == 'aaformer_base' and resaved['model_args']['embed_dim'] == 64
    # a feature extractor's folder builds timm's model without identity classifiers
    AAformerModel(AAformerConfig(**TINY_AAFORMER)).save_pretrained(tmp_path / 'features')
    assert json.loads((tmp_path / 'features' / 'config.json').read_text())['num_classes'] == 0
    assert timm.create_model(f'local-dir:{tmp_path / "features"}', pretrained=True).num_classes == 0


def _trained_folder(root: Path, best=True) -> Path:
    """A training run's output as examples/train.py leaves it: model/, best_model/ and metrics.json."""
    torch.manual_seed(0)
    for name in ('model', 'best_model') if best else ('model',):
        AAformerForReID(AAformerConfig(**TINY_AAFORMER, num_labels=5)).save_pretrained(root / name)
    metrics = dict(rank1=0.5, rank5=0.75, rank10=0.875, mAP=0.4321, mINP=0.2, num_valid_queries=8, epochs=30,
                   dataset='market1501', model='aaformer_tiny', method='aaformer', train_images=1000,
                   best=dict(rank1=0.625, rank5=0.75, rank10=1.0, mAP=0.5, mINP=0.25, num_valid_queries=8, epoch=20))
    (root / 'metrics.json').write_text(json.dumps(metrics))
    return root


def test_card_model_index_holds_what_was_measured_and_parses_back(tmp_path):
    run = _trained_folder(tmp_path / 'run')
    final = prepare_folder(run / 'model', tmp_path / 'final', repo_id='org/aaformer-market')
    card = ModelCard.load(final / 'README.md')
    measured = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert measured == {'rank1': 50.0, 'rank5': 75.0, 'rank10': 87.5, 'mAP': 43.21, 'mINP': 20.0}
    result = card.data.eval_results[0]
    assert (result.task_type, result.task_name) == ('image-feature-extraction', 'Person Re-Identification')
    assert (result.dataset_type, result.dataset_name) == ('market1501', 'Market-1501')
    assert card.data.pipeline_tag == 'image-feature-extraction' and 'timm' in card.data.tags
    text = card.text
    assert "AutoModel.from_pretrained('org/aaformer-market')" in text and 'import aaformer_hf' in text
    assert "hf-hub:org/aaformer-market" in text and 'surveillance' in text and '@article{zhu2023aaformer' in text
    # the paper's numbers are shown, labelled, and never enter the model-index
    reported, = AAFORMER.reported['market1501']
    assert 'Reported by the paper (not measured for these weights)' in text and '| AAformer | 95.4 | 88.0 |' in text
    assert reported[1]['mAP'] not in measured.values()
    # best_model: the best evaluation, and the card says how it was chosen
    best = ModelCard.load(prepare_folder(run / 'best_model', tmp_path / 'best', repo_id='org/x') / 'README.md')
    assert {r.metric_type: r.metric_value for r in best.data.eval_results}['mAP'] == 50.0
    assert 'best mAP on the evaluation set (epoch 20)' in best.text


def test_synthetic_results_are_labelled(tmp_path):
    run = _trained_folder(tmp_path / 'run', best=False)
    metrics = json.loads((run / 'metrics.json').read_text())
    (run / 'metrics.json').write_text(json.dumps(dict(metrics, dataset='synthetic')))
    text = ModelCard.load(prepare_folder(run / 'model', tmp_path / 'out') / 'README.md').text
    assert 'say nothing about accuracy on real people' in text and 'Reported by the paper' not in text


def test_prepare_folder_refuses_pickles_and_names_what_is_missing(tmp_path):
    run = _trained_folder(tmp_path / 'run', best=False)
    (run / 'model' / 'pytorch_model.bin').write_bytes(b'not even a pickle')
    with pytest.raises(ValueError, match=r'model: holds pickle files \(pytorch_model.bin\); .* safetensors only'):
        prepare_folder(run / 'model', tmp_path / 'out')
    (run / 'model' / 'pytorch_model.bin').unlink()
    (run / 'model' / 'model.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match=r'model/model.safetensors: missing'):
        prepare_folder(run / 'model', tmp_path / 'out2')
    with pytest.raises(FileNotFoundError, match='nowhere: model folder not found'):
        prepare_folder(tmp_path / 'nowhere', tmp_path / 'out3')
    (tmp_path / 'out4').mkdir()
    with pytest.raises(FileExistsError, match='out4: already exists'):
        prepare_folder(run / 'model', tmp_path / 'out4')


def test_a_folder_keeps_its_own_card_and_processor(tmp_path):
    run = _trained_folder(tmp_path / 'run', best=False)
    (run / 'model' / 'README.md').write_text('my own card\n')
    out = prepare_folder(run / 'model', tmp_path / 'out')
    assert (out / 'README.md').read_text() == 'my own card\n'
    weights = load_file(out / 'model.safetensors')
    assert set(weights) == set(load_file(run / 'model' / 'model.safetensors'))


def test_bad_repo_ids_fail_before_anything_is_written():
    with pytest.raises(ValueError, match='needs hub_model_id'):
        check_push_supported(None)
    with pytest.raises(ValueError, match="hub_model_id 'org/two//slashes'"):
        check_push_supported('org/two//slashes')


def test_committed_planned_cards_are_the_generated_ones(tmp_path):
    """model_cards/ is generated (``python -m aaformer_hf.hub.cards --planned model_cards``), never hand-edited."""
    written = planned_cards(tmp_path)
    committed = sorted(p.name for p in (REPO / 'model_cards').glob('*.md'))
    assert committed == sorted(p.name for p in written)
    for path in written:
        assert path.read_text() == (REPO / 'model_cards' / path.name).read_text(), path.name
        card = ModelCard.load(path)
        assert card.data.eval_results is None  # planned: nothing measured, so no model-index
        assert 'Reported by the paper (not measured for these weights)' in card.text
        assert 'Planned checkpoint' in card.text


def test_cards_command_writes_a_folder_card(tmp_path, capsys):
    run = _trained_folder(tmp_path / 'run', best=False)
    assert cards_main([str(run / 'model'), '--repo_id', 'me/mine']) == 0
    card = ModelCard.load(run / 'model' / 'README.md')
    assert "hf-hub:me/mine" in card.text and len(card.data.eval_results) == 5
    with pytest.raises(SystemExit) as exit_info:
        cards_main([str(tmp_path / 'missing')])
    assert exit_info.value.code == 2 and 'missing: model folder not found' in capsys.readouterr().err


def test_a_plain_timm_folder_needs_a_students_run_or_its_own_card(tmp_path, hub):
    """Only a Table 5 student (a run's metrics.json naming student_model) gets a generated card; another plain
    timm folder must bring its own README.md; a timm config without pretrained_cfg is refused by name."""
    from timm.models import save_for_hf
    backbone = timm.create_model('test_efficientnet', num_classes=0)
    folder = tmp_path / 'run' / 'model'
    save_for_hf(backbone, str(folder), safe_serialization=True)
    with pytest.raises(ValueError, match=r'model: a plain timm model, but not one examples/train.py trained as a '
                                         r'student'):
        push_to_hub(folder, 'org/plain')
    (tmp_path / 'run' / 'metrics.json').write_text(json.dumps(dict(mAP=0.25, rank1=0.5, dataset='market1501',
                                                                   student_model='test_efficientnet', stage1_step=0,
                                                                   model='pivl_vit_tiny', epochs=3)))
    card = cards_main([str(folder), '--repo_id', 'org/student']) or ModelCard.load(folder / 'README.md')
    assert 'the student trained alone' in card.text and card.data.library_name == 'timm'
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {'mAP': 25.0, 'rank1': 50.0}
    (folder / 'README.md').write_text('my own card\n')
    push_to_hub(folder, 'org/own-card')
    snapshot = hub.cache / 'models--org--own-card' / 'snapshots' / hub.uploads[-1]['sha']
    assert (snapshot / 'README.md').read_text() == 'my own card\n'
    config = json.loads((folder / 'config.json').read_text())
    del config['pretrained_cfg']
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r'config.json: a timm config without pretrained_cfg'):
        push_to_hub(folder, 'org/broken')
