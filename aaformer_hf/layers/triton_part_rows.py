"""Fused Triton kernels for the [PART] rows of a layer (issue #13). Per (image, head), one program:

- forward: each [PART] query's logits over all keys, the mask of Eq. 2 (its own patches; its own key when it has none
  or when ``self_key_always``; never CLS or another [PART]), a float32 softmax and P·V, written straight into the
  layer's (B, L, H, d) output rows - what ``part_rows.part_rows_reference`` computes in ~12 PyTorch operators;
- backward: the probabilities recomputed, then the gradients of the [PART] queries, of every key and value.

Status: checked against the PyTorch implementation in Triton's interpreter on the CPU
(``tests/test_triton_part_rows.py``) but NOT yet run on a GPU, so ``aaformer::part_rows`` uses them on CUDA only when
``aaformer_hf.layers.part_rows.use_triton_kernels`` is switched on; by default CUDA runs the PyTorch implementation.
"""
import torch

from .part_rows import pass_through_gradient

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships with CUDA builds of torch
    triton = None

__all__ = ['part_rows_forward_triton', 'part_rows_backward_triton']


if triton is not None:
    @triton.jit
    def _load_and_probs(
            q_ptr, k_ptr, v_ptr, a_ptr, H, P, L, D, scale, sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d,
            sv_b, sv_h, sv_l, sv_d, sa_b, sa_h, sa_p, sa_n,
            SELF_KEY_ALWAYS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """This program's (image, head), its offsets and masks, the [PART] queries (rows 1..P), all keys and values
        in float32, and the [PART] rows' attention probabilities under the mask of Eq. 2."""
        pid = tl.program_id(0)
        b = pid // H
        h = pid % H
        offs_p = tl.arange(0, BLOCK_P)
        offs_l = tl.arange(0, BLOCK_L)
        offs_d = tl.arange(0, BLOCK_D)
        valid_p = offs_p < P
        valid_l = offs_l < L
        valid_d = offs_d < D
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
        return b, h, offs_p, offs_l, offs_d, valid_p, valid_l, valid_d, q, k, v, probs

    @triton.jit
    def _part_rows_fwd_kernel(
            q_ptr, k_ptr, v_ptr, a_ptr, out_ptr,
            H, P, N, L, D, scale,
            sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
            sa_b, sa_h, sa_p, sa_n, so_b, so_l, so_h, so_d,
            SELF_KEY_ALWAYS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        b, h, offs_p, offs_l, offs_d, valid_p, valid_l, valid_d, q, k, v, probs = _load_and_probs(
            q_ptr, k_ptr, v_ptr, a_ptr, H, P, L, D, scale, sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d,
            sv_b, sv_h, sv_l, sv_d, sa_b, sa_h, sa_p, sa_n, SELF_KEY_ALWAYS, BLOCK_P, BLOCK_L, BLOCK_D)
        out = tl.dot(probs, v, input_precision='ieee')  # (BLOCK_P, BLOCK_D)
        tl.store(out_ptr + b * so_b + (1 + offs_p)[:, None] * so_l + h * so_h + offs_d[None, :] * so_d,
                 out.to(out_ptr.dtype.element_ty), mask=valid_p[:, None] & valid_d[None, :])

    @triton.jit
    def _part_rows_bwd_kernel(
            g_ptr, q_ptr, k_ptr, v_ptr, a_ptr, gq_ptr, gk_ptr, gv_ptr,
            H, P, N, L, D, scale,
            sg_b, sg_l, sg_h, sg_d,
            sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d, sa_b, sa_h, sa_p, sa_n,
            SELF_KEY_ALWAYS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        b, h, offs_p, offs_l, offs_d, valid_p, valid_l, valid_d, q, k, v, probs = _load_and_probs(
            q_ptr, k_ptr, v_ptr, a_ptr, H, P, L, D, scale, sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d,
            sv_b, sv_h, sv_l, sv_d, sa_b, sa_h, sa_p, sa_n, SELF_KEY_ALWAYS, BLOCK_P, BLOCK_L, BLOCK_D)
        rows = valid_p[:, None] & valid_d[None, :]
        grad_rows = tl.load(g_ptr + b * sg_b + (1 + offs_p)[:, None] * sg_l + h * sg_h + offs_d[None, :] * sg_d,
                            mask=rows, other=0.0).to(tl.float32)  # (BLOCK_P, BLOCK_D)
        grad_v = tl.dot(tl.trans(probs), grad_rows, input_precision='ieee')  # (BLOCK_L, BLOCK_D)
        grad_probs = tl.dot(grad_rows, tl.trans(v), input_precision='ieee')  # (BLOCK_P, BLOCK_L)
        grad_logits = probs * (grad_probs - tl.sum(grad_probs * probs, axis=1)[:, None])
        grad_q = tl.dot(grad_logits, k, input_precision='ieee') * scale  # (BLOCK_P, BLOCK_D)
        grad_k = tl.dot(tl.trans(grad_logits), q, input_precision='ieee') * scale  # (BLOCK_L, BLOCK_D)
        # outputs are contiguous (B, H, L, d), as the q / k / v gradients autograd accumulates
        base = (b * H + h) * L * D
        keys = valid_l[:, None] & valid_d[None, :]
        tl.store(gq_ptr + base + (1 + offs_p)[:, None] * D + offs_d[None, :],
                 grad_q.to(gq_ptr.dtype.element_ty), mask=rows)
        tl.store(gk_ptr + base + offs_l[:, None] * D + offs_d[None, :], grad_k.to(gk_ptr.dtype.element_ty), mask=keys)
        tl.store(gv_ptr + base + offs_l[:, None] * D + offs_d[None, :], grad_v.to(gv_ptr.dtype.element_ty), mask=keys)


def _blocks(p: int, seq_len: int, d: int) -> dict:
    return dict(BLOCK_P=max(16, triton.next_power_of_2(p)), BLOCK_L=max(16, triton.next_power_of_2(seq_len)),
                BLOCK_D=max(16, triton.next_power_of_2(d)))


def part_rows_backward_triton(grad_merged: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              assigned: torch.Tensor, self_key_always: bool, scale: float):
    """The gradients of q, k, v (B, H, L, d) and attn_out (B, L, H, d) from the gradient of the merged output: the
    same as ``part_rows_backward``'s PyTorch implementation, probabilities recomputed in the kernel."""
    b, h, seq_len, d = q.shape
    p, n = assigned.shape[-2:]
    grad_q = torch.zeros(b, h, seq_len, d, dtype=q.dtype, device=q.device)
    grad_k = torch.empty(b, h, seq_len, d, dtype=k.dtype, device=k.device)
    grad_v = torch.empty(b, h, seq_len, d, dtype=v.dtype, device=v.device)
    flags = assigned.view(torch.int8) if assigned.dtype == torch.bool else assigned
    _part_rows_bwd_kernel[(b * h,)](
        grad_merged, q, k, v, flags, grad_q, grad_k, grad_v,
        h, p, n, seq_len, d, scale,
        *grad_merged.stride(), *q.stride(), *k.stride(), *v.stride(), *flags.stride(),
        SELF_KEY_ALWAYS=self_key_always, **_blocks(p, seq_len, d),
    )
    return grad_q, grad_k, grad_v, pass_through_gradient(grad_merged, p)


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
        SELF_KEY_ALWAYS=self_key_always, **_blocks(p, seq_len, d),
    )
    return out
