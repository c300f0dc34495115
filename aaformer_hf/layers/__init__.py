from .auto_alignment import (
    AssignmentMode, AssignmentScore, AssignmentSettings, MultiHeadAutoAlignment, PartSelfKey,
)
from .reid_head import BNNeck, TokenClassifiers
from .sinkhorn import (
    PartGroupLayout, nearest_assign, sinkhorn_assign, sinkhorn_assign_grouped, sinkhorn_plan, stripe_assignment,
)
from .patch_embed import OverlappingPatchEmbed
