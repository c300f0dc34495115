"""The fused Triton kernels of the [PART] rows (layers/triton_part_rows.py) against the PyTorch path
(part_rows.py, itself checked against the layer's plain path and a float64 gradcheck in test_part_rows.py), alone
and inside the layer; and torch.compile seeing them inside the operator.

On a CUDA GPU the compiled kernels run. Without one (CI) the same kernel source runs in Triton's interpreter on the
CPU, in a subprocess with TRITON_INTERPRET=1 (the interpreter must be chosen before triton is first imported)."""
import logging

import pytest
import torch

from aaformer_hf.layers import MultiHeadAutoAlignment, triton_part_rows
from aaformer_hf.layers import part_rows as part_rows_module
from aaformer_hf.layers.part_rows import PartGroupLayout, assign_patches, part_rows_backward, part_rows_reference

from .test_part_rows import CASES, _layer, _run
from .triton_interpreter import INTERPRETED, device, rerun_interpreted  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(triton_part_rows.triton is None, reason='triton is not installed (CPU-only torch)')


@pytest.fixture
def nan_empty(monkeypatch):
    """Fresh buffers full of NaN, so that a row the kernels should write and do not cannot pass as a lucky zero."""
    empty = torch.empty

    def filled(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float('nan')) if out.is_floating_point() else out
    monkeypatch.setattr(triton_part_rows.torch, 'empty', filled)


@pytest.mark.skipif(torch.cuda.is_available() or INTERPRETED, reason='the kernel runs compiled on this GPU')
def test_kernel_in_triton_interpreter():
    """Every test of this module, again, with the kernel interpreted on the CPU."""
    rerun_interpreted(__file__, 'test_kernel_in_triton_interpreter',
                      parent_only=('test_torch_compile_sees_the_kernels_inside_the_operator',))


def _inputs(device, b, h, p, n, d, dtype):
    seq_len = 1 + p + n
    qkv = torch.randn(3, b, seq_len, h, d, device=device, dtype=dtype).permute(0, 1, 3, 2, 4)  # strided, as in use
    q, k, v = qkv.unbind(0)
    attn_out = torch.randn(b, h, seq_len, d, device=device, dtype=dtype).transpose(1, 2)  # (B, L, H, d) view
    assigned = torch.rand(b, h, p, n, device=device) < 0.4
    assigned[0, 0, 1] = False  # an empty part: its own key only
    return q, k, v, attn_out, assigned


@pytest.mark.parametrize('self_key_always', [False, True])
@pytest.mark.parametrize('sizes', [(2, 2, 5, 12, 8), (1, 3, 3, 37, 24)])  # odd sizes: masked padding
def test_forward_matches_pytorch_path(device, nan_empty, self_key_always, sizes):
    torch.manual_seed(0)
    q, k, v, attn_out, assigned = _inputs(device, *sizes, dtype=torch.float32)
    p = sizes[2]
    fused, given = triton_part_rows.part_rows_forward_triton(q, k, v, attn_out, assigned, self_key_always, 0.35)
    rows = part_rows_reference(q, k, v, assigned, self_key_always, 0.35)
    expected = attn_out.clone()
    expected[:, 1:1 + p] = rows.transpose(1, 2)
    assert fused.shape == attn_out.shape and fused.is_contiguous() and given is assigned
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('groups', [(2, 3), (6,), (1, 2, 4)])
def test_forward_kernel_assigns_like_the_pytorch_sinkhorn(device, groups):
    """Without a given assignment the forward kernel runs the Sinkhorn itself (one launch for the whole [PART]
    path): the same assignment as the PyTorch Sinkhorn, and rows that follow it."""
    torch.manual_seed(5)
    p = sum(groups)
    q, k, v, attn_out, _ = _inputs(device, 2, 3, p, 37, 24, dtype=torch.float32)
    layout = PartGroupLayout.build(groups, device=device)
    group_size = torch.tensor([s for s in groups for _ in range(s)], device=device)
    fused, assigned = triton_part_rows.part_rows_forward_triton(
        q, k, v, attn_out, None, False, 0.35, assign=(layout.part_group, group_size, len(groups), 0.05, 3))
    reference = assign_patches(q[:, :, 1:1 + p], k[:, :, 1 + p:], layout, group_size, False, True, 0.05, 3,
                               fused=False)
    assert assigned.dtype == torch.bool and torch.equal(assigned, reference)
    rows = part_rows_reference(q, k, v, reference, False, 0.35)
    torch.testing.assert_close(fused[:, 1:1 + p], rows.transpose(1, 2), rtol=1e-5, atol=1e-5)
    assert torch.equal(fused[:, 0], attn_out[:, 0]) and torch.equal(fused[:, 1 + p:], attn_out[:, 1 + p:])


def test_forward_in_bfloat16_within_dtype_tolerance(device):
    torch.manual_seed(1)
    q, k, v, attn_out, assigned = _inputs(device, 2, 2, 5, 12, 16, dtype=torch.bfloat16)
    fused, _ = triton_part_rows.part_rows_forward_triton(q, k, v, attn_out, assigned, False, 0.25)
    rows = part_rows_reference(q.float(), k.float(), v.float(), assigned, False, 0.25)
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused[:, 1:6].float(), rows.transpose(1, 2), rtol=2e-2, atol=2e-2)
    assert torch.equal(fused[:, 0], attn_out[:, 0]) and torch.equal(fused[:, 6:], attn_out[:, 6:])


@pytest.mark.parametrize('self_key_always', [False, True])
@pytest.mark.parametrize('sizes', [(2, 2, 5, 12, 8), (1, 3, 3, 37, 24)])
def test_backward_matches_pytorch_path(device, nan_empty, self_key_always, sizes):
    """Against part_rows_backward's PyTorch implementation (gradchecked in float64 in test_part_rows.py); the kernel
    also writes the zero rows of the q and attn_out gradients."""
    torch.manual_seed(2)
    q, k, v, attn_out, assigned = _inputs(device, *sizes, dtype=torch.float32)
    grad_merged = torch.randn(attn_out.shape, device=device).transpose(1, 2).contiguous().transpose(1, 2)  # strided
    fused = triton_part_rows.part_rows_backward_triton(grad_merged, q, k, v, assigned, self_key_always, 0.35)
    expected = part_rows_module._part_rows_backward_pytorch(grad_merged, q, k, v, assigned, self_key_always, 0.35)
    for name, got, want in zip(('q', 'k', 'v', 'attn_out'), fused, expected):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize('case', CASES, ids=lambda c: ','.join(f'{k}={v}' for k, v in c.items()) or 'default')
def test_layer_with_the_kernels_equals_the_plain_path(device, monkeypatch, case):
    """The whole layer with ``use_triton_kernels`` on (the operator launches the kernels, on q, k, v as the permuted
    views of the qkv projection - no copy) against the layer's plain PyTorch path: outputs, assignment and the
    gradients of the input and every parameter, in every assignment mode."""
    monkeypatch.setattr(part_rows_module, 'use_triton_kernels', True)
    launches = []
    for name in ('part_rows_forward_triton', 'part_rows_backward_triton'):
        monkeypatch.setattr(part_rows_module, name, _recording(getattr(part_rows_module, name), launches))
    torch.manual_seed(0)
    layer = _layer(**case).to(device)
    x = torch.randn(3, 1 + layer.num_parts + 12, 24, device=device)
    out, assigned, grads = _run(layer, x, one_op=True)
    ref_out, ref_assigned, ref_grads = _run(layer, x, one_op=False)
    # every mode's [PART] rows go through the kernels (stripes, shared or nearest assignments come in as given)
    assert sorted({name for name, _ in launches}) == ['part_rows_backward_triton', 'part_rows_forward_triton']
    assert not any(contiguous for _, contiguous in launches)  # the qkv copy is skipped
    assert torch.equal(assigned, ref_assigned)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5)


def _recording(launcher, launches):
    """``launcher`` (a function launching a kernel), recording its name and whether its q was contiguous."""
    def launch(*args, **kwargs):
        q = args[1] if launcher.__name__ == 'part_rows_backward_triton' else args[0]
        launches.append((launcher.__name__, q.is_contiguous()))
        return launcher(*args, **kwargs)
    return launch


def test_backward_in_bfloat16_within_dtype_tolerance(device):
    torch.manual_seed(4)
    q, k, v, attn_out, assigned = _inputs(device, 2, 2, 5, 12, 16, dtype=torch.bfloat16)
    grad_merged = torch.randn(attn_out.shape, device=device, dtype=torch.bfloat16)
    fused = triton_part_rows.part_rows_backward_triton(grad_merged, q, k, v, assigned, False, 0.25)
    expected = part_rows_backward(grad_merged.float(), q.float(), k.float(), v.float(), assigned, False, 0.25)
    for got, want in zip(fused, expected):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2)


@pytest.mark.skipif(INTERPRETED, reason="the interpreter runs kernels on fake tensors, which torch.compile's tracing "
                                        "cannot give it; this test needs no GPU and runs in the parent process")
def test_torch_compile_sees_the_kernels_inside_the_operator(monkeypatch):
    """With the kernels on, torch.compile traces INTO aaformer::part_rows (a triton_op): the joint forward/backward
    graph holds the forward and the backward kernel, not the operator as an opaque call. No GPU needed: the graph is
    inspected before anything runs."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    monkeypatch.setattr(part_rows_module, 'use_triton_kernels', True)
    monkeypatch.setattr(part_rows_module, 'triton_available', lambda tensor: True)
    # without a GPU driver Triton cannot analyse which arguments a kernel writes; torch then warns and assumes all
    monkeypatch.setattr(logging.getLogger('torch._higher_order_ops.triton_kernel_wrap'), 'disabled', True)
    seen = {}

    class Inspected(Exception):
        pass

    def partition(joint, inputs, **kwargs):
        nodes = list(joint.graph.nodes)
        seen['kernels'] = sorted(kernel_side_table.get_kernel(node.kwargs['kernel_idx']).fn.__name__
                                 for node in nodes if 'triton_kernel_wrapper' in str(node.target))
        seen['opaque'] = [str(node.target) for node in nodes if 'aaformer' in str(node.target)]
        raise Inspected

    torch._dynamo.reset()
    layer = MultiHeadAutoAlignment(64, num_heads=2, part_groups=(2, 3))
    x = torch.randn(2, 1 + 5 + 12, 64, requires_grad=True)
    with pytest.raises(Exception, match='Inspected'):
        torch.compile(lambda x: layer(x)[0].sum(), backend=aot_autograd(fw_compiler=None, partition_fn=partition),
                      fullgraph=True)(x)
    torch._dynamo.reset()
    assert seen == {'kernels': ['_part_rows_bwd_kernel', '_part_rows_fwd_kernel'], 'opaque': []}
