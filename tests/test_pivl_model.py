"""The π-VL / CLIP-ReID inference model (timm front door): initialisation from a CLIP image tower through timm's
pretrained machinery, and features against timm's own CLIP ViT carrying the same weights."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import aaformer_hf  # noqa: F401  registers the models

TINY_CLIP = dict(embed_dim=64, depth=4, num_heads=2)  # pivl_vit_tiny's tower; projection 32


def clip_tower(img_size=224, **kwargs):
    """timm's CLIP ViT (QuickGELU) with a projection head, as timm stores OpenAI's ViT-B/16, at tiny width."""
    torch.manual_seed(0)
    model = timm.create_model('vit_base_patch16_clip_quickgelu_224', img_size=img_size, num_classes=32,
                              **TINY_CLIP, **kwargs).eval()
    with torch.no_grad():
        model.head.bias.zero_()  # CLIP's projection has no bias; timm stores a zero one
        for block in model.blocks:  # move LayerNorm affines off their init so a missed weight shows
            block.norm1.weight.normal_(1, 0.1)
    return model


@pytest.fixture(scope='module')
def clip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('clip') / 'clip_vit_tiny.safetensors'
    save_file(clip_tower().state_dict(), path)
    return path


def from_clip(path, **kwargs):
    return timm.create_model('pivl_vit_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                             **kwargs).eval()


def test_initialisation_from_a_clip_image_tower(clip_file):
    clip, model = clip_tower(), from_clip(clip_file)
    state, source = model.state_dict(), clip.state_dict()
    for key in ('cls_token', 'patch_embed.proj.weight', 'norm_pre.weight', 'blocks.3.mlp.fc2.weight',
                'blocks.0.norm1.weight', 'norm.bias'):
        torch.testing.assert_close(state[key], source[key])
    torch.testing.assert_close(state['proj.weight'], source['head.weight'])  # CLIP's projection, not a classifier
    # the 14x14 grid at 224 resampled to 16x8 at 256x128, bilinearly as CLIP-ReID does
    expected = resample_abs_pos_embed(source['pos_embed'], new_size=(16, 8), old_size=(14, 14), num_prefix_tokens=1,
                                      interpolation='bilinear', antialias=False)
    torch.testing.assert_close(state['pos_embed'], expected)
    assert not any(k.startswith('head.') for k in state) and state['bnneck.weight'].shape == (64,)


def test_embedding_equals_timms_clip_vit_with_the_same_weights(clip_file):
    """The 1280-d (here 96-d) test feature is [CLS after the final norm, its CLIP projection]: computed by timm's own
    CLIP ViT built at 256x128 with the model's weights (its head = the projection)."""
    model = from_clip(clip_file)
    reference = clip_tower(img_size=(256, 128))
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith(('proj.', 'bnneck'))}
    weights['head.weight'], weights['head.bias'] = model.proj.weight, torch.zeros(32)
    reference.load_state_dict(weights)
    x = torch.randn(3, 3, 256, 128)
    with torch.no_grad():
        tokens = reference.forward_features(x)
        expected = torch.cat([reference.forward_head(tokens, pre_logits=True), reference.forward_head(tokens)], 1)
        torch.testing.assert_close(model(x), expected)
        assert model(x).shape == (3, 64 + 32)
    # after the BNNecks (eval: running statistics 0/1, weight 1) instead, when asked
    after = timm.create_model('pivl_vit_tiny', embedding='after_bnneck').eval()
    after.load_state_dict(model.state_dict())
    with torch.no_grad():
        after.bnneck.running_mean.fill_(0.5)
        torch.testing.assert_close(after(x)[:, :64], (expected[:, :64] - 0.5) / torch.sqrt(torch.tensor(1 + 1e-5)))


def test_reid_head_logits_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('pivl_vit_tiny', num_classes=7).eval()
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        head = model.forward_reid_head(model.forward_features(x))
        logits = model(x)
    assert logits.shape == (2, 2, 7)  # the CLS and projection classifiers
    torch.testing.assert_close(logits[:, 0], head.bn_features[0] @ model.head.cls.weight.t())
    torch.testing.assert_close(logits[:, 1], head.bn_features[1] @ model.head.proj.weight.t())
    save_file(model.state_dict(), tmp_path / 'pivl.safetensors')
    # a trained π-VL checkpoint loads as it is; as a feature extractor its classifiers are left out
    extractor = from_clip(tmp_path / 'pivl.safetensors')
    with torch.no_grad():
        torch.testing.assert_close(extractor(x), model.forward_head(model.forward_features(x), pre_logits=True))


def test_checkpoints_that_do_not_fit_are_named(tmp_path):
    shallow = timm.create_model('vit_base_patch16_clip_quickgelu_224', num_classes=32, embed_dim=64, depth=2,
                                num_heads=2)
    save_file(shallow.state_dict(), tmp_path / 'shallow.safetensors')
    with pytest.raises(ValueError, match=r'encoder .*: 24 missing: blocks\.2\.'):
        from_clip(tmp_path / 'shallow.safetensors')
    with pytest.raises(FileNotFoundError, match='nowhere.safetensors: pretrained weights file not found'):
        from_clip(tmp_path / 'nowhere.safetensors')
    for kwargs, message in [(dict(embedding='middle'), 'embedding must be'), (dict(num_classes=-1), 'num_classes'),
                            (dict(global_pool='avg'), 'global_pool')]:
        with pytest.raises(ValueError, match=message):
            timm.create_model('pivl_vit_tiny', **kwargs)
