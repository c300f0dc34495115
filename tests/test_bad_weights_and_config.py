"""Weights that do not fit and configurations that cannot work fail with errors naming the file, keys or field;
what may legitimately be missing (identity classifiers, a backbone's re-ID head) is re-initialised and reported."""
import logging

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import AutoModel

from aaformer_hf import AAformerConfig, AAformerForReID, AAformerModel

TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=256)


def local(file):
    return dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_missing_and_truncated_weight_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f'{tmp_path / "nowhere.safetensors"}: pretrained weights file not'):
        timm.create_model('aaformer_tiny', **local(tmp_path / 'nowhere.safetensors'))
    save_file(timm.create_model('aaformer_tiny').state_dict(), tmp_path / 'cut.safetensors')
    truncate(tmp_path / 'cut.safetensors')
    with pytest.raises(ValueError, match=f'{tmp_path / "cut.safetensors"}: unreadable safetensors file'):
        timm.create_model('aaformer_tiny', **local(tmp_path / 'cut.safetensors'))
    AAformerModel(AAformerConfig(**TINY)).save_pretrained(tmp_path / 'folder')
    truncate(tmp_path / 'folder' / 'model.safetensors')
    with pytest.raises(OSError, match=f'{tmp_path / "folder"}: unreadable safetensors weights'):
        AutoModel.from_pretrained(tmp_path / 'folder')


def test_a_vit_of_another_depth_is_an_error_naming_the_keys(tmp_path):
    shallow = timm.create_model('vit_tiny_patch16_224', embed_dim=64, depth=2, num_heads=2)
    save_file(shallow.state_dict(), tmp_path / 'vit_depth2.safetensors')
    with pytest.raises(ValueError, match=r"encoder .*: 24 missing: blocks\.2\.norm1\.weight"):
        timm.create_model('aaformer_tiny', **local(tmp_path / 'vit_depth2.safetensors'))  # depth 4
    deep = timm.create_model('vit_tiny_patch16_224', embed_dim=64, depth=5, num_heads=2)
    save_file(deep.state_dict(), tmp_path / 'vit_depth5.safetensors')
    with pytest.raises(ValueError, match=r'12 unexpected: blocks\.4\.'):
        timm.create_model('aaformer_tiny', **local(tmp_path / 'vit_depth5.safetensors'))
    wide = timm.create_model('vit_tiny_patch16_224', embed_dim=96, depth=4, num_heads=2)
    save_file(wide.state_dict(), tmp_path / 'vit_wide.safetensors')
    with pytest.raises(ValueError, match=r'54 of another shape: blocks\.0\.attn\.proj\.bias \(96,\) vs \(64,\)'):
        timm.create_model('aaformer_tiny', **local(tmp_path / 'vit_wide.safetensors'))


def test_transformers_refuses_missing_encoder_weights_but_reports_missing_classifiers(tmp_path):
    AAformerModel(AAformerConfig(**TINY)).save_pretrained(tmp_path / 'depth2')
    deeper = AAformerConfig(**dict(TINY, num_hidden_layers=4))
    with pytest.raises(ValueError, match=r'depth2: the checkpoint lacks 24 encoder weights this AAformerConfig '
                                         r'needs \(blocks\.2\.'):
        AutoModel.from_pretrained(tmp_path / 'depth2', config=deeper)
    # an encoder checkpoint for a re-ID model with classifiers: the classifiers are new, as in transformers
    model, info = AAformerForReID.from_pretrained(tmp_path / 'depth2', num_labels=7, output_loading_info=True)
    assert info['missing_keys'] == {'timm_model.head.weight'}
    assert model.timm_model.head.weight.shape == (6, 7, 64)  # CLS + 5 [PART]s, 7 identities


def test_a_trained_reid_model_of_another_layout_initialises_the_trunk_only(tmp_path, caplog):
    torch.manual_seed(0)
    baseline = timm.create_model('aaformer_tiny', part_groups=(), num_classes=5)  # a trained ViT-baseline
    save_file(baseline.state_dict(), tmp_path / 'vit_baseline.safetensors')
    with caplog.at_level(logging.WARNING):
        model = timm.create_model('aaformer_tiny', num_classes=9, **local(tmp_path / 'vit_baseline.safetensors'))
    assert 're-ID model with 1 embedding tokens, this model has 6: loading its trunk only' in caplog.text
    state, source = model.state_dict(), baseline.state_dict()
    for key in ('cls_token', 'pos_embed', 'blocks.3.mlp.fc2.weight', 'norm.bias'):
        torch.testing.assert_close(state[key], source[key])
    assert state['bnneck.weight'].shape == (6 * 64,) and 0.01 < state['part_tokens'].std() < 0.03
    # the same through the trainer's path: --pretrained_file of a saved re-ID model folder
    from train import TrainConfig, build_model
    config = TrainConfig(data_root='x', model='aaformer_tiny', pretrained_file=str(tmp_path / 'vit_baseline.safetensors'))
    reid, _, _ = build_model(config, num_classes=9)
    torch.testing.assert_close(reid.timm_model.blocks[0].attn.qkv.weight, baseline.blocks[0].attn.qkv.weight)


def test_configurations_that_cannot_work_are_refused():
    with pytest.warns(UserWarning, match=r"AAformerConfig: unknown key\(s\) \['num_layers'\] \(num_hidden_layers\?\) "
                                         'kept as plain attributes'):
        AAformerConfig(num_layers=4)
    with pytest.raises(ValueError, match=r'part_groups \(0,\): every group needs between 1 and 128 parts'):
        AAformerConfig(part_groups=(0,))
    with pytest.raises(ValueError, match=r'part_groups \(2, 129\): every group needs between 1 and 128'):
        AAformerConfig(part_groups=(2, 129))
    for kwargs, message in [(dict(num_classes=-1), 'num_classes must be >= 0'),
                            (dict(part_groups=(0, 2)), 'every group needs between 1 and 128 parts'),
                            (dict(part_groups=(129,), assignment='stripes'), 'between 1 and 128 parts')]:
        with pytest.raises(ValueError, match=message):
            timm.create_model('aaformer_tiny', **kwargs)
    with pytest.raises(ValueError, match='num_classes must be >= 0'):
        timm.create_model('aaformer_tiny').reset_classifier(-1)
    # what transformers' base config understands (and its legacy generic keys) is accepted without a word
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert AAformerConfig(num_labels=3, output_attentions=True, tie_word_embeddings=False).num_labels == 3
