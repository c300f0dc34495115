"""The π-VL / CLIP-ReID inference model (timm front door): initialisation from a CLIP image tower through timm's
pretrained machinery, and features against timm's own CLIP ViT carrying the same weights."""
import pytest
import timm
import torch
from safetensors.torch import save_file

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


def clipreid_resized_pos_embed(pos_embed: torch.Tensor, grid) -> torch.Tensor:
    """CLIP-ReID's ``resize_pos_embed`` as its code does it (written here from those facts, not timm's resampler):
    the CLS row kept, the 14x14 patch rows reshaped to a (1, D, 14, 14) map, ``F.interpolate(..., mode='bilinear')``
    (align_corners False, no antialias) to the new grid, flattened back row by row."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    side = int(patches.shape[1] ** 0.5)
    image = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(image, size=tuple(grid), mode='bilinear')
    return torch.cat([cls, resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)


def test_initialisation_from_a_clip_image_tower(clip_file):
    clip, model = clip_tower(), from_clip(clip_file)
    state, source = model.state_dict(), clip.state_dict()
    for key in ('cls_token', 'patch_embed.proj.weight', 'norm_pre.weight', 'blocks.3.mlp.fc2.weight',
                'blocks.0.norm1.weight', 'norm.bias'):
        torch.testing.assert_close(state[key], source[key])
    torch.testing.assert_close(state['proj.weight'], source['head.weight'])  # CLIP's projection, not a classifier
    # the 14x14 grid at 224 resampled to 16x8 at 256x128, bilinearly as CLIP-ReID does
    torch.testing.assert_close(state['pos_embed'], clipreid_resized_pos_embed(source['pos_embed'], (16, 8)))
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


# ---- the transformers front door: the same module, one weight layout ----

HF_TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=256, projection_dim=32)


def test_transformers_and_timm_share_one_weight_layout(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel
    from aaformer_hf import AutoModelForPersonReID, PiVLConfig, PiVLForReID, PiVLModel
    torch.manual_seed(0)
    x = torch.randn(2, 3, 256, 128)
    model = PiVLForReID(PiVLConfig(**HF_TINY, num_labels=7)).eval()
    with torch.no_grad():
        model.timm_model.bnneck.running_mean.normal_()  # non-default buffers travel too
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / 'model.safetensors').keys()
    assert 'proj.weight' in keys and 'head.cls.weight' in keys and not any(k.startswith('timm_model') for k in keys)
    loaded = AutoModelForPersonReID.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, PiVLForReID)
    out = model(x)
    assert out.logits.shape == (2, 2, 7) and out.embeddings.shape == (2, 96)
    torch.testing.assert_close(loaded(x).logits, out.logits, atol=0, rtol=0)
    encoder = AutoModel.from_pretrained(tmp_path).eval()  # the encoder ignores the classifiers
    assert isinstance(encoder, PiVLModel)
    torch.testing.assert_close(encoder(x).pooler_output, out.embeddings, atol=0, rtol=0)
    timm_model = timm.create_model('pivl_vit_tiny', depth=2, num_classes=7, pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors'),
                                                               num_classes=7)).eval()
    torch.testing.assert_close(timm_model(x), out.logits, atol=0, rtol=0)
    # a model made through timm is described by a config, wrapped, saved and reloaded unchanged
    from aaformer_hf import PiVLConfig as Config
    config = Config.from_timm_model(timm_model, num_labels=7)
    assert config.to_diff_dict() == PiVLConfig(**HF_TINY, num_labels=7).to_diff_dict()


def test_processor_and_feature_extraction_pipeline(tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, pipeline
    from aaformer_hf import PiVLConfig, PiVLImageProcessor
    processor = PiVLImageProcessor()
    timm_cfg = timm.create_model('pivl_vit_tiny', pretrained=False).pretrained_cfg
    assert list(processor.image_mean) == list(timm_cfg['mean']) and list(processor.image_std) == list(timm_cfg['std'])
    model = AutoModel.from_config(PiVLConfig(**HF_TINY)).eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), PiVLImageProcessor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 120, 3), dtype=np.uint8))
    embedding = torch.tensor(pipeline('image-feature-extraction', model=str(tmp_path), pool=True)(image))
    with torch.no_grad():
        expected = model(processor(image, return_tensors='pt')['pixel_values']).pooler_output
    torch.testing.assert_close(embedding.reshape(expected.shape), expected, atol=1e-5, rtol=1e-5)


def test_overlapping_patches_and_camera_embedding_options(clip_file):
    """CLIP-ReID's OLP (stride 12 -> 21x10 patches at 256x128) and SIE (camera vector on the CLS token only)."""
    from aaformer_hf import PiVLConfig, PiVLModel
    model = from_clip(clip_file, patch_stride=12, num_cameras=4, camera_embed_scale=3.0)
    assert tuple(model.patch_embed.grid_size) == (21, 10) and model.patch_embed.proj.stride == (12, 12)
    expected = clipreid_resized_pos_embed(clip_tower().state_dict()['pos_embed'], (21, 10))
    torch.testing.assert_close(model.pos_embed, expected)
    x, cams = torch.randn(2, 3, 256, 128), torch.tensor([3, 1])
    with torch.no_grad():
        patches = torch.nn.functional.conv2d(x, model.patch_embed.proj.weight, stride=12)  # 12-pixel steps
        torch.testing.assert_close(model.patch_embed(x), patches.flatten(2).transpose(1, 2))
        tokens = model._pos_embed(model.patch_embed(x), cams)
        plain = timm.models.vision_transformer.VisionTransformer._pos_embed(model, model.patch_embed(x))
        torch.testing.assert_close(tokens[:, 0], plain[:, 0] + 3.0 * model.camera_embed[cams])
        torch.testing.assert_close(tokens[:, 1:], plain[:, 1:])  # patches untouched
        assert model(x, camera_ids=cams).shape == (2, 96)
    # the config describes it; the transformers model gives the same features and needs the cameras too
    config = PiVLConfig.from_timm_model(model)
    assert (config.patch_stride, config.num_cameras, config.camera_embed_scale) == (12, 4, 3.0)
    hf = PiVLModel(config).eval()
    hf.timm_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(hf(x, camera_ids=cams).pooler_output, model(x, camera_ids=cams))
    with pytest.raises(ValueError, match='pass camera_ids'):
        hf(x)
    with pytest.raises(ValueError, match='without a camera embedding'):
        from_clip(clip_file)(x, camera_ids=cams)
    with pytest.raises(ValueError, match='patch_stride must lie in'):
        PiVLConfig(patch_stride=20)


def test_cnn_default_pretrained_tag_resolves_through_the_hub_cache(tmp_path):
    """π-VL's CNN from OpenAI's CLIP ResNet-50 the way timm ships it (``timm/resnet50_clip.openai``: its attention
    pool as ``head``, a 7x7 grid), offline from a pre-populated cache (a random resnet50_clip standing in): the pool
    becomes ``attn_pool`` with its grid resized to 16x8 as CLIP-ReID resizes it (bilinear, mean-token row kept)."""
    import torch.nn.functional as F
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clip = timm.create_model('resnet50_clip')
    repo = tmp_path / 'models--timm--resnet50_clip.openai'
    sha = 'b' * 40
    (repo / 'snapshots' / sha).mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(sha)
    weights = clip.state_dict()
    save_file(weights, repo / 'snapshots' / sha / 'model.safetensors')
    model = timm.create_model('pivl_resnet50', pretrained=True, cache_dir=str(tmp_path))
    assert model.pretrained_cfg['hf_hub_id'] == 'timm/resnet50_clip.openai'
    own = model.state_dict()
    torch.testing.assert_close(own['stages.2.4.conv2_kxk.conv.weight'], weights['stages.2.4.conv2_kxk.conv.weight'])
    torch.testing.assert_close(own['attn_pool.q.weight'], weights['head.q.weight'])
    pos = weights['head.pos_embed']  # (1 + 49, 2048)
    grid = F.interpolate(pos[1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2), size=(16, 8), mode='bilinear')
    torch.testing.assert_close(own['attn_pool.pos_embed'],
                               torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(128, -1)]))
    # the last stage runs at stride 1 (CLIP's own at 2): the same weights, a 16x8 map at 256x128
    assert model.forward_features(torch.randn(1, 3, 256, 128)).shape == (1, 2048, 16, 8)
