"""One fused GPU kernel per layer for the Sinkhorn part assignment (cosine scores, exp domain).

In eager mode the PyTorch assignment is ~25 tiny kernels per layer, each shorter than its launch, so on a GPU the
host cannot keep up. This Triton kernel does the same computation for one (image, head) per program: cosine scores
/ ε, the row-max shift, SwAV-order Sinkhorn-Knopp iterations with each group's columns normalised separately, and
argmax rounding within each group. It needs no gradient (the assignment never has one), so there is no backward.

The PyTorch path in ``sinkhorn.py`` stays the reference (and the CPU path); ``tests/test_triton_assign.py`` compares
the two on a GPU. Float rounding can order near-ties differently, so the two may disagree on a few patches.
"""
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships with CUDA builds of torch; without it the PyTorch path is used
    triton = None

# a kernel launched through wrap_triton is visible to torch.compile inside a triton_op (torch >= 2.6)
wrap_triton = getattr(torch.library, 'wrap_triton', None)

__all__ = ['triton_available', 'sinkhorn_assign_cosine_triton']


def triton_available(tensor: torch.Tensor) -> bool:
    return triton is not None and tensor.is_cuda


if triton is not None:
    @triton.jit
    def load_rows(ptr, s_row, s_d, rows, valid_rows, offs_d, valid_d):
        """Rows ``rows`` (BLOCK_R,) of one (image, head) of a tensor in any strides (``ptr`` at that slice), in
        float32 (BLOCK_R, BLOCK_D), zeros where masked."""
        return tl.load(ptr + rows[:, None] * s_row + offs_d[None, :] * s_d,
                       mask=valid_rows[:, None] & valid_d[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def sinkhorn_round(q, k, columns, valid_p, group_ptr, group_size_ptr, num_patches, inv_eps,
                       NUM_GROUPS: tl.constexpr, NUM_ITERS: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_C: tl.constexpr):
        """The assignment of one (image, head) as int8 (BLOCK_P, BLOCK_C): [PART] queries q (BLOCK_P, BLOCK_D) and keys
        k (BLOCK_C, BLOCK_D) in float32, ``columns`` (BLOCK_C,) bool: which keys are patches (0 on every other
        column); ``valid_p`` the real part rows; ``group_ptr`` / ``group_size_ptr`` (P,) each part's group and its
        size. Also the [PART]-rows kernel's first step (triton_part_rows.py), over all keys of the sequence."""
        group = tl.load(group_ptr + tl.arange(0, BLOCK_P), mask=valid_p, other=-1)
        group_size = tl.load(group_size_ptr + tl.arange(0, BLOCK_P), mask=valid_p, other=1).to(tl.float32)
        # cosine similarity / ε: normalise the queries (ε folded in), divide the product by the key norms
        q_norm = tl.maximum(tl.sqrt(tl.sum(q * q, axis=1)), 1e-12)
        k_norm = tl.maximum(tl.sqrt(tl.sum(k * k, axis=1)), 1e-12)
        q = q * (inv_eps / q_norm)[:, None]
        scores = tl.dot(q, tl.trans(k), input_precision='ieee') / k_norm[None, :]

        # K = exp(scores - row max); padding rows and non-patch columns are 0
        scores = tl.where(columns[None, :], scores, float('-inf'))
        kernel = tl.exp(scores - tl.max(scores, axis=1)[:, None])
        kernel = tl.where(valid_p[:, None] & columns[None, :], kernel, 0.0)
        row_mass = tl.where(valid_p, num_patches / group_size, 0.0)  # masses scaled by N, as in sinkhorn.py

        # SwAV order: rows, then columns (within each group), ...; the final column step cannot move an argmax
        u = row_mass / tl.maximum(tl.sum(kernel, axis=1), 1e-30)
        for _ in tl.static_range(NUM_ITERS - 1):
            scaled = u[:, None] * kernel
            col_scale = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)  # 1 / column sum of each row's group
            for g in tl.static_range(NUM_GROUPS):
                in_group = (group == g)[:, None]
                col_sum = tl.sum(tl.where(in_group, scaled, 0.0), axis=0)
                col_sum = tl.maximum(col_sum, 1e-30)
                col_scale = tl.where(in_group, (1.0 / col_sum)[None, :], col_scale)
            u = row_mass / tl.maximum(tl.sum(kernel * col_scale, axis=1), 1e-30)

        # rounding: each patch to its argmax part within every group
        scaled = u[:, None] * kernel
        assigned = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.int8)
        for g in tl.static_range(NUM_GROUPS):
            in_group = (group == g)[:, None]
            winner = tl.argmax(tl.where(in_group, scaled, -1.0), axis=0)
            assigned = tl.where(in_group & (tl.arange(0, BLOCK_P)[:, None] == winner[None, :]), 1, assigned)
        return tl.where(columns[None, :], assigned, 0).to(tl.int8)

    @triton.jit
    def _assign_kernel(
            q_ptr, k_ptr, out_ptr, group_ptr, group_size_ptr,
            H, P, N, D,
            sq_b, sq_h, sq_p, sq_d, sk_b, sk_h, sk_n, sk_d, so_b, so_h, so_p, so_n,
            inv_eps,
            NUM_GROUPS: tl.constexpr, NUM_ITERS: tl.constexpr,
            BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // H
        h = pid % H
        offs_p = tl.arange(0, BLOCK_P)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        valid_p = offs_p < P
        valid_n = offs_n < N
        valid_d = offs_d < D
        q = load_rows(q_ptr + b * sq_b + h * sq_h, sq_p, sq_d, offs_p, valid_p, offs_d, valid_d)
        k = load_rows(k_ptr + b * sk_b + h * sk_h, sk_n, sk_d, offs_n, valid_n, offs_d, valid_d)
        assigned = sinkhorn_round(q, k, valid_n, valid_p, group_ptr, group_size_ptr, N, inv_eps,
                                  NUM_GROUPS, NUM_ITERS, BLOCK_P, BLOCK_N)
        tl.store(out_ptr + b * so_b + h * so_h + offs_p[:, None] * so_p + offs_n[None, :] * so_n,
                 assigned, mask=valid_p[:, None] & valid_n[None, :])


def sinkhorn_assign_cosine_triton(q_parts: torch.Tensor, k_patches: torch.Tensor, part_group: torch.Tensor,
                                  part_group_size: torch.Tensor, num_groups: int, epsilon: float,
                                  num_iters: int, traceable: bool = False) -> torch.Tensor:
    """(B, H, P, d) [PART] queries, (B, H, N, d) patch keys -> (B, H, P, N) bool assignment, on a CUDA device.

    ``part_group`` / ``part_group_size``: (P,) int tensors giving each part's group and the size of that group.
    ``traceable``: launch through ``wrap_triton`` (inside a ``triton_op``, where torch.compile traces the kernel).
    """
    b, h, p, d = q_parts.shape
    n = k_patches.shape[-2]
    out = torch.empty(b, h, p, n, dtype=torch.int8, device=q_parts.device)
    kernel = wrap_triton(_assign_kernel) if traceable else _assign_kernel
    kernel[(b * h,)](
        q_parts, k_patches, out, part_group, part_group_size,
        h, p, n, d,
        *q_parts.stride(), *k_patches.stride(), *out.stride(),
        1.0 / epsilon,
        NUM_GROUPS=num_groups, NUM_ITERS=num_iters,
        BLOCK_P=max(16, triton.next_power_of_2(p)), BLOCK_N=max(16, triton.next_power_of_2(n)),
        BLOCK_D=max(16, triton.next_power_of_2(d)),
    )
    return out.view(torch.bool)
