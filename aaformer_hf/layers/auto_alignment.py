"""Multi-head Auto-Alignment (MAA), the attention layer of AAformer (Zhu et al., TNNLS 2023, §III-B).

In every head, the [PART] queries are prototypes and the patch keys are items: patches are assigned to parts
(Sinkhorn-Knopp optimal transport by default, Eq. 3-5), and each [PART] query attends only to the keys/values of its
own patches (Eq. 2). CLS and patch queries use ordinary self-attention (Eq. 1).

Speed: CLS and patch rows go through one unmasked fused ``scaled_dot_product_attention`` over the whole sequence,
exactly like a plain ViT; only the few [PART] rows take a second, small masked attention. A dense boolean mask over
all rows would push the whole layer off the fused kernels.
"""
import dataclasses
from typing import Any, Dict, Literal, Optional, Sequence, Tuple, get_origin

import torch
import torch.nn as nn
import torch.nn.functional as F

from .part_rows import (assign_patches, autocast_off, part_key_mask, part_rows_autograd, part_rows_only,
                        part_rows_reference, round_scores, similarity, triton_kernels_on)
from .choices import check_choice
from .sinkhorn import PartGroupLayout, stripe_assignment

__all__ = ['MultiHeadAutoAlignment', 'AssignmentSettings', 'AssignmentMode', 'AssignmentScore', 'PartSelfKey']

AssignmentMode = Literal['sinkhorn', 'nearest', 'stripes', 'given', 'global']
AssignmentScore = Literal['cosine', 'dot']
PartSelfKey = Literal['if_empty', 'always']


# torch < 2.7 has no is_exporting: there any dynamo trace counts as one (the plain path, same outputs, always exports)
_is_exporting = getattr(torch.compiler, 'is_exporting', torch.compiler.is_compiling)


@dataclasses.dataclass(frozen=True)
class AssignmentSettings:
    """How the patches are assigned to the [PART]s: the one table of these settings. ``MultiHeadAutoAlignment`` and
    the timm ``AAformer`` take them as keyword arguments, ``AAformerConfig`` has one field each (the tests check its
    fields and defaults against this table); the allowed names of each setting are its ``Literal`` type.

    Attributes:
        assignment: 'sinkhorn' (AAformer), 'nearest' (argmax without transport, Table V), 'stripes' (fixed
            horizontal stripes per group, Table IV's PCB/MGN partitions), 'given' (the caller's masks, e.g. from
            human parsing: Table IV's SPReID row; ``forward(part_masks=...)``) or 'global' (no assignment: the
            [PART]s attend to the whole sequence like extra CLS tokens, Table IV's "6*CLS" with 5 [PART]s).
        assignment_score: Similarity the assignment uses. 'cosine' (L2-normalised [PART] queries and patch keys, as
            in SwAV) or 'dot' (raw Q·K^T as written in Eq. 5). The paper does not state a normalisation.
        sinkhorn_epsilon: ε of Eq. 3 (0.05 in the paper).
        sinkhorn_iters: Sinkhorn-Knopp iterations (3 in the paper).
        part_self_key: Which non-patch key a [PART] query may see. 'if_empty' (default): only when no patch was
            assigned to it, so Eq. 2 holds exactly whenever Φ_p is non-empty and an empty Φ_p never gives a softmax
            over nothing; 'always': the part always also attends to its own key. The paper does not state a rule.
        patches_see_parts: Whether CLS and patch queries may attend to [PART] keys. The paper says they use "the
            original self-attention (Eq. 1)" over the sequence, which then contains the [PART]s, so the default is
            True; the text does not settle it.
        fp32_assignment_inputs: Under autocast, recompute the [PART] queries and patch keys the assignment reads in
            float32 (an extra projection of the keys per layer) instead of taking the reduced-precision ones the
            attention uses. The Sinkhorn itself always runs in float32. Default False; the paper states no
            precision. No effect without autocast.
        shared_assignment: BEYOND THE PAPER (off by default; the paper assigns "in parallel in different attention
            heads"): one assignment for all heads, from the heads' similarity scores averaged, so every head's
            [PART] row gathers the same patches. For 'sinkhorn' and 'nearest'.
    """
    assignment: AssignmentMode = 'sinkhorn'
    assignment_score: AssignmentScore = 'cosine'
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 3
    part_self_key: PartSelfKey = 'if_empty'
    patches_see_parts: bool = True
    fp32_assignment_inputs: bool = False
    shared_assignment: bool = False

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if get_origin(field.type) is Literal:
                check_choice(field.name, getattr(self, field.name), field.type)

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, owner: str, kwargs: Dict[str, Any]) -> 'AssignmentSettings':
        """The settings among ``owner``'s keyword arguments; any other keyword is refused, naming it."""
        unknown = sorted(set(kwargs) - set(cls.names()))
        if unknown:
            raise TypeError(f'{owner} got unexpected keyword arguments {unknown} (besides its own arguments it takes '
                            f'the assignment settings {", ".join(cls.names())})')
        return cls(**kwargs)


class MultiHeadAutoAlignment(nn.Module):
    """Self-attention over [CLS, PART_1..P, patches] where [PART] rows attend only to their assigned patches.

    With no parts (``part_groups=()``) this is exactly timm's ViT ``Attention`` (same parameters, same output).

    Args:
        dim: Token width D.
        num_heads: Attention heads; assignment runs separately in every head (the "multi-head" of MAA).
        qkv_bias: Bias on the qkv projection.
        attn_drop: Dropout on attention probabilities.
        proj_drop: Dropout after the output projection.
        part_groups: Parts per granularity group, e.g. (2, 3); each group partitions all patches independently.
        grid_size: Patch grid (rows, cols), used by the fixed-stripe assignment.
        **settings: how patches are assigned to the [PART]s: the fields of ``AssignmentSettings``.
    """

    # on CUDA with Triton, the Sinkhorn assignment runs as one fused kernel (triton_assign.py); set False for the
    # PyTorch path everywhere
    fused_assignment: bool = True
    # the [PART] rows as one registered operator (part_rows.py; see _part_rows_as_one_op); False: plain PyTorch
    part_rows_op: bool = True
    # at inference, the operator's rows written over the attention output in place (see _rows_in_place); False:
    # merged into a copy of it, as in training
    rows_in_place: bool = True

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            part_groups: Sequence[int] = (),
            grid_size: Tuple[int, int] = (16, 8),
            device=None,
            dtype=None,
            **settings: Any,
    ) -> None:
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        settings = AssignmentSettings.from_kwargs(type(self).__name__, settings)
        if dim % num_heads != 0:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        num_patches = grid_size[0] * grid_size[1]
        if any(int(g) < 1 or int(g) > num_patches for g in part_groups):
            raise ValueError(f'part_groups {tuple(part_groups)}: every group needs between 1 and {num_patches} parts '
                             f'(the {grid_size[0]}x{grid_size[1]} patch grid); () has no [PART]s')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.part_groups = tuple(int(g) for g in part_groups)
        self.num_parts = sum(self.part_groups)
        self.grid_size = tuple(grid_size)
        for name, value in dataclasses.asdict(settings).items():  # plain attributes: read on every forward
            setattr(self, name, value)

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self._init_part_buffers(device)

    @property
    def settings(self) -> AssignmentSettings:
        return AssignmentSettings(**{name: getattr(self, name) for name in AssignmentSettings.names()})

    def _init_part_buffers(self, device=None) -> None:
        """Integer bookkeeping for the part groups; non-persistent (derived from the config, not weights)."""
        if not self.num_parts:
            return
        names = ('group_gather_index', 'group_slot_size', 'group_of_part', 'slot_of_part')
        for name, tensor in zip(names, PartGroupLayout.tensors(self.part_groups, device=device)):
            self.register_buffer(name, tensor, persistent=False)
        self.register_buffer(
            'group_size_of_part', self.group_slot_size[:, 0].index_select(0, self.group_of_part), persistent=False)
        stripes = stripe_assignment(self.part_groups, self.grid_size, device=device)
        self.register_buffer('stripe_mask', stripes, persistent=False)

    def init_non_persistent_buffers(self) -> None:
        """Recompute derived buffers, e.g. after the module was built on the meta device."""
        device = self.qkv.weight.device
        self._init_part_buffers(device)

    def _layout(self) -> PartGroupLayout:
        return PartGroupLayout.from_tensors(
            self.part_groups, self.group_gather_index, self.group_slot_size, self.group_of_part, self.slot_of_part)

    @torch.no_grad()
    def assign(self, q_parts: torch.Tensor, k_patches: torch.Tensor) -> torch.Tensor:
        """Hard assignment of patches to parts per head: (B, H, P, d), (B, H, N, d) -> (B, H, P, N) bool.

        Runs without gradient, in float32 with autocast off, whatever the model's dtype.
        """
        if self.assignment == 'stripes':
            b, h, p, _ = q_parts.shape
            return self.stripe_mask.expand(b, h, p, k_patches.shape[-2])
        if self.shared_assignment:
            return self._shared_assign(q_parts, k_patches)
        return assign_patches(q_parts, k_patches, self._layout(), self.group_size_of_part, self.assignment == 'nearest',
                              self.assignment_score == 'cosine', self.sinkhorn_epsilon, self.sinkhorn_iters,
                              self.fused_assignment)

    def _shared_assign(self, q_parts: torch.Tensor, k_patches: torch.Tensor) -> torch.Tensor:
        """``shared_assignment``: one (B, P, N) assignment from the head-averaged scores, the same in every head."""
        b, h, p, _ = q_parts.shape
        with autocast_off(q_parts.device.type):
            q, k = q_parts.float(), k_patches.float()
            epsilon = 1.0 if self.assignment == 'nearest' else self.sinkhorn_epsilon
            # (B, 1, P, N): the heads' scores averaged
            scores = similarity(q, k, epsilon, self.assignment_score == 'cosine').mean(dim=1, keepdim=True)
            assigned = round_scores(scores, self._layout(), self.assignment == 'nearest', self.sinkhorn_iters)
        return assigned.expand(b, h, p, k_patches.shape[-2])

    def part_key_mask(self, assigned: torch.Tensor) -> torch.Tensor:
        """Keys each [PART] query may attend to: (B, H, P, N) assignment -> (B, H, P, L) bool over the sequence."""
        return part_key_mask(assigned, self.part_self_key == 'always')

    def _fp32_part_queries_and_patch_keys(self, x: torch.Tensor, p: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The [PART] queries (B, H, P, d) and patch keys (B, H, N, d), projected in float32 with autocast off."""
        dim = self.num_heads * self.head_dim
        weight = self.qkv.weight.float()
        bias = self.qkv.bias.float() if self.qkv.bias is not None else None
        with autocast_off(x.device.type):
            def project(tokens, rows):
                out = F.linear(tokens.float(), weight[rows], None if bias is None else bias[rows])
                return out.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
            return project(x[:, 1:1 + p], slice(0, dim)), project(x[:, 1 + p:], slice(dim, 2 * dim))

    def given_assignment(self, part_masks: Optional[torch.Tensor], b: int, n: int) -> torch.Tensor:
        """The caller's (B, P, N) patch-to-part masks as the same assignment in every head (B, H, P, N)."""
        if part_masks is None:
            raise ValueError("assignment='given' needs part_masks (B, P, N) in every forward")
        if part_masks.shape != (b, self.num_parts, n) or part_masks.dtype != torch.bool:
            raise ValueError(f'part_masks must be a bool tensor of shape (batch, parts, patches) = '
                             f'({b}, {self.num_parts}, {n}), got {part_masks.dtype} {tuple(part_masks.shape)}')
        return part_masks.unsqueeze(1).expand(b, self.num_heads, self.num_parts, n)

    def forward(
            self,
            x: torch.Tensor,
            output_attentions: bool = False,
            part_masks: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Returns (output (B, L, D), attention probabilities (B, H, L, L) if asked, assignment (B, H, P, N) or None).

        ``part_masks`` (B, P, N) bool: which patches each [PART] sees, for ``assignment='given'`` only.
        """
        b, seq_len, dim = x.shape
        if part_masks is not None and self.assignment != 'given':
            raise ValueError(f"part_masks are only read with assignment='given' (this layer: {self.assignment!r})")
        # 'global' [PART]s are extra CLS tokens: the one fused attention already computes their rows
        p = self.num_parts if self.assignment != 'global' else 0
        drop = self.attn_drop.p if self.training else 0.
        one_op = bool(p) and not output_attentions and self._part_rows_as_one_op(x, drop)
        in_place = one_op and self._rows_in_place(x)
        qkv = self.qkv(x).reshape(b, seq_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if p and not in_place and not (one_op and (triton_kernels_on(x) or x.device.type == 'cpu')):
            # one copy into (3, B, H, L, d) where the [PART] products would otherwise copy k and v each: the plain
            # path, and the training operator on a GPU without its kernels. The Triton kernels read the permuted views
            # as they are, and so does the operator on a CPU (image by image, part_rows._matmul), which keeps q, k, v
            # as a ViT does: CPU fused attention then writes its output in (B, L, H, d) order, which the in-place
            # [PART] rows and the final reshape keep without a copy
            qkv = qkv.contiguous()
        q, k, v = qkv.unbind(0)

        assigned = None
        if p:
            if self.assignment == 'given':
                assigned = self.given_assignment(part_masks, b, seq_len - 1 - p)
            elif self.fp32_assignment_inputs and torch.is_autocast_enabled(x.device.type):
                assigned = self.assign(*self._fp32_part_queries_and_patch_keys(x, p))
            elif not one_op or self.assignment == 'stripes' or self.shared_assignment:
                assigned = self.assign(q[:, :, 1:1 + p], k[:, :, 1 + p:])
            # else: the one operator assigns (Sinkhorn or nearest, per head)

        if output_attentions:
            out, probs = self._dense_attention(q, k, v, self.part_key_mask(assigned) if p else None)
        else:
            probs = None
            if self.num_parts and not self.patches_see_parts:
                keys = torch.cat([k[:, :, :1], k[:, :, 1 + self.num_parts:]], dim=2)
                values = torch.cat([v[:, :, :1], v[:, :, 1 + self.num_parts:]], dim=2)
                out = F.scaled_dot_product_attention(q, keys, values, dropout_p=drop)
            else:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
            out = out.transpose(1, 2)  # (B, L, H, d)
            if in_place:
                # inference: the [PART] rows written over the plain attention's rows 1..P of this fresh output, in
                # place (nothing reads those rows, no gradient flows), rather than into a copy of the whole output
                rows, assigned = part_rows_only(q, k, v, assigned, *self._operator_arguments())
                out[:, 1:1 + p] = rows
            elif one_op:
                # Eq. 2 (and the assignment): the few [PART] rows, each restricted to its own patches, as one
                # registered operator (part_rows.py)
                out, assigned = part_rows_autograd(q, k, v, out, assigned, *self._operator_arguments())
            elif p:
                part_out = part_rows_reference(q, k, v, assigned, self.part_self_key == 'always', self.scale,
                                               self.attn_drop)
                out = torch.cat([out[:, :1], part_out.transpose(1, 2), out[:, 1 + p:]], dim=1)
        out = out.reshape(b, seq_len, dim)
        out = self.proj_drop(self.proj(out))
        return out, probs, assigned

    def _operator_arguments(self) -> tuple:
        """What the [PART]-row operators take after q, k, v (, the output) and the assignment: the part-group
        tensors, the groups and the assignment settings."""
        return ([self.group_gather_index, self.group_slot_size, self.group_of_part, self.slot_of_part,
                 self.group_size_of_part], list(self.part_groups), self.assignment == 'nearest',
                self.assignment_score == 'cosine', self.sinkhorn_epsilon, self.sinkhorn_iters,
                self.part_self_key == 'always', self.scale, self.fused_assignment)

    def _part_rows_as_one_op(self, x: torch.Tensor, drop: float) -> bool:
        """Whether the [PART] rows run as the registered ``aaformer::part_rows`` operator: not when exporting or
        tracing (the plain PyTorch path exports), not with attention dropout on, and under ``torch.compile`` on CUDA
        only with its Triton kernels on (without them inductor fuses the plain path)."""
        if not self.part_rows_op or drop > 0:
            return False
        if torch.jit.is_tracing() or _is_exporting() or torch.onnx.is_in_onnx_export():
            return False
        return not (x.is_cuda and torch.compiler.is_compiling() and not triton_kernels_on(x))

    def _rows_in_place(self, x: torch.Tensor) -> bool:
        """Whether the [PART] rows go over the attention output in place (``part_rows_only``): when no gradient is
        needed, outside ``torch.compile`` and without the Triton kernels (which merge the rows themselves)."""
        if not self.rows_in_place or triton_kernels_on(x) or torch.compiler.is_compiling():
            return False
        return not (torch.is_grad_enabled() and (x.requires_grad or self.qkv.weight.requires_grad))

    def _dense_attention(self, q, k, v, part_keys: Optional[torch.Tensor]):
        """Explicit attention with one (B, H, L, L) mask; returns probabilities too. Slow path for inspection."""
        logits = (q * self.scale) @ k.transpose(-2, -1)
        p = self.num_parts
        if p:
            b, h, seq_len, _ = logits.shape
            allowed = torch.ones(b, h, seq_len, seq_len, dtype=torch.bool, device=q.device)
            if not self.patches_see_parts:
                allowed[:, :, :, 1:1 + p] = False
            if part_keys is not None:
                allowed[:, :, 1:1 + p] = part_keys
            logits = logits.masked_fill(~allowed, float('-inf'))
        probs = logits.softmax(dim=-1)
        out = self.attn_drop(probs) @ v
        return out.transpose(1, 2), probs
