"""The [PART] rows as one registered operator (``aaformer::part_rows``, issue #13): the same outputs, assignments
and gradients as the plain PyTorch path in every assignment mode, a float64 gradcheck of its hand-written backward,
torch.compile without graph breaks, and the plain path when exporting."""
import pytest
import torch

import aaformer_hf  # noqa: F401
from aaformer_hf.layers import MultiHeadAutoAlignment
from aaformer_hf.layers.part_rows import part_rows

CASES = [dict(), dict(part_self_key='always'), dict(assignment='nearest'), dict(assignment='stripes'),
         dict(assignment_score='dot'), dict(patches_see_parts=False), dict(shared_assignment=True),
         dict(part_groups=(6,)), dict(part_groups=(1, 4), sinkhorn_epsilon=0.02)]


def _layer(**kwargs):
    kwargs = dict(dict(part_groups=(2, 3), grid_size=(4, 3)), **kwargs)
    return MultiHeadAutoAlignment(24, num_heads=3, qkv_bias=True, **kwargs)


def _run(layer, x, one_op: bool):
    layer.part_rows_op = one_op
    x = x.clone().requires_grad_(True)
    out, _, assigned = layer(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = [x.grad] + [param.grad.clone() for param in layer.parameters()]
    layer.zero_grad()
    return out.detach(), assigned, grads


@pytest.mark.parametrize('case', CASES, ids=lambda c: ','.join(f'{k}={v}' for k, v in c.items()) or 'default')
def test_one_operator_equals_the_plain_path(case):
    torch.manual_seed(0)
    layer = _layer(**case)
    x = torch.randn(3, 1 + layer.num_parts + 12, 24)
    out, assigned, grads = _run(layer, x, one_op=True)
    ref_out, ref_assigned, ref_grads = _run(layer, x, one_op=False)
    assert torch.equal(assigned, ref_assigned)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6)


def test_given_masks_go_through_the_operator():
    torch.manual_seed(0)
    layer = _layer(assignment='given', part_groups=(5,))
    x = torch.randn(2, 1 + 5 + 12, 24)
    masks = torch.rand(2, 5, 12) < 0.3
    masks[:, 2] = False  # an empty part sees its own key only
    results = []
    for one_op in (True, False):
        layer.part_rows_op = one_op
        results.append(layer(x, part_masks=masks))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    assert torch.equal(results[0][2], results[1][2])


@pytest.mark.parametrize('self_key_always', [False, True])
def test_hand_written_backward_passes_gradcheck(self_key_always):
    """Finite differences in float64 against the operator's own backward (a second, independent derivation)."""
    torch.manual_seed(0)
    b, h, p, n, d = 2, 2, 3, 5, 4
    seq_len = 1 + p + n
    q, k, v = (torch.randn(b, h, seq_len, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    attn_out = torch.randn(b, seq_len, h, d, dtype=torch.float64, requires_grad=True)
    assigned = torch.rand(b, h, p, n) < 0.5
    assigned[0, 0, 1] = False  # an empty part
    layout = [torch.zeros(0, dtype=torch.long)] * 5  # unused: the assignment is given

    def fn(q, k, v, attn_out):
        return part_rows(q, k, v, attn_out, assigned, layout, [p], False, True, 0.05, 3, self_key_always, 0.5,
                         False)[0]

    assert torch.autograd.gradcheck(fn, (q, k, v, attn_out))


def test_compiles_without_graph_breaks_and_matches_eager():
    import timm
    torch.manual_seed(0)
    model = timm.create_model('aaformer_tiny', embed_dim=32, depth=2, num_heads=2).eval()
    x = torch.randn(2, 3, 256, 128)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_exporting_takes_the_plain_path():
    """torch.export (what the ONNX exporter runs) must see plain aten operators, not the custom one."""
    torch.manual_seed(0)
    layer = _layer().eval()
    x = torch.randn(1, 1 + 5 + 12, 24)
    exported = torch.export.export(layer, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == 'call_function'}
    assert not any('aaformer' in target for target in targets)
    torch.testing.assert_close(exported.module()(x)[0], layer(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (the device machine runs it)')
@pytest.mark.parametrize('kernels', [False, True])
def test_forward_and_backward_never_wait_on_the_host(monkeypatch, kernels):
    """What CUDA graphs need (README, Performance): no synchronising call in an AAformer forward and backward, with
    the PyTorch path or the Triton kernels."""
    import timm
    from aaformer_hf.layers import part_rows as module
    monkeypatch.setattr(module, 'use_triton_kernels', kernels)
    model = timm.create_model('aaformer_tiny', embed_dim=64, depth=2, num_heads=2).cuda()
    x = torch.randn(2, 3, 256, 128, device='cuda')
    model(x).float().sum().backward()  # warm-up: lazy initialisation may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')


@pytest.mark.parametrize('case', CASES + [dict(assignment='given')],
                         ids=lambda c: ','.join(f'{k}={v}' for k, v in c.items()) or 'default')
def test_inference_writes_the_rows_in_place_with_the_same_outputs(case, monkeypatch):
    """Issue #26: without gradients the [PART] rows go over the attention output in place (``part_rows_only``)
    instead of into a copy of it - against the explicit masked attention over the whole sequence
    (``output_attentions``, another way to the same rows), and taken only when no gradient is needed."""
    from aaformer_hf.layers import auto_alignment

    torch.manual_seed(0)
    layer = _layer(**case).eval()
    x = torch.randn(3, 1 + layer.num_parts + 12, 24)
    masks = torch.rand(3, layer.num_parts, 12) > 0.5 if layer.assignment == 'given' else None
    calls = []
    real = auto_alignment.part_rows_only
    monkeypatch.setattr(auto_alignment, 'part_rows_only', lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        out, _, assigned = layer(x, part_masks=masks)
        dense, _, dense_assigned = layer(x, output_attentions=True, part_masks=masks)
    assert len(calls) == (layer.assignment != 'global')
    assert torch.equal(assigned, dense_assigned)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-6)
    layer(x, part_masks=masks)  # with gradients: the operator, not the in-place path
    assert len(calls) == (layer.assignment != 'global')


def test_the_cpu_path_copies_what_a_vit_layer_copies():
    """What the CPU path is for (issue #26): at inference this layer makes the same whole-tensor copies as timm's ViT
    attention at the same sequence length (its products multiply the permuted q, k, v views image by image, the
    [PART] rows go over the output in place); in a training step two more, the merge of the [PART] rows into a new
    output (an operator's outputs never alias its inputs) and its gradient with those rows zeroed - no copy of
    q, k or v."""
    from timm.models.vision_transformer import Attention
    from torch.profiler import ProfilerActivity, profile

    # ViT-B's head width and sequence: CPU fused attention then leaves its output in (B, L, H, d) order, which a ViT
    # layer reshapes without a copy (short or narrow ones take a path whose reshape copies in any layer)
    layer = MultiHeadAutoAlignment(128, num_heads=2, qkv_bias=True, part_groups=(2, 3), grid_size=(16, 8)).eval()
    vit = Attention(128, num_heads=2, qkv_bias=True).eval()
    x = torch.randn(2, 1 + layer.num_parts + 128, 128)

    def large_copies(module, grad):
        with torch.set_grad_enabled(grad), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            out = module(x)
            if grad:
                (out[0] if isinstance(out, tuple) else out).sum().backward()
        shapes = [e.input_shapes[0] for e in prof.events() if e.name == 'aten::copy_' and e.input_shapes]
        return sorted(shape for shape in shapes if torch.Size(shape).numel() >= 2 * 2 * 128 * 64)

    assert large_copies(layer, grad=False) == large_copies(vit, grad=False)
    merge = [2, x.shape[1], 2, 64]
    assert large_copies(layer, grad=True) == sorted(large_copies(vit, grad=True) + [merge, merge])


@pytest.mark.parametrize('grad', [False, True], ids=['inference', 'training'])
def test_a_batch_of_no_images(grad):
    """An empty batch (a loader's last, filtered-out shard) goes through, as through a ViT layer: the per-image
    products of the CPU path have no image to stack."""
    layer = _layer().train(grad)
    x = torch.randn(0, 1 + layer.num_parts + 12, 24, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        out, _, assigned = layer(x)
    assert out.shape == x.shape and assigned.shape == (0, 3, layer.num_parts, 12)
    if grad:
        out.sum().backward()
        assert x.grad.shape == x.shape
