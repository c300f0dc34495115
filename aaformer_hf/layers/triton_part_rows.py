"""Fused Triton kernels for the [PART] rows of a layer (issue #13). Per (image, head), one program:

- forward: the assignment (cosine Sinkhorn-Knopp, ``triton_assign.sinkhorn_round``) unless one is given, each [PART]
  query's logits over all keys under the mask of Eq. 2 (its own patches; its own key when it has none or when
  ``self_key_always``; never CLS or another [PART]), a float32 softmax and P·V written as rows 1..P of the layer's
  (B, L, H, d) output, whose other rows it copies from the plain attention output - ONE launch for what
  ``part_rows.part_rows_reference`` and the merge compute in ~15 PyTorch operators;
- backward: the probabilities recomputed, the gradients of the [PART] queries (zeros on the other rows), of every key
  and value, and the plain rows' gradient passed through (zeros on the [PART] rows) - ONE launch, no zero-fill or
  clone kernels around it.

q, k, v are read in any strides (the layer's permuted views of its qkv projection: no ``.contiguous()`` copy).
Launched through ``wrap_triton`` when ``traceable`` (inside the ``aaformer::part_rows`` operator), so torch.compile
sees the kernels rather than an opaque call.

Status: checked against the PyTorch implementation in Triton's interpreter on the CPU
(``tests/test_triton_part_rows.py``) but NOT yet run on a GPU, so ``aaformer::part_rows`` uses them on CUDA only when
``aaformer_hf.layers.part_rows.use_triton_kernels`` is switched on; by default CUDA runs the PyTorch implementation.
"""
from typing import Optional, Tuple

import torch

from .triton_assign import triton, wrap_triton

if triton is not None:
    import triton.language as tl

    from .triton_assign import load_rows, sinkhorn_round

__all__ = ['part_rows_forward_triton', 'part_rows_backward_triton']

# rows per step when a program copies (or zeroes) the rows of its head that the [PART] path does not compute
_BLOCK_ROWS = 32


if triton is not None:
    @triton.jit
    def _load_qkv(q_ptr, k_ptr, v_ptr, H, P, L, D, sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d,
                  sv_b, sv_h, sv_l, sv_d, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
        """This program's (image, head), its offsets and masks, the [PART] queries (rows 1..P) and all keys and values,
        in float32."""
        pid = tl.program_id(0)
        b = pid // H
        h = pid % H
        offs_p = tl.arange(0, BLOCK_P)
        offs_l = tl.arange(0, BLOCK_L)
        offs_d = tl.arange(0, BLOCK_D)
        valid_p = offs_p < P
        valid_l = offs_l < L
        valid_d = offs_d < D
        q = load_rows(q_ptr + b * sq_b + h * sq_h, sq_l, sq_d, 1 + offs_p, valid_p, offs_d, valid_d)
        k = load_rows(k_ptr + b * sk_b + h * sk_h, sk_l, sk_d, offs_l, valid_l, offs_d, valid_d)
        v = load_rows(v_ptr + b * sv_b + h * sv_h, sv_l, sv_d, offs_l, valid_l, offs_d, valid_d)
        return b, h, offs_p, offs_l, offs_d, valid_p, valid_l, valid_d, q, k, v

    @triton.jit
    def _assignment_tile(a_ptr, b, h, sa_b, sa_h, sa_p, sa_n, offs_p, offs_l, valid_p, valid_l, P):
        """Pointers and mask of one (image, head)'s (B, H, P, N) assignment laid over the sequence positions:
        (BLOCK_P, BLOCK_L), patch n at position 1 + P + n; and which positions are patches."""
        is_patch = (offs_l >= 1 + P) & valid_l
        ptrs = a_ptr + b * sa_b + h * sa_h + offs_p[:, None] * sa_p + (offs_l - 1 - P)[None, :] * sa_n
        return ptrs, valid_p[:, None] & is_patch[None, :], is_patch

    @triton.jit
    def _masked_probs(q, k, assigned, offs_p, offs_l, valid_p, valid_l, scale, SELF_KEY_ALWAYS: tl.constexpr):
        """The [PART] rows' attention probabilities (BLOCK_P, BLOCK_L) under the mask of Eq. 2; ``assigned``: bool
        (BLOCK_P, BLOCK_L), True on the sequence positions of each part's patches."""
        logits = tl.dot(q, tl.trans(k), input_precision='ieee') * scale
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
        return shifted / tl.maximum(tl.sum(shifted, axis=1), 1e-30)[:, None]

    @triton.jit
    def _other_rows(src, dst, s_l, s_d, d_l, d_d, P, L, D, FROM_SRC: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                    BLOCK_D: tl.constexpr):
        """Rows 0 and P+1..L-1 of one head: copied from ``src`` (FROM_SRC) or zeros, written to ``dst``."""
        offs_r = tl.arange(0, BLOCK_ROWS)
        offs_d = tl.arange(0, BLOCK_D)
        for start in range(0, L, BLOCK_ROWS):
            rows = start + offs_r
            mask = ((rows < L) & ((rows == 0) | (rows > P)))[:, None] & (offs_d < D)[None, :]
            if FROM_SRC:
                values = tl.load(src + rows[:, None] * s_l + offs_d[None, :] * s_d, mask=mask, other=0.0)
            else:
                values = tl.zeros((BLOCK_ROWS, BLOCK_D), dtype=tl.float32)
            tl.store(dst + rows[:, None] * d_l + offs_d[None, :] * d_d, values.to(dst.dtype.element_ty), mask=mask)

    @triton.jit
    def _part_rows_fwd_kernel(
            q_ptr, k_ptr, v_ptr, in_ptr, out_ptr, a_ptr, group_ptr, group_size_ptr,
            H, P, N, L, D, scale, inv_eps,
            sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
            si_b, si_l, si_h, si_d, so_b, so_l, so_h, so_d, sa_b, sa_h, sa_p, sa_n,
            SELF_KEY_ALWAYS: tl.constexpr, ASSIGN: tl.constexpr, NUM_GROUPS: tl.constexpr, NUM_ITERS: tl.constexpr,
            BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_ROWS: tl.constexpr,
    ):
        b, h, offs_p, offs_l, offs_d, valid_p, valid_l, valid_d, q, k, v = _load_qkv(
            q_ptr, k_ptr, v_ptr, H, P, L, D, sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d,
            sv_b, sv_h, sv_l, sv_d, BLOCK_P, BLOCK_L, BLOCK_D)
        a_ptrs, a_mask, is_patch = _assignment_tile(a_ptr, b, h, sa_b, sa_h, sa_p, sa_n, offs_p, offs_l, valid_p,
                                                    valid_l, P)
        if ASSIGN:
            flags = sinkhorn_round(q, k, is_patch, valid_p, group_ptr, group_size_ptr, N, inv_eps,
                                   NUM_GROUPS, NUM_ITERS, BLOCK_P, BLOCK_L)
            tl.store(a_ptrs, flags, mask=a_mask)
            assigned = flags != 0
        else:
            assigned = tl.load(a_ptrs, mask=a_mask, other=0) != 0
        probs = _masked_probs(q, k, assigned, offs_p, offs_l, valid_p, valid_l, scale, SELF_KEY_ALWAYS)
        rows = tl.dot(probs, v, input_precision='ieee')  # (BLOCK_P, BLOCK_D)
        out_head = out_ptr + b * so_b + h * so_h
        tl.store(out_head + (1 + offs_p)[:, None] * so_l + offs_d[None, :] * so_d,
                 rows.to(out_ptr.dtype.element_ty), mask=valid_p[:, None] & valid_d[None, :])
        _other_rows(in_ptr + b * si_b + h * si_h, out_head, si_l, si_d, so_l, so_d, P, L, D, True,
                    BLOCK_ROWS, BLOCK_D)

    @triton.jit
    def _part_rows_bwd_kernel(
            g_ptr, q_ptr, k_ptr, v_ptr, a_ptr, gq_ptr, gk_ptr, gv_ptr, ga_ptr,
            H, P, N, L, D, scale,
            sg_b, sg_l, sg_h, sg_d,
            sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d, sa_b, sa_h, sa_p, sa_n,
            SELF_KEY_ALWAYS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
            BLOCK_ROWS: tl.constexpr,
    ):
        b, h, offs_p, offs_l, offs_d, valid_p, valid_l, valid_d, q, k, v = _load_qkv(
            q_ptr, k_ptr, v_ptr, H, P, L, D, sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d,
            sv_b, sv_h, sv_l, sv_d, BLOCK_P, BLOCK_L, BLOCK_D)
        a_ptrs, a_mask, _ = _assignment_tile(a_ptr, b, h, sa_b, sa_h, sa_p, sa_n, offs_p, offs_l, valid_p, valid_l, P)
        assigned = tl.load(a_ptrs, mask=a_mask, other=0) != 0
        probs = _masked_probs(q, k, assigned, offs_p, offs_l, valid_p, valid_l, scale, SELF_KEY_ALWAYS)
        rows = valid_p[:, None] & valid_d[None, :]
        g_head = g_ptr + b * sg_b + h * sg_h
        grad_rows = tl.load(g_head + (1 + offs_p)[:, None] * sg_l + offs_d[None, :] * sg_d,
                            mask=rows, other=0.0).to(tl.float32)  # (BLOCK_P, BLOCK_D)
        grad_v = tl.dot(tl.trans(probs), grad_rows, input_precision='ieee')  # (BLOCK_L, BLOCK_D)
        grad_probs = tl.dot(grad_rows, tl.trans(v), input_precision='ieee')  # (BLOCK_P, BLOCK_L)
        grad_logits = probs * (grad_probs - tl.sum(grad_probs * probs, axis=1)[:, None])
        grad_q = tl.dot(grad_logits, k, input_precision='ieee') * scale  # (BLOCK_P, BLOCK_D)
        grad_k = tl.dot(tl.trans(grad_logits), q, input_precision='ieee') * scale  # (BLOCK_L, BLOCK_D)
        # q / k / v gradients are contiguous (B, H, L, d), as autograd accumulates them; attn_out's is (B, L, H, d)
        head = (b * H + h) * L * D
        keys = valid_l[:, None] & valid_d[None, :]
        tl.store(gq_ptr + head + (1 + offs_p)[:, None] * D + offs_d[None, :], grad_q.to(gq_ptr.dtype.element_ty),
                 mask=rows)
        _other_rows(gq_ptr, gq_ptr + head, D, 1, D, 1, P, L, D, False, BLOCK_ROWS, BLOCK_D)
        tl.store(gk_ptr + head + offs_l[:, None] * D + offs_d[None, :], grad_k.to(gk_ptr.dtype.element_ty), mask=keys)
        tl.store(gv_ptr + head + offs_l[:, None] * D + offs_d[None, :], grad_v.to(gv_ptr.dtype.element_ty), mask=keys)
        # the plain rows' gradient goes through to attn_out; the [PART] rows it had were replaced, so theirs is 0
        ga_head = ga_ptr + b * L * H * D + h * D
        tl.store(ga_head + (1 + offs_p)[:, None] * (H * D) + offs_d[None, :],
                 tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32).to(ga_ptr.dtype.element_ty), mask=rows)
        _other_rows(g_head, ga_head, sg_l, sg_d, H * D, 1, P, L, D, True, BLOCK_ROWS, BLOCK_D)


def _blocks(p: int, seq_len: int, d: int) -> dict:
    return dict(BLOCK_P=max(16, triton.next_power_of_2(p)), BLOCK_L=max(16, triton.next_power_of_2(seq_len)),
                BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_ROWS=_BLOCK_ROWS)


def part_rows_forward_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_out: torch.Tensor,
                             assigned: Optional[torch.Tensor], self_key_always: bool, scale: float,
                             assign: Optional[tuple] = None, traceable: bool = False
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``attn_out`` (B, L, H, d) with rows 1..P replaced by the [PART] rows (a new tensor), and the assignment.

    q, k, v (B, H, L, d) in any strides; ``assigned`` (B, H, P, N) bool, returned as it is, or None with ``assign`` =
    (part_group, group_size_of_part, num_groups, epsilon, iters): the kernel assigns the patches first (cosine
    Sinkhorn-Knopp, as ``triton_assign``) and returns that assignment. ``traceable``: launch through ``wrap_triton``.
    Same results as ``part_rows_reference`` merged into ``attn_out``.
    """
    b, h, seq_len, d = q.shape
    if assigned is None:
        part_group, group_size, num_groups, epsilon, iters = assign
        p = part_group.shape[0]
        flags = torch.empty(b, h, p, seq_len - 1 - p, dtype=torch.int8, device=q.device)
    else:
        flags = assigned.view(torch.int8)
        part_group = group_size = flags  # not read
        num_groups, epsilon, iters = 1, 1.0, 1
        p = assigned.shape[-2]
    out = torch.empty(attn_out.shape, dtype=attn_out.dtype, device=attn_out.device)
    kernel = wrap_triton(_part_rows_fwd_kernel) if traceable else _part_rows_fwd_kernel
    kernel[(b * h,)](
        q, k, v, attn_out, out, flags, part_group, group_size,
        h, p, seq_len - 1 - p, seq_len, d, scale, 1.0 / epsilon,
        *q.stride(), *k.stride(), *v.stride(), *attn_out.stride(), *out.stride(), *flags.stride(),
        SELF_KEY_ALWAYS=self_key_always, ASSIGN=assigned is None, NUM_GROUPS=num_groups, NUM_ITERS=iters,
        **_blocks(p, seq_len, d),
    )
    return out, (flags.view(torch.bool) if assigned is None else assigned)


def part_rows_backward_triton(grad_merged: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              assigned: torch.Tensor, self_key_always: bool, scale: float, traceable: bool = False):
    """The gradients of q, k, v (B, H, L, d) and attn_out (B, L, H, d) from the gradient of the merged output: the
    same as ``part_rows_backward``'s PyTorch implementation, probabilities recomputed in the kernel, which also
    writes the zero rows (no zero-fill or clone kernels)."""
    b, h, seq_len, d = q.shape
    p, n = assigned.shape[-2:]
    grad_q = torch.empty(b, h, seq_len, d, dtype=q.dtype, device=q.device)
    grad_k = torch.empty(b, h, seq_len, d, dtype=k.dtype, device=k.device)
    grad_v = torch.empty(b, h, seq_len, d, dtype=v.dtype, device=v.device)
    grad_attn_out = torch.empty(b, seq_len, h, d, dtype=grad_merged.dtype, device=grad_merged.device)
    flags = assigned.view(torch.int8)
    kernel = wrap_triton(_part_rows_bwd_kernel) if traceable else _part_rows_bwd_kernel
    kernel[(b * h,)](
        grad_merged, q, k, v, flags, grad_q, grad_k, grad_v, grad_attn_out,
        h, p, n, seq_len, d, scale,
        *grad_merged.stride(), *q.stride(), *k.stride(), *v.stride(), *flags.stride(),
        SELF_KEY_ALWAYS=self_key_always, **_blocks(p, seq_len, d),
    )
    return grad_q, grad_k, grad_v, grad_attn_out
