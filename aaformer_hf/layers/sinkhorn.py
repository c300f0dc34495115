"""Part assignment for Multi-head Auto-Alignment (AAformer §III-B, Eq. 3-5).

Patches (items) are assigned to [PART] queries (prototypes) by a few Sinkhorn-Knopp iterations on the
equal-partition transport polytope (Eq. 4), then rounded to a hard assignment. Parts come in *granularity groups*;
each group partitions all patches on its own, so every group is an independent transport problem.

All functions are batched over any leading dims (batch, heads) and solve every group at once: groups are padded to the
largest group size and padded rows are excluded from column sums and from the argmax, so the number of kernels per
layer does not grow with the number of groups.

Numerics: everything is computed in float32. By default the iterations run in the log domain, so no finite input
can overflow or underflow into inf/NaN (with raw dot-product scores exp(s / 0.05) overflows fp32 as soon as
s > 4.4). For bounded scores (cosine similarities, |s| <= 1) ``log_domain=False`` runs the same iterations on
exp((s - row max) / ε), about 3x fewer and cheaper kernels: the per-row shift is exact for the row-first order (each
row is rescaled before anything else reads it), entries stay within [e^(-2/ε), 1] and sums are clamped away from
zero, so that path cannot produce inf/NaN either. Callers run the assignment under ``torch.no_grad()`` with
autocast off (see ``MultiHeadAutoAlignment``): it is a discrete decision and no gradient flows through it, as in
SwAV.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

__all__ = [
    'PartGroupLayout', 'sinkhorn_plan', 'sinkhorn_assign', 'sinkhorn_assign_grouped', 'nearest_assign',
    'stripe_assignment',
]


@dataclass(frozen=True)
class PartGroupLayout:
    """How P part rows (ordered group by group) map onto a padded (G, P_max) layout.

    Build with ``PartGroupLayout.build(sizes)``; modules keep the integer tensors as buffers and rebuild the layout
    with ``from_tensors`` so no host-to-device copy happens per forward.
    """
    sizes: Tuple[int, ...]
    gather_index: Optional[torch.Tensor]  # (G * P_max,) part row of each padded slot; None when groups are equal
    slot_group_size: torch.Tensor  # (G, P_max) long: size of the slot's group, 0 on padding slots
    part_group: torch.Tensor  # (P,) long: group of each part
    part_slot: torch.Tensor  # (P, 1) long: position of each part within its group

    @staticmethod
    def tensors(sizes: Sequence[int], device=None):
        """The integer tensors of a layout: (gather_index, slot_group_size, part_group, part_slot)."""
        sizes = tuple(int(s) for s in sizes)
        if not sizes or min(sizes) < 1:
            raise ValueError(f'part group sizes must be positive integers, got {sizes}')
        p_max = max(sizes)
        gather, slot_size, part_group, part_slot = [], [], [], []
        start = 0
        for g, size in enumerate(sizes):
            gather += list(range(start, start + size)) + [0] * (p_max - size)
            slot_size += [size] * size + [0] * (p_max - size)
            part_group += [g] * size
            part_slot += list(range(size))
            start += size
        as_long = dict(dtype=torch.long, device=device)
        return (
            torch.tensor(gather, **as_long),
            torch.tensor(slot_size, **as_long).view(len(sizes), p_max),
            torch.tensor(part_group, **as_long),
            torch.tensor(part_slot, **as_long).view(-1, 1),
        )

    @classmethod
    def from_tensors(cls, sizes: Sequence[int], gather_index, slot_group_size, part_group, part_slot):
        sizes = tuple(int(s) for s in sizes)
        equal = all(s == sizes[0] for s in sizes)
        return cls(sizes, None if equal else gather_index, slot_group_size, part_group, part_slot)

    @classmethod
    def build(cls, sizes: Sequence[int], device=None) -> 'PartGroupLayout':
        return cls.from_tensors(sizes, *cls.tensors(sizes, device=device))

    @property
    def num_parts(self) -> int:
        return sum(self.sizes)


def _as_layout(groups, device) -> PartGroupLayout:
    return groups if isinstance(groups, PartGroupLayout) else PartGroupLayout.build(groups, device=device)


def _to_groups(scores: torch.Tensor, layout: PartGroupLayout) -> Tuple[torch.Tensor, torch.Tensor]:
    """(..., P, N) -> (..., G, P_max, N), plus the (G, P_max, 1) bool mask of real (non-padding) rows."""
    if layout.num_parts != scores.shape[-2]:
        raise ValueError(
            f'part groups {layout.sizes} hold {layout.num_parts} parts but scores have {scores.shape[-2]} part rows')
    g, p_max = layout.slot_group_size.shape
    if layout.gather_index is not None:
        scores = scores.index_select(-2, layout.gather_index)
    grouped = scores.reshape(*scores.shape[:-2], g, p_max, scores.shape[-1])
    return grouped, layout.slot_group_size.unsqueeze(-1) > 0


def _pad_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask: 0 on real rows, -inf on padding rows."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(~valid, float('-inf'))


def _log_sinkhorn(log_kernel: torch.Tensor, valid: torch.Tensor, layout: PartGroupLayout, num_iters: int,
                  final_column_step: bool) -> torch.Tensor:
    """SwAV-order Sinkhorn-Knopp in the log domain on grouped (..., G, P_max, N) log-kernels; returns log Q.

    Each iteration scales rows first (each part's total mass 1/P_g), then columns (each patch's total mass 1/N within
    every group), the order of SwAV's ``distributed_sinkhorn``. SwAV's initial division by the global sum is omitted:
    the first row scaling cancels any global factor exactly.
    """
    pad_bias = _pad_bias(valid, log_kernel.dtype)
    # padding slots get group size 1 (log mass 0): any finite value works, they never enter a column sum
    log_row_mass = -layout.slot_group_size.clamp(min=1).to(log_kernel.dtype).log().unsqueeze(-1)
    log_col_mass = -math.log(log_kernel.shape[-1])
    log_q = log_kernel
    for it in range(num_iters):
        log_q = log_q - torch.logsumexp(log_q, dim=-1, keepdim=True) + log_row_mass
        if it < num_iters - 1 or final_column_step:
            log_q = log_q - torch.logsumexp(log_q + pad_bias, dim=-2, keepdim=True) + log_col_mass
    return log_q


def _exp_sinkhorn(scaled: torch.Tensor, layout: PartGroupLayout, num_iters: int, final_column_step: bool):
    """The same iterations on K = exp(scaled - row max), for bounded scores, as scaling vectors: Q = diag(u) K diag(v)
    with u (..., G, P_max, 1) and v (..., G, 1, N); v is None when no column step ran.

    Masses are scaled by N (rows N/P_g, columns 1) to save a multiply per step: the plan is exactly Q / N. Padding
    rows have mass 0, hence u = 0, so they drop out of column sums. Sums are clamped away from zero, so nothing
    becomes inf/NaN even outside the bounded range.
    """
    tiny = torch.finfo(scaled.dtype).tiny
    n = scaled.shape[-1]
    size = layout.slot_group_size.unsqueeze(-1).to(scaled.dtype)
    row_mass = torch.where(size > 0, n / size.clamp(min=1), 0.0)  # N / P_g, 0 on padding rows
    kernel = (scaled - scaled.amax(dim=-1, keepdim=True)).exp()  # the row shift is exact: rows are scaled first
    u = row_mass / kernel.sum(dim=-1, keepdim=True)  # each row has an entry of 1: no clamp needed
    v = None
    for it in range(num_iters):
        if it:
            u = row_mass / (kernel * v).sum(dim=-1, keepdim=True).clamp_(min=tiny)
        if it < num_iters - 1 or final_column_step:
            # mul + sum rather than a batched matvec: faster for these tiny shapes and fusable by torch.compile
            v = (u * kernel).sum(dim=-2, keepdim=True).clamp_(min=tiny).reciprocal_()
    return kernel, u, v


def _check_iters(num_iters: int) -> None:
    if num_iters < 1:
        raise ValueError(f'num_iters must be >= 1, got {num_iters}')


def _grouped_scores(scores: torch.Tensor, layout: PartGroupLayout, epsilon: float, num_iters: int):
    _check_iters(num_iters)
    scores = scores.float()
    return _to_groups(scores if epsilon == 1.0 else scores / epsilon, layout)


def _round_to_parts(grouped: torch.Tensor, layout: PartGroupLayout, pad_bias: Optional[torch.Tensor] = None):
    """Argmax rounding within each group -> (..., P, N) bool, exactly one True per patch in every group."""
    if pad_bias is not None:
        grouped = grouped + pad_bias
    # max(...).indices rather than argmax: much faster on CPU when reducing a short, strided dim
    winner = grouped.max(dim=-2).indices  # (..., G, N)
    return winner.index_select(-2, layout.part_group) == layout.part_slot


def sinkhorn_plan(scores: torch.Tensor, groups, epsilon: float = 0.05, num_iters: int = 3,
                  log_domain: bool = True) -> torch.Tensor:
    """Soft transport plan Y* of Eq. 5 for each group after ``num_iters`` Sinkhorn-Knopp iterations.

    Args:
        scores: (..., P, N) similarities between P part prototypes (ordered group by group) and N patches.
        groups: number of parts in each granularity group (summing to P), or a ``PartGroupLayout``.
        epsilon: entropic regularisation ε of Eq. 3 (the paper uses 0.05).
        num_iters: Sinkhorn-Knopp iterations (the paper uses 3).
        log_domain: Iterate in the log domain (safe for any finite scores). False is faster and exact for bounded
            scores such as cosine similarities with ε >= 0.05.

    Returns:
        (..., P, N) float32 plan. Within each group every column sums to 1/N exactly (the last step is a column step)
        and every row sum converges to 1/P_g as iterations grow: the transport polytope of Eq. 4.
    """
    layout = _as_layout(groups, scores.device)
    grouped, valid = _grouped_scores(scores, layout, epsilon, num_iters)
    if log_domain:
        plan = _log_sinkhorn(grouped, valid, layout, num_iters, final_column_step=True).exp()
    else:
        kernel, u, v = _exp_sinkhorn(grouped, layout, num_iters, final_column_step=True)
        plan = u * kernel * v / grouped.shape[-1]
    rows = [plan[..., g, :size, :] for g, size in enumerate(layout.sizes)]
    return torch.cat(rows, dim=-2)


def sinkhorn_assign(scores: torch.Tensor, groups, epsilon: float = 0.05, num_iters: int = 3,
                    log_domain: bool = True) -> torch.Tensor:
    """Hard patch-to-part assignment: the Sinkhorn plan rounded to each patch's argmax part within each group.

    The final column scaling multiplies a group's column by one factor, which cannot change its argmax, so it is
    skipped (the result equals rounding ``sinkhorn_plan``). Arguments as for ``sinkhorn_plan``.

    Returns:
        (..., P, N) bool; within each group the subsets Φ_p are mutually exclusive and cover all N patches.
    """
    layout = _as_layout(groups, scores.device)
    grouped, _ = _grouped_scores(scores, layout, epsilon, num_iters)
    return sinkhorn_assign_grouped(grouped, layout, num_iters, log_domain)


def sinkhorn_assign_grouped(grouped: torch.Tensor, layout: PartGroupLayout, num_iters: int = 3,
                            log_domain: bool = True) -> torch.Tensor:
    """``sinkhorn_assign`` on scores already divided by ε and laid out as (..., G, P_max, N) (rows in
    ``layout.gather_index`` order, padding rows arbitrary), e.g. computed from gathered [PART] queries."""
    _check_iters(num_iters)
    valid = layout.slot_group_size.unsqueeze(-1) > 0
    if log_domain:
        log_q = _log_sinkhorn(grouped, valid, layout, num_iters, final_column_step=False)
        return _round_to_parts(log_q, layout, _pad_bias(valid, log_q.dtype))
    # Q = u K v without the final column factor v, which cannot change a column's argmax. Padding rows have u = 0 and
    # come last in their group, so max() never prefers one to a real row (all > 0)
    kernel, u, _ = _exp_sinkhorn(grouped, layout, num_iters, final_column_step=False)
    return _round_to_parts(u * kernel, layout)


def nearest_assign(scores: torch.Tensor, groups) -> torch.Tensor:
    """Nearest-neighbour assignment (Table V's ablation): each patch goes to its most similar part within each group,
    with no transport constraint. Returns (..., P, N) bool."""
    layout = _as_layout(groups, scores.device)
    grouped, valid = _to_groups(scores.float(), layout)
    return _round_to_parts(grouped, layout, _pad_bias(valid, grouped.dtype))


def stripe_assignment(group_sizes: Sequence[int], grid_size: Tuple[int, int], device=None) -> torch.Tensor:
    """Fixed horizontal stripes (PCB / MGN partitions, Table IV's "PT" rows) as a (P, N) bool mask.

    Group g with n_g parts splits the H patch rows into n_g bands: patch row r goes to band floor(r * n_g / H).
    Patches are in raster (row-major) order, as ``PatchEmbed`` produces them.
    """
    h, w = grid_size
    rows = torch.arange(h, device=device).repeat_interleave(w)
    masks = []
    for n_g in group_sizes:
        band = torch.div(rows * n_g, h, rounding_mode='floor')
        masks.append(band.unsqueeze(0) == torch.arange(n_g, device=device).unsqueeze(1))
    return torch.cat(masks, dim=0)
