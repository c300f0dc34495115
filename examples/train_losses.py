"""The training objectives of examples/train.py: the batch-hard triplet loss (Eq. 7) and the AAformer objective
(Eq. 8 = identity loss, Eq. 6, + triplet loss). The identity loss itself lives in the package
(``aaformer_hf.losses.identity_loss``): the models compute it when given ``labels``."""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from aaformer_hf.losses import identity_loss

__all__ = ['batch_hard_triplet_loss', 'AAformerLoss']


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: Optional[float] = 0.3
                            ) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017): every anchor with its farthest positive and closest negative.

    Euclidean distances (not squared). Identities may have unequal numbers of samples in the batch: positives and
    negatives are masks, never a reshape to (P, K). An anchor with no other sample of its identity, or with no
    negative, forms no triplet and is left out of the mean (the loss is 0 if no anchor forms one).

    Args:
        features: (B, D) features (AAformer: the CLS feature, or the concatenated [PART] features, before the BNNeck).
        labels: (B,) identities.
        margin: α of Eq. 7 (0.3), the hinge [d_p - d_n + α]_+; ``None`` gives the soft-margin version
            log(1 + exp(d_p - d_n)) that TransReID's ViT configs use.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f'features must be (B, D) and labels (B,), got {tuple(features.shape)} and '
                         f'{tuple(labels.shape)}')
    features = features.float()
    squared = features.pow(2).sum(dim=1)
    # clamp before sqrt: its gradient at 0 is infinite (the diagonal, duplicate images)
    dist = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2 * features @ features.t()).clamp(min=1e-12).sqrt()
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    negative = ~same
    hardest_positive = torch.where(positive, dist, float('-inf')).amax(dim=1)
    hardest_negative = torch.where(negative, dist, float('inf')).amin(dim=1)
    valid = positive.any(dim=1) & negative.any(dim=1)
    if not valid.any():
        return dist.sum() * 0  # keeps the graph (and DDP) intact
    gap = hardest_positive[valid] - hardest_negative[valid]
    losses = F.softplus(gap) if margin is None else F.relu(gap + margin)
    return losses.mean()


class AAformerLoss(nn.Module):
    """The AAformer objective, Eq. 8: L = w_id * L_cls (Eq. 6) + w_tri * L_tri (Eq. 7).

    L_tri = 1/2 (triplet on the CLS feature + triplet on the concatenated [PART] features), each term mining its own
    hardest positive and negative. Features are taken before the BNNeck, logits after it (BoT, which the paper's
    re-ID heads follow). With no [PART]s (the ViT-baseline) L_tri is the CLS term alone.
    The weights default to 1 (Eq. 8 adds the two losses); the paper states no other values.
    """

    def __init__(self, label_smoothing: float = 0.1, margin: Optional[float] = 0.3, id_weight: float = 1.0,
                 triplet_weight: float = 1.0) -> None:
        super().__init__()
        self.label_smoothing, self.margin = label_smoothing, margin
        self.id_weight, self.triplet_weight = id_weight, triplet_weight

    def forward(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """logits (B, 1+P, C), features (B, 1+P, D), labels (B,) -> dict of ``loss``, ``id_loss``, ``triplet_loss``."""
        id_loss = identity_loss(logits, labels, self.label_smoothing)
        terms = [batch_hard_triplet_loss(features[:, 0], labels, self.margin)]
        if features.shape[1] > 1:
            terms.append(batch_hard_triplet_loss(features[:, 1:].flatten(1), labels, self.margin))
        triplet = torch.stack(terms).mean()
        return {'loss': self.id_weight * id_loss + self.triplet_weight * triplet, 'id_loss': id_loss,
                'triplet_loss': triplet}
