"""The fused Triton assignment kernel against the PyTorch reference path (sinkhorn.py, itself checked against POT and
a float64 SwAV loop in test_sinkhorn.py).

On a CUDA GPU the compiled kernel runs. Without one (CI), the same kernel source runs in Triton's interpreter on the
CPU (numpy semantics: it checks the algorithm, masking and indexing, not GPU-only constraints or speed). The
interpreter must be chosen before triton is first imported, so on CPU this module runs itself again in a subprocess
with TRITON_INTERPRET=1 (test_kernel_in_triton_interpreter)."""
import pytest
import torch

from aaformer_hf.layers import MultiHeadAutoAlignment, triton_assign

from .triton_interpreter import INTERPRETED, device, rerun_interpreted  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(triton_assign.triton is None, reason='triton is not installed (CPU-only torch build)')


@pytest.mark.skipif(torch.cuda.is_available() or INTERPRETED, reason='the kernel runs compiled on this GPU')
def test_kernel_in_triton_interpreter():
    """Every test of this module, again, with the kernel interpreted on the CPU."""
    rerun_interpreted(__file__, 'test_kernel_in_triton_interpreter')


def _fused_and_reference(attn, q, k):
    attn.fused_assignment = True
    fused = attn.assign(q, k)
    attn.fused_assignment = False
    return fused, attn.assign(q, k)


@pytest.mark.parametrize('groups', [(2, 3), (6,), (3, 3), (1, 2, 4)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_fused_kernel_matches_pytorch_path(device, groups, dtype):
    torch.manual_seed(0)
    attn = MultiHeadAutoAlignment(768, num_heads=12, part_groups=groups).to(device)
    batch = 8 if device == 'cuda' else 2  # the interpreter is slow
    qkv = torch.randn(3, batch, 12, 1 + sum(groups) + 128, 64, device=device, dtype=dtype)  # strided, as in use
    q, k = qkv[0][:, :, 1:1 + sum(groups)], qkv[1][:, :, 1 + sum(groups):]
    fused, reference = _fused_and_reference(attn, q, k)
    assert fused.shape == reference.shape and fused.dtype == torch.bool
    start = 0
    for size in groups:  # a partition of all patches in every group
        assert (fused[:, :, start:start + size].sum(2) == 1).all()
        start += size
    agreement = (fused == reference).all(dim=2).float().mean().item()  # per patch
    assert agreement > 0.999, agreement


def test_fused_kernel_odd_sizes_and_extreme_scores(device):
    """Sizes that are not powers of two (masked padding) and keys of wildly different norms: still a partition of
    all patches per group, the same as the PyTorch path."""
    torch.manual_seed(1)
    attn = MultiHeadAutoAlignment(3 * 24, num_heads=3, part_groups=(2, 3)).to(device)
    q = torch.randn(2, 3, 5, 24, device=device)
    k = torch.randn(2, 3, 37, 24, device=device) * torch.logspace(-15, 15, 37, device=device)[:, None]
    fused, reference = _fused_and_reference(attn, q, k)
    assert fused.shape == (2, 3, 5, 37)
    assert (fused[:, :, :2].sum(2) == 1).all() and (fused[:, :, 2:].sum(2) == 1).all()
    assert torch.equal(fused, reference)
