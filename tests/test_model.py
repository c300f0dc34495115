"""AAformer model behaviour: Eq. 2 at layer level, the ViT-baseline against timm's VisionTransformer, gradients,
reduced precision, empty parts, torch.compile."""
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import aaformer_hf  # noqa: F401
from aaformer_hf.layers import MultiHeadAutoAlignment

X = dict(img_size=(64, 32), patch_size=8, embed_dim=32, depth=2, num_heads=4)  # 8x4 = 32 patches


def tiny(**kwargs):
    torch.manual_seed(0)
    return timm.create_model('aaformer_tiny', **{**X, **kwargs})


def test_part_output_depends_only_on_its_patches():
    """Eq. 2: perturbing the values of patches outside Φ_p leaves [PART] p's output unchanged (the assignment only
    reads queries and keys, so it is unaffected), while CLS and the parts owning those patches change."""
    torch.manual_seed(0)
    p, n, dim, heads = 5, 32, 32, 1
    attn = MultiHeadAutoAlignment(dim, num_heads=heads, qkv_bias=True, part_groups=(2, 3), grid_size=(8, 4)).eval()
    x = torch.randn(2, 1 + p + n, dim)
    out, _, assigned = attn(x)
    part = 3
    outside = ~assigned[0, 0, part]  # patches of sample 0 not assigned to [PART] 3
    assert outside.any() and (~outside).any()

    def perturb_values(module, inputs, qkv):
        qkv = qkv.clone()
        v = qkv[..., 2 * dim:]
        v[0, 1 + p:][outside] += 10 * torch.randn_like(v[0, 1 + p:][outside])
        return qkv

    handle = attn.qkv.register_forward_hook(perturb_values)
    out2, _, assigned2 = attn(x)
    handle.remove()
    assert torch.equal(assigned, assigned2)
    torch.testing.assert_close(out2[0, 1 + part], out[0, 1 + part])  # [PART] 3: untouched
    torch.testing.assert_close(out2[1], out[1])  # the other sample: untouched
    assert not torch.allclose(out2[0, 0], out[0, 0])  # CLS sees all patches
    assert not torch.allclose(out2[0, 1], out[0, 1])  # group 1 covers every patch, so some part there changed


@pytest.mark.parametrize('patches_see_parts', [True, False])
@pytest.mark.parametrize('part_self_key', ['if_empty', 'always'])
def test_split_fused_path_equals_one_dense_mask(patches_see_parts, part_self_key):
    """The fast path (unmasked fused attention + a small masked one for [PART] rows) equals a single explicit softmax
    over one dense (L, L) mask."""
    model = tiny(patches_see_parts=patches_see_parts, part_self_key=part_self_key).eval()
    x = torch.randn(2, 3, 64, 32)
    fast = model.forward_features(x)
    dense = model.forward_tokens(x, output_attentions=True).last_hidden_state
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-5)


def test_attention_rows_respect_the_assignment():
    model = tiny(patches_see_parts=False).eval()
    out = model.forward_tokens(torch.randn(2, 3, 64, 32), output_attentions=True, output_assignments=True)
    p = model.num_parts
    for probs, assigned in zip(out.attentions, out.assignments):
        assert assigned.shape == (2, 4, p, 32)
        part_rows = probs[:, :, 1:1 + p]
        assert torch.equal(part_rows[..., 1 + p:] > 0, assigned)  # only assigned patches get weight
        assert (part_rows[..., :1 + p] == 0).all()  # parts are never empty here, so no CLS/part keys
        assert (probs[:, :, [0] + list(range(1 + p, probs.shape[-1])), 1:1 + p] == 0).all()  # flag honoured
        for group in (assigned[:, :, :2], assigned[:, :, 2:]):
            assert (group.sum(2) == 1).all()


def test_vit_baseline_reproduces_timm_vision_transformer():
    ours = tiny(part_groups=()).eval()
    vit = VisionTransformer(
        img_size=(64, 32), patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=0, global_pool='token',
        qkv_bias=True).eval()
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith(('bnneck', 'head'))}
    vit.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 32)
    torch.testing.assert_close(ours.forward_features(x), vit.forward_features(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('patches_see_parts', [True, False])
def test_global_parts_are_extra_cls_tokens_as_timm_register_tokens(patches_see_parts):
    """'global' (Table IV's 6*CLS): the [PART]s are ordinary tokens. With CLS's position embedding zeroed, the model
    equals timm's ViT with 5 register tokens after CLS and position embeddings on patches only (the [PART]s have
    none); with patches_see_parts=False, every query is kept from the [PART] keys, which timm has no option for, so
    there the check is the dense-mask path."""
    ours = tiny(assignment='global', part_groups=(5,), patches_see_parts=patches_see_parts).eval()
    with torch.no_grad():
        ours.pos_embed[:, 0] = 0
    x = torch.randn(2, 3, 64, 32)
    fast = ours.forward_features(x)
    tokens = ours.forward_tokens(x, output_attentions=True, output_assignments=True)
    torch.testing.assert_close(fast, tokens.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert tokens.assignments == [None, None]
    if not patches_see_parts:
        assert (tokens.attentions[0][:, :, :, 1:6] == 0).all()
        return
    vit = VisionTransformer(
        img_size=(64, 32), patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=0, global_pool='token',
        qkv_bias=True, reg_tokens=5, no_embed_class=True).eval()
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith(('bnneck', 'head', 'part_tokens'))}
    state['pos_embed'] = ours.pos_embed[:, 1:]
    state['reg_token'] = ours.part_tokens
    vit.load_state_dict(state, strict=True)
    torch.testing.assert_close(fast, vit.forward_features(x), atol=1e-5, rtol=1e-5)


def test_given_masks_equal_the_same_stripes_and_are_checked():
    """'given' (Table IV's SPReID row) with the stripe masks as input equals the 'stripes' model, in the fast and
    the dense path; other masks change only what they should, and a missing or misshapen mask is an error."""
    stripes = tiny(assignment='stripes', part_groups=(5,)).eval()
    given = tiny(assignment='given', part_groups=(5,)).eval()
    given.load_state_dict(stripes.state_dict())
    x = torch.randn(2, 3, 64, 32)
    masks = stripes.blocks[0].attn.stripe_mask.expand(2, 5, 32)
    expected = stripes.forward_features(x)
    torch.testing.assert_close(given.forward_features(x, masks), expected)
    dense = given.forward_tokens(x, output_attentions=True, output_assignments=True, part_masks=masks)
    torch.testing.assert_close(dense.last_hidden_state, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(dense.assignments[1], masks[:, None].expand(2, 4, 5, 32))
    one_patch = torch.zeros(2, 5, 32, dtype=torch.bool)
    one_patch[:, :, 7] = True  # every [PART] sees patch 7 only: its attention row is one-hot there
    probs = given.forward_tokens(x, output_attentions=True, part_masks=one_patch).attentions[0]
    assert (probs[:, :, 1:6, 1 + 5 + 7] == 1).all()
    with pytest.raises(ValueError, match='needs part_masks'):
        given(x)
    with pytest.raises(ValueError, match='shape'):
        given(x, masks[:, :4])
    with pytest.raises(ValueError, match="only read with assignment='given'"):
        stripes(x, masks)


def test_gradients_reach_part_tokens_and_every_parameter():
    model = tiny(num_classes=7).train()
    logits = model(torch.randn(4, 3, 64, 32))
    assert logits.shape == (4, 1 + 5, 7)
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert model.part_tokens.grad.abs().sum(-1).gt(0).all()  # every [PART] token individually


@pytest.mark.parametrize('score', ['cosine', 'dot'])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_reduced_precision_gives_no_nan(score, dtype):
    model = tiny(assignment_score=score).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # large activations: raw scores far beyond exp(s / 0.05)'s float range
    x = torch.randn(2, 3, 64, 32) * 3
    out = model.to(dtype)(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model.float()(x)
    assert torch.isfinite(out).all()


def test_empty_part_attends_to_itself_without_nan():
    # 8 patch rows split into 12 stripes: some stripes get no patch row at all
    model = tiny(assignment='stripes', part_groups=(12,)).eval()
    out = model.forward_tokens(torch.randn(2, 3, 64, 32), output_attentions=True, output_assignments=True)
    assert torch.isfinite(out.last_hidden_state).all()
    empty = ~out.assignments[0][0, 0].any(-1)
    assert empty.sum() == 4
    probs = out.attentions[0][0, 0]
    for part in empty.nonzero().flatten().tolist():
        assert probs[1 + part, 1 + part] == 1  # the empty part's only key is its own
    model_fast = model.forward_features(torch.randn(2, 3, 64, 32))
    assert torch.isfinite(model_fast).all()


@pytest.mark.parametrize('assignment,groups', [('nearest', (2, 3)), ('stripes', (6,)), ('stripes', (2, 3))])
def test_ablation_baselines_run(assignment, groups):
    model = tiny(assignment=assignment, part_groups=groups).eval()
    emb = model(torch.randn(2, 3, 64, 32))
    assert emb.shape == (2, (1 + sum(groups)) * 32)


def test_embedding_side_of_bnneck():
    x = torch.randn(4, 3, 64, 32)
    after = tiny().eval()
    before = tiny(embedding='before_bnneck').eval()
    before.load_state_dict(after.state_dict())
    with torch.no_grad():
        after.bnneck.running_mean.normal_()
        before.bnneck.running_mean.copy_(after.bnneck.running_mean)
    tokens = before.forward_features(x)[:, :6].flatten(1)
    torch.testing.assert_close(before(x), tokens)
    torch.testing.assert_close(after(x), after.bnneck(tokens))


def test_torch_compile_matches_eager():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 32)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match='assignment'):
        tiny(assignment='kmeans')
    with pytest.raises(ValueError, match='embedding'):
        tiny(embedding='middle')
    with pytest.raises(TypeError):
        tiny(not_an_arg=1)


@pytest.mark.parametrize('epsilon', [0.05, 0.5])
@pytest.mark.parametrize('score', ['cosine', 'dot'])
@pytest.mark.parametrize('groups', [(2, 3), (3, 3), (4,)])
def test_layer_assignment_equals_sinkhorn_on_its_scores(score, groups, epsilon):
    """The layer's fast path (padded queries, 1/ε folded in, exp-domain iterations) against the log-domain Sinkhorn
    on similarities computed plainly, at the paper's ε and another one (the two give different assignments here)."""
    from aaformer_hf.layers import sinkhorn_assign
    torch.manual_seed(0)
    attn = MultiHeadAutoAlignment(64, num_heads=4, part_groups=groups, assignment_score=score,
                                  sinkhorn_epsilon=epsilon)
    q, k = torch.randn(3, 4, sum(groups), 16), torch.randn(3, 4, 128, 16)
    if score == 'cosine':
        scores = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).transpose(-2, -1)
    else:
        q, k = q * 0.2, k * 0.2  # keep raw scores where float32 rounding cannot flip an argmax
        scores = q @ k.transpose(-2, -1)
    expected = sinkhorn_assign(scores, groups, epsilon=epsilon, num_iters=3)
    assert torch.equal(attn.assign(q, k), expected)
    other = sinkhorn_assign(scores, groups, epsilon=0.5 if epsilon == 0.05 else 0.05, num_iters=3)
    assert not torch.equal(other, expected)  # ε matters for these scores: a layer ignoring it would fail


def test_part_self_key_always_adds_the_own_key():
    """'always': every [PART] row also weighs its own key (and no other prefix key), besides its patches;
    'if_empty' (default, parts never empty here): only its patches."""
    x = torch.randn(2, 3, 64, 32)
    for mode in ('always', 'if_empty'):
        model = tiny(patches_see_parts=False, part_self_key=mode).eval()
        out = model.forward_tokens(x, output_attentions=True, output_assignments=True)
        p = model.num_parts
        for probs, assigned in zip(out.attentions, out.assignments):
            part_rows = probs[:, :, 1:1 + p]
            own = torch.diagonal(part_rows[..., 1:1 + p], dim1=-2, dim2=-1)  # (B, H, P): part j on key j
            if mode == 'always':
                assert (own > 0).all()
            else:
                assert (own == 0).all()
            others = part_rows[..., :1 + p].clone()
            others[..., 1:1 + p] -= torch.diag_embed(own)
            assert (others == 0).all()  # CLS and the other [PART]s: never
            assert torch.equal(part_rows[..., 1 + p:] > 0, assigned)


def test_part_pos_embed_reaches_the_part_tokens():
    x = torch.randn(2, 3, 64, 32)
    assert tiny().part_pos_embed is None and 'part_pos_embed' not in tiny().state_dict()
    model = tiny(part_pos_embed=True).eval()
    assert model.part_pos_embed.shape == (1, model.num_parts, 32)
    before = model(x)
    with torch.no_grad():
        model.part_pos_embed.add_(1.0)
    after = model(x)
    assert not torch.allclose(before, after)  # the offset is added to the [PART] tokens
    with torch.no_grad():  # and only there: the same offset on the part tokens themselves gives the same output
        model.part_pos_embed.sub_(1.0)
        model.part_tokens.add_(1.0)
    torch.testing.assert_close(model(x), after)


def test_part_init_std_scales_the_part_tokens_in_both_front_doors():
    """The [PART] init scale (an open choice): the tokens' empirical std follows part_init_std in timm and in the
    transformers class (its own _init_weights), and the field round-trips through the config."""
    from aaformer_hf.hf import AAformerConfig, AAformerModel
    torch.manual_seed(0)
    wide = timm.create_model('aaformer_tiny', part_groups=(64,), part_init_std=0.3)
    assert wide.part_tokens.std().item() == pytest.approx(0.3, rel=0.1)  # truncation at ±2 = 6.7σ: no effect
    narrow = timm.create_model('aaformer_tiny', part_groups=(64,))
    assert narrow.part_tokens.std().item() == pytest.approx(0.02, rel=0.1)
    config = AAformerConfig.from_timm_model(wide)
    assert config.part_init_std == 0.3
    hf = AAformerModel(config)
    assert hf.timm_model.part_tokens.std().item() == pytest.approx(0.3, rel=0.1)
    with pytest.raises(ValueError, match='part_init_std must be > 0'):
        tiny(part_init_std=0)


def test_fp32_assignment_inputs_under_bf16_autocast_assign_as_float32_does():
    """Under bf16 autocast the [PART] queries and patch keys are rounded before the (float32) Sinkhorn; with
    fp32_assignment_inputs the layer assigns exactly as it does without autocast, where the rounded inputs move
    some patches."""
    torch.manual_seed(0)
    layer = MultiHeadAutoAlignment(64, num_heads=4, qkv_bias=True, part_groups=(2, 3), grid_size=(16, 8)).eval()
    x = torch.randn(16, 1 + 5 + 128, 64)
    reference = layer(x)[2]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        rounded = layer(x)[2]
        layer.fp32_assignment_inputs = True
        exact = layer(x)[2]
    assert torch.equal(exact, reference)
    assert (rounded != reference).any()  # the default path really does differ under autocast
    model = tiny(fp32_assignment_inputs=True)
    from aaformer_hf.hf import AAformerConfig
    assert AAformerConfig.from_timm_model(model).fp32_assignment_inputs is True


def test_shared_assignment_is_one_sinkhorn_on_head_averaged_cosines():
    """Beyond the paper: with shared_assignment every head gets the assignment SwAV's literal Sinkhorn (float64, the
    test_sinkhorn reference) gives on the heads' cosine scores averaged, rounded to each patch's best part per group."""
    import numpy as np

    from .test_sinkhorn import swav_reference
    torch.manual_seed(0)
    heads, dim, groups = 4, 64, (2, 3)
    layer = MultiHeadAutoAlignment(dim, num_heads=heads, qkv_bias=True, part_groups=groups, grid_size=(16, 8),
                                   shared_assignment=True).eval()
    x = torch.randn(3, 1 + 5 + 128, dim)
    assigned = layer(x)[2]
    q, k, _ = layer.qkv(x).reshape(3, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q = torch.nn.functional.normalize(q[:, :, 1:6].double(), dim=-1)
    k = torch.nn.functional.normalize(k[:, :, 6:].double(), dim=-1)
    scores = (q @ k.transpose(-2, -1)).mean(dim=1).detach().numpy()  # (B, P, N)
    for b in range(3):
        start = 0
        for size in groups:
            plan = swav_reference(scores[b, start:start + size], 0.05, 3)
            expected = torch.from_numpy(plan.argmax(axis=0)[None] == np.arange(size)[:, None])
            for h in range(heads):
                assert torch.equal(assigned[b, h, start:start + size], expected)
            start += size
    layer.shared_assignment = False  # the paper's per-head assignment does differ between heads here
    per_head = layer(x)[2]
    assert any(not torch.equal(per_head[:, 0], per_head[:, h]) for h in range(1, heads))
    model = tiny(shared_assignment=True)
    from aaformer_hf.hf import AAformerConfig
    assert AAformerConfig.from_timm_model(model).shared_assignment is True
    assert all(block.attn.shared_assignment for block in model.blocks)


def test_cls_embedding_is_the_first_token_of_the_paper_embedding_through_both_front_doors(tmp_path):
    """Beyond the paper: embedding_tokens='cls' returns the CLS token's part of the paper's (1 + P) * D embedding
    (same weights, same BNNeck side), D wide, through timm and transformers; training outputs are untouched."""
    from aaformer_hf.hf import AAformerConfig, AAformerForReID, AAformerModel
    torch.manual_seed(0)
    paper = tiny(num_classes=7).eval()
    cls_only = tiny(num_classes=7, embedding_tokens='cls').eval()
    cls_only.load_state_dict(paper.state_dict())
    x = torch.randn(2, 3, *X['img_size'])
    d = paper.embed_dim
    with torch.no_grad():
        full, short = paper.forward_head(paper.forward_features(x), pre_logits=True), \
            cls_only.forward_head(cls_only.forward_features(x), pre_logits=True)
        assert full.shape == (2, 6 * d) and short.shape == (2, d) and cls_only.head_hidden_size == d
        torch.testing.assert_close(short, full[:, :d], rtol=0, atol=0)
        torch.testing.assert_close(cls_only(x), paper(x), rtol=0, atol=0)  # per-token logits: training unchanged
    config = AAformerConfig.from_timm_model(cls_only)
    assert config.embedding_tokens == 'cls' and config.embedding_size == d
    hf = AAformerModel(config).eval()
    hf.timm_model.load_state_dict({k: v for k, v in cls_only.state_dict().items() if not k.startswith('head.')})
    hf.save_pretrained(tmp_path)
    reloaded = AAformerModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).pooler_output, short, rtol=1e-6, atol=1e-6)
        reid = AAformerForReID.from_pretrained(tmp_path).eval()
        assert reid(x).embeddings.shape == (2, d)
    with pytest.raises(ValueError, match=r"embedding_tokens must be one of \('all', 'cls'\)"):
        tiny(embedding_tokens='parts')
    with pytest.raises(ValueError, match='embedding_tokens'):
        AAformerConfig(embedding_tokens='parts')


def test_setting_names_come_from_one_literal_each():
    """The config, the timm model and the layer accept the names the layer's and model's Literal types declare, and
    refuse others naming those."""
    import re
    from typing import get_args
    from aaformer_hf import AAformerConfig
    from aaformer_hf.hf.configuration_aaformer import _CHOICES
    for field, choices in _CHOICES.items():
        allowed = get_args(choices)
        assert allowed, field
        for value in allowed:
            assert getattr(AAformerConfig(**{field: value}), field) == value
        with pytest.raises(ValueError, match=rf'AAformerConfig.{field} must be one of {re.escape(str(allowed))}'):
            AAformerConfig(**{field: 'bogus'})
        with pytest.raises(ValueError, match=rf'{field} must be one of'):
            timm.create_model('aaformer_tiny', **{field: 'bogus'})


def test_the_assignment_settings_are_one_table():
    """The layer, the timm model and the config take the assignment settings from ``AssignmentSettings``: the
    config declares one field per setting with the table's default, and a value flows through all three."""
    import dataclasses

    from aaformer_hf import AAformerConfig
    from aaformer_hf.layers import AssignmentSettings

    table = {field.name: field.default for field in dataclasses.fields(AssignmentSettings)}
    assert set(table) <= set(AAformerConfig.__dataclass_fields__)
    assert {name: AAformerConfig.__dataclass_fields__[name].default for name in table} == table
    chosen = dict(assignment='nearest', assignment_score='dot', sinkhorn_epsilon=0.1, sinkhorn_iters=5,
                  part_self_key='always', patches_see_parts=False, fp32_assignment_inputs=True, shared_assignment=True)
    assert set(chosen) == set(table) and all(chosen[name] != table[name] for name in table)
    config = AAformerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **chosen)
    model = timm.create_model('aaformer_tiny', **config.timm_kwargs())
    assert all(dataclasses.asdict(block.attn.settings) == chosen for block in model.blocks)
    assert {name: getattr(AAformerConfig.from_timm_model(model), name) for name in table} == chosen


@pytest.mark.parametrize('make', [
    lambda: timm.create_model('aaformer_tiny', sinkhorn_iterations=5),
    lambda: MultiHeadAutoAlignment(16, num_heads=2, part_groups=(2,), sinkhorn_iterations=5),
])
def test_a_misspelt_setting_is_refused_by_name(make):
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['sinkhorn_iterations'\].*sinkhorn_iters"):
        make()


def test_a_setting_outside_its_choices_names_the_field():
    from aaformer_hf import AAformerConfig

    with pytest.raises(ValueError, match=r"AAformerConfig.assignment must be one of \('sinkhorn'"):
        AAformerConfig(assignment='optimal')
    with pytest.raises(ValueError, match=r"part_self_key must be one of \('if_empty', 'always'\), got 'never'"):
        timm.create_model('aaformer_tiny', part_self_key='never')
