"""CLIP-ReID checkpoint conversion, checked against a forward pass written here from CLIP-ReID's model code
(``model/clip/model.py`` VisionTransformer + ``model/make_model_clipreid.py`` build_transformer) in plain tensor
operations on the checkpoint's own tensors - no timm, no converted weights."""
import argparse
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, AutoModel

from aaformer_hf import PiVLForReID, PiVLModel
from aaformer_hf.hf.convert_clipreid import convert_clipreid_checkpoint, convert_clipreid_state_dict, main

WIDTH, LAYERS, PROJ, CLASSES = 128, 2, 32, 5  # CLIP's head width is 64: 2 heads


def clipreid_state_dict(grid=(16, 8), cameras=0, seed=0, text=True):
    """A state dict with CLIP-ReID's key names and shapes (ViT-B/16 layout at tiny width), random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.05, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    e = 'image_encoder.'
    sd = {e + 'conv1.weight': r(WIDTH, 3, 16, 16, std=0.02), e + 'class_embedding': r(WIDTH, std=0.5),
          e + 'positional_embedding': r(grid[0] * grid[1] + 1, WIDTH, std=0.5),
          e + 'ln_pre.weight': r(WIDTH, mean=1.0), e + 'ln_pre.bias': r(WIDTH),
          e + 'ln_post.weight': r(WIDTH, mean=1.0), e + 'ln_post.bias': r(WIDTH), e + 'proj': r(WIDTH, PROJ, std=0.1)}
    for i in range(LAYERS):
        b = f'{e}transformer.resblocks.{i}.'
        sd.update({b + 'attn.in_proj_weight': r(3 * WIDTH, WIDTH, std=0.1), b + 'attn.in_proj_bias': r(3 * WIDTH),
                   b + 'attn.out_proj.weight': r(WIDTH, WIDTH, std=0.1), b + 'attn.out_proj.bias': r(WIDTH),
                   b + 'ln_1.weight': r(WIDTH, mean=1.0), b + 'ln_1.bias': r(WIDTH),
                   b + 'mlp.c_fc.weight': r(4 * WIDTH, WIDTH, std=0.1), b + 'mlp.c_fc.bias': r(4 * WIDTH),
                   b + 'mlp.c_proj.weight': r(WIDTH, 4 * WIDTH, std=0.05), b + 'mlp.c_proj.bias': r(WIDTH),
                   b + 'ln_2.weight': r(WIDTH, mean=1.0), b + 'ln_2.bias': r(WIDTH)})
    for name, width in (('bottleneck', WIDTH), ('bottleneck_proj', PROJ)):
        sd.update({f'{name}.weight': r(width, mean=1.0), f'{name}.bias': torch.zeros(width),
                   f'{name}.running_mean': r(width), f'{name}.running_var': r(width).abs() + 0.5,
                   f'{name}.num_batches_tracked': torch.tensor(1000)})
    sd['classifier.weight'], sd['classifier_proj.weight'] = r(CLASSES, WIDTH), r(CLASSES, PROJ)
    if cameras:
        sd['cv_embed'] = r(cameras, WIDTH, std=0.5)
    if text:  # training-only parts the converter leaves out
        sd.update({'prompt_learner.cls_ctx': r(CLASSES, 4, 512), 'prompt_learner.token_prefix': r(1, 5, 512),
                   'text_encoder.positional_embedding': r(77, 512), 'text_encoder.ln_final.weight': r(512)})
    return sd


def clipreid_features(sd, x, stride=16, cam=None, sie_coe=1.0):
    """CLIP-ReID's eval forward: (CLS after ln_post, its projection), the same after the BatchNorm necks, logits."""
    e = 'image_encoder.'

    def ln(t, name):
        return F.layer_norm(t, (WIDTH,), sd[name + '.weight'], sd[name + '.bias'], eps=1e-5)

    t = F.conv2d(x, sd[e + 'conv1.weight'], stride=stride).flatten(2).transpose(1, 2)
    t = torch.cat([sd[e + 'class_embedding'].expand(len(x), 1, WIDTH), t], dim=1)
    if cam is not None:
        t[:, 0] = t[:, 0] + sie_coe * sd['cv_embed'][cam]
    t = ln(t + sd[e + 'positional_embedding'], e + 'ln_pre')
    heads, n = WIDTH // 64, t.shape[1]
    for i in range(LAYERS):
        b = f'{e}transformer.resblocks.{i}.'
        q, k, v = (ln(t, b + 'ln_1') @ sd[b + 'attn.in_proj_weight'].t() + sd[b + 'attn.in_proj_bias']).chunk(3, -1)
        q, k, v = (z.reshape(len(x), n, heads, 64).transpose(1, 2) for z in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(64), dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(len(x), n, WIDTH)
        t = t + o @ sd[b + 'attn.out_proj.weight'].t() + sd[b + 'attn.out_proj.bias']
        h = ln(t, b + 'ln_2') @ sd[b + 'mlp.c_fc.weight'].t() + sd[b + 'mlp.c_fc.bias']
        t = t + (h * torch.sigmoid(1.702 * h)) @ sd[b + 'mlp.c_proj.weight'].t() + sd[b + 'mlp.c_proj.bias']
    cls = ln(t, e + 'ln_post')[:, 0]
    proj = cls @ sd[e + 'proj']

    def bn(f, name):
        return (f - sd[name + '.running_mean']) / torch.sqrt(sd[name + '.running_var'] + 1e-5) * sd[name + '.weight']

    bn_cls, bn_proj = bn(cls, 'bottleneck'), bn(proj, 'bottleneck_proj')
    logits = None
    if 'classifier.weight' in sd:
        logits = torch.stack([bn_cls @ sd['classifier.weight'].t(), bn_proj @ sd['classifier_proj.weight'].t()], 1)
    return torch.cat([cls, proj], 1), torch.cat([bn_cls, bn_proj], 1), logits


def test_converted_checkpoint_gives_clipreids_features_through_both_front_doors(tmp_path):
    sd = clipreid_state_dict()
    torch.save({'module.' + k: v for k, v in sd.items()}, tmp_path / 'ViT-B-16_60.pth')  # a DataParallel save
    model = convert_clipreid_checkpoint(tmp_path / 'ViT-B-16_60.pth', tmp_path / 'out')
    assert isinstance(model, PiVLForReID) and model.config.num_labels == CLASSES
    x = torch.randn(2, 3, 256, 128)
    before, after, logits = clipreid_features(sd, x)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out.embeddings, before, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.logits, logits, rtol=1e-4, atol=1e-4)
        loaded = AutoModel.from_pretrained(tmp_path / 'out').eval()
        assert isinstance(loaded, PiVLModel)
        torch.testing.assert_close(loaded(x).pooler_output, before, rtol=1e-4, atol=1e-4)
        timm_model = timm.create_model('pivl_vit_base_patch16', **loaded.config.timm_kwargs(), pretrained=True,
                                       pretrained_cfg_overlay=dict(file=str(tmp_path / 'out/model.safetensors')))
        torch.testing.assert_close(timm_model.eval()(x), before, rtol=1e-4, atol=1e-4)
    processor = AutoImageProcessor.from_pretrained(tmp_path / 'out')
    assert list(processor.image_mean) == [0.5, 0.5, 0.5] and processor.size == {'height': 256, 'width': 128}
    # the test feature after the necks, when asked (CLIP-ReID's TEST.NECK_FEAT 'after')
    weights, config = convert_clipreid_state_dict(sd, embedding='after_bnneck')
    neck = PiVLModel(config).eval()
    neck.timm_model.load_state_dict({k: v for k, v in weights.items() if not k.startswith('head.')})
    with torch.no_grad():
        torch.testing.assert_close(neck(x).pooler_output, after, rtol=1e-4, atol=1e-4)


def test_overlapping_patches_and_camera_embedding(tmp_path):
    """SIE + OLP (stride 12: a 21x10 grid at 256x128), CLIP-ReID's best ViT-B/16 setting."""
    sd = clipreid_state_dict(grid=(21, 10), cameras=3, seed=1)
    weights, config = convert_clipreid_state_dict(sd, camera_embed_scale=2.0)
    assert config.patch_stride == 12 and config.num_cameras == 3
    model = PiVLForReID(config).eval()
    model.timm_model.load_state_dict(weights, strict=True)
    x, cam = torch.randn(3, 3, 256, 128), torch.tensor([2, 0, 1])
    before, _, logits = clipreid_features(sd, x, stride=12, cam=cam, sie_coe=2.0)
    with torch.no_grad():
        out = model(x, camera_ids=cam)
        torch.testing.assert_close(out.embeddings, before, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.logits, logits, rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match='pass camera_ids'):
            model(x)
        with pytest.raises(ValueError, match=r'camera_ids must lie in \[0, 3\)'):
            model(x, camera_ids=torch.tensor([0, 1, 3]))


def test_bad_checkpoints_are_named(tmp_path):
    sd = clipreid_state_dict(text=False)
    with pytest.raises(ValueError, match=r'does not know: extra\.weight'):
        convert_clipreid_state_dict({**sd, 'extra.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match='RN50 variant'):
        convert_clipreid_state_dict({'image_encoder.layer1.0.conv1.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match='129 patch positions'):  # a 16x8 grid + 1 extra row is no grid at 256x128
        convert_clipreid_state_dict({**sd, 'image_encoder.positional_embedding': torch.zeros(130, WIDTH)})

    # training scripts often save their arguments too: unpickling them (arbitrary code) is refused
    torch.save({'state_dict': sd, 'args': argparse.Namespace(lr=5e-6)}, tmp_path / 'pickled.pth')
    with pytest.raises(ValueError, match='pickled.pth: not a plain state dict'):
        convert_clipreid_checkpoint(tmp_path / 'pickled.pth', tmp_path / 'out')
    torch.save(sd, tmp_path / 'ok.pth')
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'keep.txt').write_text('x')
    with pytest.raises(FileExistsError, match='full: not empty'):
        convert_clipreid_checkpoint(tmp_path / 'ok.pth', tmp_path / 'full')
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / 'missing.pth'), str(tmp_path / 'out')])
    assert exit_info.value.code == 2


def test_command_line(tmp_path, capsys):
    sd = clipreid_state_dict(text=False)
    del sd['classifier.weight'], sd['classifier_proj.weight']  # a feature-extractor checkpoint
    torch.save(sd, tmp_path / 'ckpt.pth')
    main([str(tmp_path / 'ckpt.pth'), str(tmp_path / 'out')])
    assert 'PiVLModel, 2 layers, grid (16, 8), 0 camera(s), 0 identities; embedding 160-d' in capsys.readouterr().out
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        torch.testing.assert_close(AutoModel.from_pretrained(tmp_path / 'out').eval()(x).pooler_output, clipreid_features(sd, x)[0],
                                   rtol=1e-4, atol=1e-4)
