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


def head_state_dict(r, width, proj, classes):
    """CLIP-ReID's re-ID head tensors (``build_transformer``): the two BatchNorm necks (shift frozen at 0) and, with
    ``classes``, the two bias-free classifiers."""
    sd = {}
    for name, n in (('bottleneck', width), ('bottleneck_proj', proj)):
        sd.update({f'{name}.weight': r(n, mean=1.0), f'{name}.bias': torch.zeros(n), f'{name}.running_mean': r(n),
                   f'{name}.running_var': r(n).abs() + 0.5, f'{name}.num_batches_tracked': torch.tensor(1000)})
    if classes:
        sd['classifier.weight'], sd['classifier_proj.weight'] = r(classes, width), r(classes, proj)
    return sd


def clipreid_head(sd, pooled, proj):
    """CLIP-ReID's eval head: the test feature before and after the necks, and the two classifiers' logits."""
    def neck(f, name):
        return (f - sd[name + '.running_mean']) / torch.sqrt(sd[name + '.running_var'] + 1e-5) * sd[name + '.weight']

    bn_pooled, bn_proj = neck(pooled, 'bottleneck'), neck(proj, 'bottleneck_proj')
    logits = None
    if 'classifier.weight' in sd:
        logits = torch.stack([bn_pooled @ sd['classifier.weight'].t(), bn_proj @ sd['classifier_proj.weight'].t()], 1)
    return torch.cat([pooled, proj], 1), torch.cat([bn_pooled, bn_proj], 1), logits


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
    sd.update(head_state_dict(r, WIDTH, PROJ, CLASSES))
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
    return clipreid_head(sd, cls, cls @ sd[e + 'proj'])


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
    with pytest.raises(ValueError, match='not a CLIP-ReID checkpoint: neither a ViT'):
        convert_clipreid_state_dict({'image_encoder.conv1.weight': torch.zeros(1)})
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


# ---- the RN50 variant: CLIP's "modified ResNet" as CLIP-ReID builds it (last stage at stride 1) ----

# CLIP's proportions at width 8: stem (w/2, w/2, w), stages 4w ... 32w with w ... 8w bottleneck channels
RN_STEM, RN_WIDTHS, RN_DEPTHS, RN_PROJ = (4, 4, 8), (32, 64, 128, 256), (1, 2, 1, 1), 32


def clipreid_rn50_state_dict(grid=(16, 8), seed=0, classes=CLASSES):
    """A state dict with CLIP-ReID's RN50 key names (OpenAI's ModifiedResNet under ``image_encoder``), tiny widths,
    random values; the attention pool's position embedding already on the re-ID grid, as CLIP-ReID saves it."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.05, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    def bn(name, n):
        return {f'{name}.weight': r(n, std=0.1, mean=1.0), f'{name}.bias': r(n, std=0.1),
                f'{name}.running_mean': r(n, std=0.1), f'{name}.running_var': r(n, std=0.1).abs() + 0.5,
                f'{name}.num_batches_tracked': torch.tensor(100)}

    e = 'image_encoder.'
    sd, inputs = {}, 3
    for i, width in enumerate(RN_STEM, 1):
        sd[f'{e}conv{i}.weight'] = r(width, inputs, 3, 3, std=(2 / (9 * inputs)) ** 0.5)
        sd.update(bn(f'{e}bn{i}', width))
        inputs = width
    for stage, (width, depth) in enumerate(zip(RN_WIDTHS, RN_DEPTHS), 1):
        planes = width // 4
        for block in range(depth):
            b = f'{e}layer{stage}.{block}.'
            sd[b + 'conv1.weight'] = r(planes, inputs, 1, 1, std=(2 / inputs) ** 0.5)
            sd[b + 'conv2.weight'] = r(planes, planes, 3, 3, std=(2 / (9 * planes)) ** 0.5)
            sd[b + 'conv3.weight'] = r(width, planes, 1, 1, std=(1 / planes) ** 0.5)
            for name, n in (('bn1', planes), ('bn2', planes), ('bn3', width)):
                sd.update(bn(b + name, n))
            if block == 0:  # CLIP: a downsample branch where the stride or the width changes (here: every stage)
                sd[b + 'downsample.0.weight'] = r(width, inputs, 1, 1, std=(1 / inputs) ** 0.5)
                sd.update(bn(b + 'downsample.1', width))
            inputs = width
    a = e + 'attnpool.'
    sd[a + 'positional_embedding'] = r(grid[0] * grid[1] + 1, inputs, std=inputs ** -0.5)
    for name, out in (('q_proj', inputs), ('k_proj', inputs), ('v_proj', inputs), ('c_proj', RN_PROJ)):
        sd[f'{a}{name}.weight'], sd[f'{a}{name}.bias'] = r(out, inputs, std=inputs ** -0.5), r(out, std=0.02)
    sd.update(head_state_dict(r, inputs, RN_PROJ, classes))
    return sd


def clipreid_rn50_features(sd, x, last_stride=1, prefix='image_encoder.'):
    """CLIP-ReID's RN50 eval forward: (the last map average-pooled, the attention pool's mean-token output), the same
    after the BatchNorm necks, and the logits. Written from its ModifiedResNet / AttentionPool2d / build_transformer:
    anti-aliased strides (average pooling before the 1x1 / after the 3x3), a mean token prepended to the flattened
    map, multi-head attention (64-channel heads) whose first output row is the projection."""
    def bn(t, name):
        return F.batch_norm(t, sd[name + '.running_mean'], sd[name + '.running_var'], sd[name + '.weight'],
                            sd[name + '.bias'], training=False, eps=1e-5)

    e = prefix
    t = x
    for i in (1, 2, 3):
        t = F.relu(bn(F.conv2d(t, sd[f'{e}conv{i}.weight'], stride=2 if i == 1 else 1, padding=1), f'{e}bn{i}'))
    t = F.avg_pool2d(t, 2)
    for stage, depth in enumerate(RN_DEPTHS, 1):
        for block in range(depth):
            b = f'{e}layer{stage}.{block}.'
            stride = 1 if block or stage == 1 else (last_stride if stage == 4 else 2)
            out = F.relu(bn(F.conv2d(t, sd[b + 'conv1.weight']), b + 'bn1'))
            out = F.relu(bn(F.conv2d(out, sd[b + 'conv2.weight'], padding=1), b + 'bn2'))
            if stride > 1:
                out = F.avg_pool2d(out, stride)
            out = bn(F.conv2d(out, sd[b + 'conv3.weight']), b + 'bn3')
            identity = t
            if b + 'downsample.0.weight' in sd:
                identity = F.avg_pool2d(t, stride) if stride > 1 else t
                identity = bn(F.conv2d(identity, sd[b + 'downsample.0.weight']), b + 'downsample.1')
            t = F.relu(out + identity)
    pooled = t.mean((2, 3))
    a = e + 'attnpool.'
    tokens = t.flatten(2).permute(0, 2, 1)  # (B, HW, C)
    tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + sd[a + 'positional_embedding']
    B, n, C = tokens.shape

    def heads(name):
        return (tokens @ sd[f'{a}{name}.weight'].t() + sd[f'{a}{name}.bias']).reshape(B, n, C // 64, 64).transpose(1, 2)

    q, k, v = heads('q_proj'), heads('k_proj'), heads('v_proj')
    o = (torch.softmax(q @ k.transpose(-1, -2) / 8.0, -1) @ v).transpose(1, 2).reshape(B, n, C)
    return clipreid_head(sd, pooled, (o @ sd[a + 'c_proj.weight'].t() + sd[a + 'c_proj.bias'])[:, 0])


def test_converted_rn50_checkpoint_gives_clipreids_features_through_both_front_doors(tmp_path):
    from aaformer_hf import PiVLResNetForReID, PiVLResNetModel

    sd = clipreid_rn50_state_dict()
    torch.save({'module.' + k: v for k, v in sd.items()}, tmp_path / 'RN50_120.pth')
    model = convert_clipreid_checkpoint(tmp_path / 'RN50_120.pth', tmp_path / 'out')
    assert isinstance(model, PiVLResNetForReID) and model.config.num_labels == CLASSES
    assert model.config.depths == RN_DEPTHS and model.config.last_stride == 1
    x = torch.randn(2, 3, 256, 128)
    before, after, logits = clipreid_rn50_features(sd, x)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out.embeddings, before, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
        loaded = AutoModel.from_pretrained(tmp_path / 'out').eval()
        assert isinstance(loaded, PiVLResNetModel)
        torch.testing.assert_close(loaded(x).pooler_output, before, rtol=1e-5, atol=1e-5)
        timm_model = timm.create_model('pivl_resnet50', **loaded.config.timm_kwargs(), pretrained=True,
                                       pretrained_cfg_overlay=dict(file=str(tmp_path / 'out/model.safetensors')))
        torch.testing.assert_close(timm_model.eval()(x), before, rtol=1e-5, atol=1e-5)
    # CLIP-ReID's CNN config normalises with ImageNet's statistics
    processor = AutoImageProcessor.from_pretrained(tmp_path / 'out')
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and processor.resample == 2  # PIL bilinear
    weights, config = convert_clipreid_state_dict(sd, embedding='after_bnneck')
    neck = PiVLResNetModel(config).eval()
    neck.timm_model.load_state_dict({k: v for k, v in weights.items() if not k.startswith('head.')})
    with torch.no_grad():
        torch.testing.assert_close(neck(x).pooler_output, after, rtol=1e-5, atol=1e-5)


def test_rn50_checkpoints_that_do_not_fit_are_named():
    sd = clipreid_rn50_state_dict(classes=0)
    with pytest.raises(ValueError, match='130 positions, which neither last stride gives'):
        convert_clipreid_state_dict({**sd, 'image_encoder.attnpool.positional_embedding': torch.zeros(131, 256)})
    with pytest.raises(ValueError, match='never uses it'):
        convert_clipreid_state_dict({**sd, 'cv_embed': torch.zeros(3, 256)})
    with pytest.raises(ValueError, match=r'not a complete CLIP-ReID RN50 checkpoint: no image_encoder\.layer4\.\*'):
        convert_clipreid_state_dict({k: v for k, v in sd.items() if not k.startswith('image_encoder.layer4.')})


def test_openai_clip_resnet_weights_load_as_clipreid_resizes_them(tmp_path):
    """The pretrained path (OpenAI's CLIP ResNet layout, ``visual.*``, its attention pool on a 7x7 grid at 224):
    timm's ``pivl_resnet50`` loads it with the pool's position grid resized to 16x8 bilinearly - CLIP-ReID's
    ``resize_pos_embed`` (F.interpolate, mean-token row kept) - and gives CLIP-ReID's features."""
    from safetensors.torch import save_file

    sd = clipreid_rn50_state_dict(grid=(7, 7), classes=0)
    clip = {'visual.' + k.removeprefix('image_encoder.'): v for k, v in sd.items() if k.startswith('image_encoder.')}
    save_file(clip, tmp_path / 'clip_rn.safetensors')
    model = timm.create_model('pivl_resnet50', stem_widths=RN_STEM, widths=RN_WIDTHS, depths=RN_DEPTHS,
                              proj_dim=RN_PROJ, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'clip_rn.safetensors'))).eval()
    pos = sd['image_encoder.attnpool.positional_embedding']
    grid = F.interpolate(pos[1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2), size=(16, 8), mode='bilinear')
    resized = {**sd, 'image_encoder.attnpool.positional_embedding':
               torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(16 * 8, -1)])}
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        # the BNNecks are fresh (identity at init), so compare the features before them
        features = model.forward_reid_head(model.forward_features(x)).features
        expected, _, _ = clipreid_rn50_features(resized, x)
    torch.testing.assert_close(torch.cat(features, 1), expected, rtol=1e-5, atol=1e-5)
    # timm's own layout of the same weights (``resnet50_clip.openai``: the pool is `head`) loads the same
    timm_layout = {('head.' + k.removeprefix('attn_pool.') if k.startswith('attn_pool.') else k): v
                   for k, v in model.state_dict().items() if not k.startswith(('bnneck', 'head.'))}
    timm_layout['head.pos_embed'] = sd['image_encoder.attnpool.positional_embedding']  # the 7x7 grid again
    save_file(timm_layout, tmp_path / 'timm_rn.safetensors')
    again = timm.create_model('pivl_resnet50', stem_widths=RN_STEM, widths=RN_WIDTHS, depths=RN_DEPTHS,
                              proj_dim=RN_PROJ, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'timm_rn.safetensors'))).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
