from .auto_alignment import ASSIGNMENT_MODES, AssignmentMode, AssignmentScore, MultiHeadAutoAlignment, PartSelfKey
from .reid_head import BNNeck, TokenClassifiers
from .sinkhorn import (
    PartGroupLayout, nearest_assign, sinkhorn_assign, sinkhorn_assign_grouped, sinkhorn_plan, stripe_assignment,
)
from .patch_embed import OverlappingPatchEmbed
