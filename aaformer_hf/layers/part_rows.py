"""The [PART] rows of a Multi-Head Auto-Alignment layer as ONE registered operator, ``aaformer::part_rows``.

It takes the layer's q, k, v (B, H, L, d) and the attention output of the plain rows (B, L, H, d), and does what
AAformer adds to a ViT layer: assign patches to parts (unless an assignment is given), let each [PART] query attend
only to its own patches (Eq. 2), and write those P rows into the output. Its backward recomputes the P rows'
probabilities from q, k and the assignment.

Why one operator: in eager mode every top-level operator costs a few microseconds of host time, and on a GPU the
[PART] path's ~70 small operators per layer each do less work than that (issue #13). As one registered operator it
is one dispatch. Where Triton is installed it is a ``torch.library.triton_op``: on CUDA with ``use_triton_kernels``
it runs the fused kernels of ``triton_part_rows.py`` (one launch forward, one backward), everywhere else this
module's PyTorch code (``part_rows_only`` and the merge: one product of the [PART] queries with the patch keys for
both the assignment and the attention); ``torch.compile`` traces into it (the kernels through ``wrap_triton``, no
graph break). Without Triton it is a plain ``custom_op`` with the same code. The layer calls the plain PyTorch path
(``assign_patches`` + ``part_rows_reference``, the tests' reference) instead when exporting (ONNX, ``torch.export``,
tracing), and under ``torch.compile`` on CUDA without the kernels, where inductor fuses that path itself. At
inference without the kernels it calls ``part_rows_only`` directly and writes the rows over its attention output in
place. On a CPU, ``part_rows_only`` and the backward hand float32 q, k, v with the paper's assignment to C functions
(``cpu_part_rows.py``) where a compiler could build them, and eager CPU training calls this module's code through a
plain ``autograd.Function`` (``part_rows_autograd``), whose wrapper costs less than the registered operator's.
"""
from contextlib import nullcontext
from typing import List, Optional, Tuple

import torch

from .cpu_part_rows import applies as cpu_function_applies, part_rows as cpu_function_rows
from .cpu_part_rows import backward_applies as cpu_function_backward_applies
from .cpu_part_rows import part_rows_backward as cpu_function_backward
from .sinkhorn import PartGroupLayout, nearest_assign, sinkhorn_assign_grouped
from .triton_assign import sinkhorn_assign_cosine_triton, triton, triton_available
from .triton_part_rows import part_rows_backward_triton, part_rows_forward_triton

__all__ = ['assign_patches', 'round_scores', 'similarity', 'part_key_mask', 'part_rows_reference', 'part_rows',
           'part_rows_only', 'part_rows_backward', 'autocast_off', 'triton_kernels_on']


def kernel_can_assign(nearest: bool, cosine: bool, epsilon: float) -> bool:
    """Whether the Triton kernels implement this assignment: Sinkhorn on cosine scores with ε >= 0.05 (where the
    exp-domain iterations are exact, see sinkhorn.py)."""
    return not nearest and cosine and epsilon >= 0.05


def assign_patches(q_parts: torch.Tensor, k_patches: torch.Tensor, layout: PartGroupLayout,
                   group_size_of_part: torch.Tensor, nearest: bool, cosine: bool, epsilon: float, iters: int,
                   fused: bool = True, traceable: bool = False) -> torch.Tensor:
    """Hard patch-to-part assignment per head, (B, H, P, d), (B, H, N, d) -> (B, H, P, N) bool: Sinkhorn-Knopp
    (or nearest part) on cosine (or dot) scores, in float32 with autocast off, without gradient.

    ``fused``: on CUDA, one Triton kernel where it applies; ``traceable``: launched so that torch.compile can trace
    it (inside the operator); otherwise compiled code takes the PyTorch path."""
    with torch.no_grad():
        if (fused and kernel_can_assign(nearest, cosine, epsilon) and triton_available(q_parts)
                and (traceable or not torch.compiler.is_compiling())):
            # one kernel instead of ~25 launch-bound ones (eager GPU)
            return sinkhorn_assign_cosine_triton(q_parts, k_patches, layout.part_group, group_size_of_part,
                                                 len(layout.sizes), epsilon, iters, traceable=traceable)
        with autocast_off(q_parts.device.type):
            q, k = q_parts.float(), k_patches.float()
            if nearest:
                return round_scores(similarity(q, k, 1.0, cosine), layout, nearest, iters)
            if layout.gather_index is not None:
                # pad the few queries into the (G, P_max) layout rather than the larger score matrix
                q = q.index_select(-2, layout.gather_index)
            # cosine scores are bounded, where the cheaper exp-domain iterations are exact (see sinkhorn.py)
            return round_scores(similarity(q, k, epsilon, cosine), layout, nearest, iters,
                                log_domain=not cosine or epsilon < 0.05, in_slot_order=True)


def round_scores(scores: torch.Tensor, layout: PartGroupLayout, nearest: bool, iters: int, log_domain: bool = True,
                 in_slot_order: bool = False) -> torch.Tensor:
    """Hard assignment (..., P, N) bool from float32 scores / ε (..., P, N): each patch's nearest part, or the
    Sinkhorn-Knopp plan rounded, per group. ``in_slot_order``: the score rows are already in the layout's padded
    (G, P_max) slot order."""
    if nearest:
        return nearest_assign(scores, layout)
    if layout.gather_index is not None and not in_slot_order:
        scores = scores.index_select(-2, layout.gather_index)
    grouped = scores.view(*scores.shape[:-2], *layout.slot_group_size.shape, scores.shape[-1])
    return sinkhorn_assign_grouped(grouped, layout, iters, log_domain=log_domain)


def similarity(q: torch.Tensor, k: torch.Tensor, epsilon: float, cosine: bool) -> torch.Tensor:
    """Similarities / ε between queries (..., P, d) and keys (..., N, d) -> (..., P, N), in q's dtype."""
    if not cosine:
        return (q / epsilon) @ k.transpose(-2, -1)
    # normalise the few queries (1/ε folded in) before the matmul and divide the small product by the key norms
    # after it: cheaper than normalising all N keys
    q = q / (q.norm(dim=-1, keepdim=True).clamp(min=1e-12) * epsilon)
    return (q @ k.transpose(-2, -1)) / k.norm(dim=-1).clamp(min=1e-12).unsqueeze(-2)


def part_key_mask(assigned: torch.Tensor, self_key_always: bool) -> torch.Tensor:
    """Keys each [PART] query may attend to: (B, H, P, N) assignment -> (B, H, P, L) bool over the sequence: its
    patches, and its own key when ``self_key_always`` or when it has no patch (never CLS, never another part)."""
    b, h, p, _ = assigned.shape
    if self_key_always:
        self_key = torch.ones(b, h, p, dtype=torch.bool, device=assigned.device)
    else:
        self_key = ~assigned.any(dim=-1)
    cls_key = torch.zeros(b, h, p, 1, dtype=torch.bool, device=assigned.device)
    return torch.cat([cls_key, torch.diag_embed(self_key), assigned], dim=-1)


def _part_probs(q_parts: torch.Tensor, k: torch.Tensor, keys: torch.Tensor, scale: float,
                matmul=torch.matmul) -> torch.Tensor:
    # an explicit small softmax (on CPU, fused attention with a boolean mask was several times slower for 5 rows)
    logits = matmul(q_parts * scale, k.transpose(-2, -1))
    return logits.masked_fill(~keys, float('-inf')).softmax(dim=-1)


def part_rows_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, assigned: torch.Tensor,
                        self_key_always: bool, scale: float, dropout=None) -> torch.Tensor:
    """The [PART] rows' attention output (B, H, P, d) for a given assignment, in plain differentiable PyTorch (the
    export path, and what ``part_rows`` computes)."""
    p = assigned.shape[-2]
    probs = _part_probs(q[:, :, 1:1 + p], k, part_key_mask(assigned, self_key_always), scale)
    return (dropout(probs) if dropout is not None else probs) @ v


# the fused Triton kernels (triton_part_rows.py) as aaformer::part_rows' CUDA implementation. Off until they have been
# run and checked on a GPU (issue #13); until then CUDA runs the PyTorch implementation like every other device
use_triton_kernels = False


def triton_kernels_on(tensor: torch.Tensor) -> bool:
    """Whether ``aaformer::part_rows`` runs the fused Triton kernels for tensors on ``tensor``'s device."""
    return use_triton_kernels and triton_available(tensor)


def _operator(name: str):
    """Registers ``fn`` as the operator ``name``: a ``triton_op`` where Triton is installed (torch.compile traces
    into it and sees its kernels), else a ``custom_op``; ``fn`` is also its fake implementation either way (the
    PyTorch code runs on fake tensors; the kernels are launched through ``wrap_triton``)."""
    def register(fn):
        if triton is not None and hasattr(torch.library, 'triton_op'):
            return torch.library.triton_op(name, mutates_args=())(fn)
        op = torch.library.custom_op(name, mutates_args=())(fn)
        op.register_fake(fn)
        return op
    return register


@_operator('aaformer::part_rows')
def part_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_out: torch.Tensor,
              assigned: Optional[torch.Tensor], layout: List[torch.Tensor], part_groups: List[int], nearest: bool,
              cosine: bool, epsilon: float, iters: int, self_key_always: bool, scale: float, fused: bool
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """q, k, v (B, H, L, d) of the layer, ``attn_out`` (B, L, H, d) its plain attention output; ``assigned``
    (B, H, P, N) bool, or None to assign here (Sinkhorn, or nearest part); ``layout``: the layer's part-group tensors
    (gather index, slot group sizes, group of each part, slot of each part, group size of each part).

    Returns ``attn_out`` with rows 1..P replaced by the [PART] rows (a new (B, L, H, d) tensor) and the assignment.
    """
    if not triton_kernels_on(q):
        return _part_rows_pytorch(q, k, v, attn_out, assigned, layout, part_groups, nearest, cosine, epsilon, iters,
                                  self_key_always, scale, fused)
    if assigned is None and fused and kernel_can_assign(nearest, cosine, epsilon):
        # the forward kernel assigns first: one launch for the whole [PART] path
        assign = (layout[2], layout[4], len(part_groups), epsilon, iters)
        return part_rows_forward_triton(q, k, v, attn_out, None, self_key_always, scale, assign, traceable=True)
    assigned = _assignment(q, k, assigned, layout, part_groups, nearest, cosine, epsilon, iters, fused)
    return part_rows_forward_triton(q, k, v, attn_out, assigned, self_key_always, scale, traceable=True)


def part_rows_only(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, assigned: Optional[torch.Tensor],
                   layout: List[torch.Tensor], part_groups: List[int], nearest: bool, cosine: bool, epsilon: float,
                   iters: int, self_key_always: bool, scale: float, fused: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The assignment (unless given) and the [PART] rows alone, a (B, P, H, d) view: ``part_rows``' PyTorch code
    without the merge. At inference without Triton the layer calls it directly and writes the rows over its own
    attention output in place (``part_rows`` must return a new tensor: an operator's outputs never alias its inputs;
    on a CPU that copy of the whole output was a third of the operator's time, issue #26) - a plain function, whose
    registration's dispatch cost ~50 us per layer on a CPU. q, k, v may be the permuted views of the layer's qkv
    output.

    ONE product of the [PART] queries with the patch keys serves both halves: the assignment's similarities and the
    rows' attention logits are the same dot products q_p . k_n, scaled per row and column (cosine) or by 1/eps for
    the one, by the attention scale and restricted to the assigned patches for the other. The plain path
    (``assign_patches`` + ``part_rows_reference``, the tests' reference) computes them twice, and its logits over the
    whole sequence only to mask all but the patches (and the part's own key) away.
    """
    p = sum(part_groups)
    if cpu_function_applies(q, k, v, assigned, nearest, cosine, epsilon, iters, p):
        # on a CPU, the same work as one C function (issue #26)
        return cpu_function_rows(q, k, v, part_groups, epsilon, iters, self_key_always, scale)
    q_parts, k_patches, v_patches = q[:, :, 1:1 + p], k[:, :, 1 + p:], v[:, :, 1 + p:]
    wide = torch.promote_types(q.dtype, torch.float32)
    with autocast_off(q.device.type):
        # float32 products (or wider): what the assignment reads (as the plain path's); the logits need no less
        products = _matmul(q_parts.to(wide), k_patches.to(wide).transpose(-2, -1))  # (B, H, P, N)
        if assigned is None and not (fused and kernel_can_assign(nearest, cosine, epsilon) and triton_available(q)):
            assigned = _assign_from_products(products, q_parts, k_patches, PartGroupLayout.from_tensors(
                part_groups, *layout[:4]), nearest, cosine, epsilon, iters)
        else:  # the given assignment (copied), or the fused Triton kernel's
            assigned = _assignment(q, k, assigned, layout, part_groups, nearest, cosine, epsilon, iters, fused)
        logits = torch.where(assigned, products * scale, float('-inf'))
        if self_key_always:
            own = (q_parts.to(wide) * k[:, :, 1:1 + p].to(wide)).sum(dim=-1, keepdim=True) * scale
            probs = torch.cat([own, logits], dim=-1).softmax(dim=-1)
            rows = _matmul(probs[..., 1:].to(v.dtype), v_patches) + probs[..., :1].to(v.dtype) * v[:, :, 1:1 + p]
        else:
            # a part with no patch attends to its own key alone: its row is its own value (its all -inf logits
            # give NaN probabilities, replaced here)
            rows = _matmul(logits.softmax(dim=-1).to(v.dtype), v_patches)
            empty = assigned.view(torch.uint8).amax(dim=-1, keepdim=True) == 0
            rows = torch.where(empty, v[:, :, 1:1 + p], rows)
    return rows.transpose(1, 2), assigned


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for (B, H, ., .) operands. On a CPU, when ``b`` is a view whose (B, H) dims do not flatten into one
    batch dim (the permuted q, k, v views of a layer's qkv output), ``torch.matmul`` would copy it whole first - a
    1.5 MB gather per product at batch 4 - so one batched product per image instead (each image's heads are evenly
    strided). Not on other devices (a launch per image), nor under torch.compile, which plans its own layouts."""
    if (b.device.type != 'cpu' or b.stride(0) == b.stride(1) * b.shape[1] or b.shape[0] <= 1
            or torch.compiler.is_compiling()):
        return a @ b
    return torch.stack([torch.bmm(a_image, b_image) for a_image, b_image in zip(a, b)])


def _assign_from_products(products, q_parts, k_patches, layout, nearest, cosine, epsilon, iters) -> torch.Tensor:
    """``assign_patches`` from the float32 products q_p . k_n already computed: the same similarities (cosine:
    divided by both norms) and the same Sinkhorn-Knopp (or nearest part) rounding."""
    with torch.no_grad():
        row_scale = 1.0 if nearest else 1.0 / epsilon
        if cosine:
            row_norms = q_parts.float().norm(dim=-1, keepdim=True).clamp(min=1e-12)
            column_norms = k_patches.float().norm(dim=-1).clamp(min=1e-12).unsqueeze(-2)
            scores = products * (row_scale / row_norms) / column_norms
        else:
            scores = products * row_scale
        return round_scores(scores, layout, nearest, iters, log_domain=not cosine or epsilon < 0.05)


def _part_rows_pytorch(q, k, v, attn_out, assigned, layout, part_groups, nearest, cosine, epsilon, iters,
                       self_key_always, scale, fused):
    rows, assigned = part_rows_only(q, k, v, assigned, layout, part_groups, nearest, cosine, epsilon, iters,
                                    self_key_always, scale, fused)
    merged = torch.empty(attn_out.shape, dtype=attn_out.dtype, device=attn_out.device)
    merged.copy_(attn_out)
    merged[:, 1:1 + rows.shape[1]] = rows
    return merged, assigned


def _assignment(q, k, assigned, layout, part_groups, nearest, cosine, epsilon, iters, fused) -> torch.Tensor:
    """The given assignment (copied: an operator's outputs never alias its inputs), or a new one."""
    if assigned is not None:
        return assigned.clone()
    p = sum(part_groups)
    group_layout = PartGroupLayout.from_tensors(part_groups, *layout[:4])
    return assign_patches(q[:, :, 1:1 + p], k[:, :, 1 + p:], group_layout, layout[4], nearest, cosine, epsilon,
                          iters, fused, traceable=True)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v = inputs[:3]
    ctx.self_key_always, ctx.scale = inputs[11], inputs[12]
    ctx.save_for_backward(q, k, v, output[1])


def _backward(ctx, grad_merged: torch.Tensor, _grad_assigned) -> Tuple[Optional[torch.Tensor], ...]:
    q, k, v, assigned = ctx.saved_tensors
    grads = part_rows_backward(grad_merged, q, k, v, assigned, ctx.self_key_always, ctx.scale)
    return tuple(grads) + (None, [None] * 5) + (None,) * 8


@_operator('aaformer::part_rows_backward')
def part_rows_backward(grad_merged: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       assigned: torch.Tensor, self_key_always: bool, scale: float
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``part_rows``' backward as one operator: softmax attention's backward for the P rows (probabilities
    recomputed from q, k and the assignment), the plain rows' gradient passed through to ``attn_out``. Returns the
    gradients of q, k, v and attn_out."""
    if triton_kernels_on(q):
        return part_rows_backward_triton(grad_merged, q, k, v, assigned, self_key_always, scale, traceable=True)
    return _part_rows_backward_pytorch(grad_merged, q, k, v, assigned, self_key_always, scale)


def _part_rows_backward_pytorch(grad_merged, q, k, v, assigned, self_key_always, scale):
    p = assigned.shape[-2]
    if cpu_function_backward_applies(grad_merged, q, k, v, assigned):
        # on a CPU, the same as one C function (issue #26)
        grad_q, grad_k, grad_v = cpu_function_backward(grad_merged, q, k, v, assigned, self_key_always, scale)
    else:
        grad_q, grad_k, grad_v = _qkv_gradients(grad_merged, q, k, v, assigned, self_key_always, scale)
    # the plain rows' gradient goes through to attn_out; the P rows the operator replaced get none
    grad_attn_out = grad_merged.clone()
    grad_attn_out[:, 1:1 + p] = 0
    return grad_q, grad_k, grad_v, grad_attn_out


def _qkv_gradients(grad_merged, q, k, v, assigned, self_key_always, scale):
    """Softmax attention's backward for the P rows in PyTorch, probabilities recomputed from q, k and the assignment:
    the gradients of q, k, v."""
    p = assigned.shape[-2]
    q_parts = q[:, :, 1:1 + p]
    # q, k, v may be the permuted views of the layer's qkv output (on a CPU): _matmul multiplies them as they are
    probs = _part_probs(q_parts, k, part_key_mask(assigned, self_key_always), scale, _matmul)
    grad_rows = grad_merged[:, 1:1 + p].transpose(1, 2).to(probs.dtype)  # (B, H, P, d)
    grad_v = probs.transpose(-2, -1) @ grad_rows
    grad_probs = _matmul(grad_rows, v.transpose(-2, -1))
    # the attention scale applied to these few rows rather than to the (B, H, L, d) products
    grad_logits = probs * (grad_probs - (grad_probs * probs).sum(dim=-1, keepdim=True)) * scale
    grad_q = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    grad_q[:, :, 1:1 + p] = _matmul(grad_logits, k)
    grad_k = _matmul(grad_logits.transpose(-2, -1), q_parts)
    return grad_q, grad_k, grad_v


part_rows.register_autograd(_backward, setup_context=_setup_context)


class _EagerCpuPartRows(torch.autograd.Function):
    """``part_rows`` with the same forward and backward code, as a plain ``autograd.Function``: in eager mode on a CPU
    the registered operator's autograd wrapper (its argument checks and pytree handling, in Python) cost ~0.5 ms a
    layer per training step, more than its products (issue #26). Only where nothing needs the registration."""

    @staticmethod
    def forward(ctx, q, k, v, attn_out, assigned, layout, part_groups, nearest, cosine, epsilon, iters,
                self_key_always, scale, fused):
        merged, assigned = _part_rows_pytorch(q, k, v, attn_out, assigned, layout, part_groups, nearest, cosine,
                                              epsilon, iters, self_key_always, scale, fused)
        ctx.self_key_always, ctx.scale = self_key_always, scale
        ctx.save_for_backward(q, k, v, assigned)
        ctx.mark_non_differentiable(assigned)
        return merged, assigned

    @staticmethod
    def backward(ctx, grad_merged, _grad_assigned):
        q, k, v, assigned = ctx.saved_tensors
        grads = _part_rows_backward_pytorch(grad_merged, q, k, v, assigned, ctx.self_key_always, ctx.scale)
        return tuple(grads) + (None,) * 10


def part_rows_autograd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_out: torch.Tensor,
                       assigned: Optional[torch.Tensor], *arguments) -> Tuple[torch.Tensor, torch.Tensor]:
    """``part_rows`` as the layer calls it when gradients are recorded: the registered operator, except in eager mode
    on a CPU without the Triton kernels (``_EagerCpuPartRows``: the same code, a cheaper wrapper)."""
    if (q.device.type == 'cpu' and not triton_kernels_on(q) and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()):
        return _EagerCpuPartRows.apply(q, k, v, attn_out, assigned, *arguments)
    return part_rows(q, k, v, attn_out, assigned, *arguments)


_AUTOCAST_DEVICES = frozenset({'cpu', 'cuda', 'xpu', 'mps', 'hpu', 'mtia'})


def autocast_off(device_type: str):
    """A context with autocast disabled on ``device_type``."""
    # a plain set lookup rather than torch.amp.is_autocast_available, which torch.compile cannot trace
    if device_type in _AUTOCAST_DEVICES:
        return torch.autocast(device_type, enabled=False)
    return nullcontext()  # e.g. the meta device: nothing to switch off
