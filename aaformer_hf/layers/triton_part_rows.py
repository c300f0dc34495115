"""A fused Triton forward for the [PART] rows of a layer (issue #13, first step): for one (image, head) per program,
each [PART] query's logits over all keys, the mask of Eq. 2 (its own patches; its own key when it has none or when
``self_key_always``; never CLS or another [PART]), a float32 softmax and P·V, written straight into the layer's
(B, L, H, d) output rows - what ``part_rows.part_rows_reference`` computes in ~12 PyTorch operators.

Status: checked against the PyTorch path in Triton's interpreter on the CPU (``tests/test_triton_part_rows.py``);
NOT yet run on a GPU, so nothing uses it by default (``part_rows`` keeps its PyTorch implementation on every device).
The backward kernel and the wiring into ``aaformer::part_rows`` follow once a GPU session has validated it.
"""
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships with CUDA builds of torch
    triton = None

__all__ = ['part_rows_forward_triton']


if triton is not None:
    @triton.jit
    def _part_rows_fwd_kernel(
            q_ptr, k_ptr, v_ptr, a_ptr, out_ptr,
            H, P, N, L, D, scale,
            sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
            sa_b, sa_h, sa_p, sa_n, so_b, so_l, so_h, so_d,
            SELF_KEY_ALWAYS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // H
        h = pid % H
        offs_p = tl.arange(0, BLOCK_P)
        offs_l = tl.arange(0, BLOCK_L)
        offs_d = tl.arange(0, BLOCK_D)
        valid_p = offs_p < P
        valid_l = offs_l < L
        valid_d = offs_d < D

        # [PART] queries are sequence rows 1..P
        q = tl.load(q_ptr + b * sq_b + h * sq_h + (1 + offs_p)[:, None] * sq_l + offs_d[None, :] * sq_d,
                    mask=valid_p[:, None] & valid_d[None, :], other=0.0).to(tl.float32)
        k = tl.load(k_ptr + b * sk_b + h * sk_h + offs_l[:, None] * sk_l + offs_d[None, :] * sk_d,
                    mask=valid_l[:, None] & valid_d[None, :], other=0.0).to(tl.float32)
        v = tl.load(v_ptr + b * sv_b + h * sv_h + offs_l[:, None] * sv_l + offs_d[None, :] * sv_d,
                    mask=valid_l[:, None] & valid_d[None, :], other=0.0).to(tl.float32)
        logits = tl.dot(q, tl.trans(k), input_precision='ieee') * scale  # (BLOCK_P, BLOCK_L)

        # patch keys (sequence positions 1 + P + n) each [PART] was assigned
        patch = offs_l - 1 - P
        is_patch = (offs_l >= 1 + P) & valid_l
        assigned = tl.load(a_ptr + b * sa_b + h * sa_h + offs_p[:, None] * sa_p + patch[None, :] * sa_n,
                           mask=valid_p[:, None] & is_patch[None, :], other=0)
        assigned = assigned != 0
        has_patch = tl.max(assigned.to(tl.int32), axis=1) > 0
        own_key = offs_l[None, :] == (1 + offs_p)[:, None]
        if SELF_KEY_ALWAYS:
            self_key = own_key
        else:
            self_key = own_key & (~has_patch)[:, None]
        allowed = (assigned | self_key) & valid_p[:, None] & valid_l[None, :]

        # softmax over the allowed keys in float32 (finite fill: padding rows have no allowed key)
        logits = tl.where(allowed, logits, -1.0e30)
        shifted = tl.exp(logits - tl.max(logits, axis=1)[:, None])
        shifted = tl.where(allowed, shifted, 0.0)
        probs = shifted / tl.maximum(tl.sum(shifted, axis=1), 1e-30)[:, None]
        out = tl.dot(probs, v, input_precision='ieee')  # (BLOCK_P, BLOCK_D)
        tl.store(out_ptr + b * so_b + (1 + offs_p)[:, None] * so_l + h * so_h + offs_d[None, :] * so_d,
                 out.to(out_ptr.dtype.element_ty), mask=valid_p[:, None] & valid_d[None, :])


def part_rows_forward_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_out: torch.Tensor,
                             assigned: torch.Tensor, self_key_always: bool, scale: float) -> torch.Tensor:
    """``attn_out`` (B, L, H, d) with rows 1..P replaced by the [PART] rows (a new tensor): q, k, v (B, H, L, d) in
    any strides, ``assigned`` (B, H, P, N) bool. Same result as ``part_rows_reference`` merged into ``attn_out``."""
    b, h, seq_len, d = q.shape
    p, n = assigned.shape[-2:]
    out = torch.empty(attn_out.shape, dtype=attn_out.dtype, device=attn_out.device)
    out.copy_(attn_out)
    flags = assigned.view(torch.int8) if assigned.dtype == torch.bool else assigned
    _part_rows_fwd_kernel[(b * h,)](
        q, k, v, flags, out,
        h, p, n, seq_len, d, scale,
        *q.stride(), *k.stride(), *v.stride(), *flags.stride(), *out.stride(),
        SELF_KEY_ALWAYS=self_key_always, BLOCK_P=max(16, triton.next_power_of_2(p)),
        BLOCK_L=max(16, triton.next_power_of_2(seq_len)), BLOCK_D=max(16, triton.next_power_of_2(d)),
    )
    return out
