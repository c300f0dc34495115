"""The fused Triton assignment kernel against the PyTorch reference path. Needs a CUDA GPU, which CI machines do not
have: there these tests are skipped (the PyTorch path, used on CPU, is covered by test_sinkhorn.py/test_model.py)."""
import pytest
import torch

from aaformer_hf.layers import MultiHeadAutoAlignment
from aaformer_hf.layers.triton_assign import triton_available

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not triton_available(torch.empty(0, device='cuda')),
    reason='the fused kernel runs only on a CUDA GPU with Triton; CI has no GPU')


@pytest.mark.parametrize('groups', [(2, 3), (6,), (3, 3), (1, 2, 4)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_fused_kernel_matches_pytorch_path(groups, dtype):
    torch.manual_seed(0)
    attn = MultiHeadAutoAlignment(768, num_heads=12, part_groups=groups).cuda()
    qkv = torch.randn(3, 8, 12, 1 + sum(groups) + 128, 64, device='cuda', dtype=dtype)  # strided slices, as in use
    q, k = qkv[0][:, :, 1:1 + sum(groups)], qkv[1][:, :, 1 + sum(groups):]
    fused = attn.assign(q, k)
    attn.fused_assignment = False
    reference = attn.assign(q, k)
    assert fused.shape == reference.shape and fused.dtype == torch.bool
    start = 0
    for size in groups:  # a partition of all patches in every group
        assert (fused[:, :, start:start + size].sum(2) == 1).all()
        start += size
    agreement = (fused == reference).all(dim=2).float().mean().item()  # per patch
    assert agreement > 0.999, agreement
