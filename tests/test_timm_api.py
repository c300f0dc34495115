"""The timm front door: registry, pretrained cfgs, ImageNet-ViT initialisation through timm's pretrained machinery,
and the model API timm's tooling relies on."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import aaformer_hf  # noqa: F401


@pytest.mark.parametrize('name,width', [('aaformer_base', 768), ('aaformer_small', 384), ('aaformer_tiny', 64)])
def test_pretrained_cfg(name, width):
    model = timm.create_model(name, device='meta')
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 256, 128) and cfg['fixed_input_size']
    assert cfg['first_conv'] == 'patch_embed.proj' and cfg['classifier'] == 'head'
    assert cfg['mean'] == (0.5, 0.5, 0.5) and cfg['std'] == (0.5, 0.5, 0.5)
    assert model.patch_embed.grid_size == (16, 8)
    assert model.num_features == width and model.head_hidden_size == 6 * width
    assert timm.data.resolve_data_config({}, model=model)['input_size'] == (3, 256, 128)


def test_base_is_the_papers_vit_b16():
    model = timm.create_model('aaformer_base', device='meta')
    assert len(model.blocks) == 12 and model.blocks[0].attn.num_heads == 12
    assert model.blocks[0].mlp.fc1.out_features == 4 * 768 and model.blocks[0].norm1.eps == 1e-6
    assert model.blocks[0].attn.qkv.bias is not None
    assert model.part_groups == (2, 3) and model.blocks[0].attn.sinkhorn_iters == 3
    assert model.blocks[0].attn.sinkhorn_epsilon == 0.05
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(86e6, rel=0.02)


def test_imagenet_vit_initialisation_from_a_local_safetensors_file(tmp_path):
    """create_model(pretrained=True) with a timm ViT-B/16 checkpoint: pos grid 14x14 -> 16x8, [PART]s initialised,
    ImageNet head dropped, every backbone weight carried over."""
    torch.manual_seed(0)
    vit = timm.create_model('vit_base_patch16_224', pretrained=False)
    vit_state = vit.state_dict()
    save_file(vit_state, tmp_path / 'vit.safetensors')
    model = timm.create_model(
        'aaformer_base', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'vit.safetensors')))
    state = model.state_dict()
    expected_pos = resample_abs_pos_embed(
        vit_state['pos_embed'], new_size=(16, 8), old_size=(14, 14), num_prefix_tokens=1, antialias=False)
    torch.testing.assert_close(state['pos_embed'], expected_pos)
    assert state['pos_embed'].shape == (1, 1 + 128, 768)
    # the CLS position and the CLS token are carried over unchanged
    torch.testing.assert_close(state['pos_embed'][:, 0], vit_state['pos_embed'][:, 0])
    for key in ('cls_token', 'patch_embed.proj.weight', 'blocks.5.attn.qkv.weight', 'blocks.11.mlp.fc2.bias',
                'norm.weight'):
        torch.testing.assert_close(state[key], vit_state[key])
    parts = state['part_tokens']
    assert parts.shape == (1, 5, 768) and 0.01 < parts.std() < 0.03  # trunc-normal(0.02), not zeros
    assert model.num_classes == 0 and not any(k.startswith('head') for k in state)
    assert torch.isfinite(model.eval()(torch.randn(1, 3, 256, 128))).all()


def test_part_init_from_cls(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model('vit_small_patch16_224')
    with torch.no_grad():
        vit.cls_token.fill_(3.0)
    save_file(vit.state_dict(), tmp_path / 'vit.safetensors')
    model = timm.create_model('aaformer_small', pretrained=True, part_init='cls',
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'vit.safetensors')))
    parts = model.part_tokens.detach()
    assert (parts - 3.0).abs().max() < 0.2 and parts.std() > 0.005  # CLS plus small noise, parts differ


def test_unknown_pos_grid_is_a_clear_error(tmp_path):
    model = timm.create_model('aaformer_tiny')
    state = model.state_dict()
    state['pos_embed'] = torch.zeros(1, 1 + 7 * 3, 64)
    save_file(state, tmp_path / 'odd.safetensors')
    with pytest.raises(ValueError, match='patch grid'):
        timm.create_model('aaformer_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'odd.safetensors')))


def test_api_surface():
    model = timm.create_model('aaformer_tiny', num_classes=11)
    assert model.get_classifier().weight.shape == (6, 11, 64)
    model.reset_classifier(0)
    assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
    model.reset_classifier(5)
    assert model.get_classifier().weight.shape == (6, 5, 64)
    assert model.no_weight_decay() >= {'pos_embed', 'cls_token', 'part_tokens'}
    model.eval()
    x = torch.randn(2, 3, 256, 128)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + 5 + 128, 64)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 6 * 64)
    assert model(x).shape == (2, 6, 5)
    final, inter = model.forward_intermediates(x, indices=2, output_fmt='NCHW')
    torch.testing.assert_close(final, feats)
    assert [t.shape for t in inter] == [(2, 64, 16, 8)] * 2
    model.set_grad_checkpointing()
    torch.testing.assert_close(model.forward_features(x), feats)
    bf16 = timm.create_model('aaformer_tiny', device='meta', dtype=torch.bfloat16)
    assert all(p.device.type == 'meta' and p.dtype == torch.bfloat16 for p in bf16.parameters())


def test_embedding_with_num_classes_zero():
    model = timm.create_model('aaformer_tiny', num_classes=0).eval()
    assert model(torch.randn(1, 3, 256, 128)).shape == (1, 6 * 64)


def test_default_pretrained_tag_resolves_through_the_hub_cache(tmp_path):
    """The real default path, offline: create_model(pretrained=True) fetches the ImageNet ViT named in the cfg via
    huggingface_hub, here from a pre-populated cache (a random ViT-S/16 standing in for the ImageNet weights)."""
    torch.manual_seed(0)
    vit = timm.create_model('vit_small_patch16_224')
    repo = tmp_path / 'models--timm--vit_small_patch16_224.augreg_in21k_ft_in1k'
    sha = 'a' * 40
    (repo / 'snapshots' / sha).mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(sha)
    save_file(vit.state_dict(), repo / 'snapshots' / sha / 'model.safetensors')
    model = timm.create_model('aaformer_small', pretrained=True, cache_dir=str(tmp_path))
    assert model.pretrained_cfg['hf_hub_id'] == 'timm/vit_small_patch16_224.augreg_in21k_ft_in1k'
    torch.testing.assert_close(model.state_dict()['blocks.3.attn.qkv.weight'], vit.state_dict()['blocks.3.attn.qkv.weight'])
