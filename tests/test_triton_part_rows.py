"""The fused Triton forward of the [PART] rows (layers/triton_part_rows.py) against the PyTorch path
(part_rows.part_rows_reference, itself checked against the layer's plain path and a float64 gradcheck).

On a CUDA GPU the compiled kernel runs. Without one (CI) the same kernel source runs in Triton's interpreter on the
CPU, in a subprocess with TRITON_INTERPRET=1 (the interpreter must be chosen before triton is first imported)."""
import pytest
import torch

from aaformer_hf.layers import triton_part_rows
from aaformer_hf.layers.part_rows import part_rows_reference

from .triton_interpreter import INTERPRETED, rerun_interpreted

pytestmark = pytest.mark.skipif(triton_part_rows.triton is None, reason='triton is not installed (CPU-only torch)')


@pytest.fixture
def device():
    if torch.cuda.is_available():
        return 'cuda'
    if not INTERPRETED:
        pytest.skip('no GPU: run on the CPU by test_kernel_in_triton_interpreter, in a subprocess')
    return 'cpu'


@pytest.mark.skipif(torch.cuda.is_available() or INTERPRETED, reason='the kernel runs compiled on this GPU')
def test_kernel_in_triton_interpreter():
    """Every test of this module, again, with the kernel interpreted on the CPU."""
    rerun_interpreted(__file__, 'test_kernel_in_triton_interpreter')


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
def test_forward_matches_pytorch_path(device, self_key_always, sizes):
    torch.manual_seed(0)
    q, k, v, attn_out, assigned = _inputs(device, *sizes, dtype=torch.float32)
    p = sizes[2]
    fused = triton_part_rows.part_rows_forward_triton(q, k, v, attn_out, assigned, self_key_always, 0.35)
    rows = part_rows_reference(q, k, v, assigned, self_key_always, 0.35)
    expected = attn_out.clone()
    expected[:, 1:1 + p] = rows.transpose(1, 2)
    assert fused.shape == attn_out.shape and fused.is_contiguous()
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_forward_in_bfloat16_within_dtype_tolerance(device):
    torch.manual_seed(1)
    q, k, v, attn_out, assigned = _inputs(device, 2, 2, 5, 12, 16, dtype=torch.bfloat16)
    fused = triton_part_rows.part_rows_forward_triton(q, k, v, attn_out, assigned, False, 0.25)
    rows = part_rows_reference(q.float(), k.float(), v.float(), assigned, False, 0.25)
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused[:, 1:6].float(), rows.transpose(1, 2), rtol=2e-2, atol=2e-2)
    assert torch.equal(fused[:, 0], attn_out[:, 0]) and torch.equal(fused[:, 6:], attn_out[:, 6:])


@pytest.mark.parametrize('self_key_always', [False, True])
@pytest.mark.parametrize('sizes', [(2, 2, 5, 12, 8), (1, 3, 3, 37, 24)])
def test_backward_matches_pytorch_path(device, self_key_always, sizes):
    """Against part_rows_backward's PyTorch implementation (gradchecked in float64 in test_part_rows.py)."""
    from aaformer_hf.layers.part_rows import part_rows_backward
    torch.manual_seed(2)
    q, k, v, attn_out, assigned = _inputs(device, *sizes, dtype=torch.float32)
    grad_merged = torch.randn(attn_out.shape, device=device).transpose(1, 2).contiguous().transpose(1, 2)  # strided
    fused = triton_part_rows.part_rows_backward_triton(grad_merged, q, k, v, assigned, self_key_always, 0.35)
    expected = part_rows_backward(grad_merged, q, k, v, assigned, self_key_always, 0.35)
    for name, got, want in zip(('q', 'k', 'v', 'attn_out'), fused, expected):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


def test_the_operators_cuda_implementation_runs_the_kernels_when_switched_on(device, monkeypatch):
    """aaformer::part_rows' CUDA implementation (called directly here, so the interpreter can run it on the CPU)
    uses the kernels once ``use_triton_kernels`` is on, with the same results as the PyTorch implementation."""
    from aaformer_hf.layers import part_rows as module
    torch.manual_seed(3)
    q, k, v, attn_out, assigned = _inputs(device, 2, 2, 5, 12, 8, dtype=torch.float32)
    layout = [torch.zeros(0, dtype=torch.long)] * 5  # unused: the assignment is given
    args = (q, k, v, attn_out, assigned, layout, [5], False, True, 0.05, 3, False, 0.35, False)
    calls = []
    monkeypatch.setattr(module, 'triton_available', lambda tensor: True)
    monkeypatch.setattr(module, 'use_triton_kernels', True)
    monkeypatch.setattr(triton_part_rows, '_part_rows_fwd_kernel', _counting(triton_part_rows._part_rows_fwd_kernel,
                                                                              calls))
    merged, given = module._part_rows_cuda(*args)
    reference, _ = module._part_rows_pytorch(*args)
    assert calls and torch.equal(given, assigned)
    torch.testing.assert_close(merged, reference, rtol=1e-5, atol=1e-5)
    grad = torch.randn(attn_out.shape, device=device)
    for got, want in zip(module._part_rows_backward_cuda(grad, q, k, v, assigned, False, 0.35),
                         module._part_rows_backward_pytorch(grad, q, k, v, assigned, False, 0.35)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


class _counting:
    """A kernel launcher that records its launches (``kernel[grid](...)``)."""

    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        self.calls.append(grid)
        return self.kernel[grid]


def test_backward_in_bfloat16_within_dtype_tolerance(device):
    from aaformer_hf.layers.part_rows import part_rows_backward
    torch.manual_seed(4)
    q, k, v, attn_out, assigned = _inputs(device, 2, 2, 5, 12, 16, dtype=torch.bfloat16)
    grad_merged = torch.randn(attn_out.shape, device=device, dtype=torch.bfloat16)
    fused = triton_part_rows.part_rows_backward_triton(grad_merged, q, k, v, assigned, False, 0.25)
    expected = part_rows_backward(grad_merged.float(), q.float(), k.float(), v.float(), assigned, False, 0.25)
    for got, want in zip(fused, expected):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2)
