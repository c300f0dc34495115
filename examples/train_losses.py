"""The training objectives of examples/train.py.

AAformer: the batch-hard triplet loss (Eq. 7) and its objective (Eq. 8 = identity loss, Eq. 6, + triplet loss). The
identity loss itself lives in the package (``aaformer_hf.reid.losses.identity_loss``): the models compute it when given
``labels``.
CLIP-ReID / π-VL: stage 1's supervised contrastive loss between image and prompt features (CLIP-ReID), π-VL's
pixel-level InfoNCE between patch features and part prompts (Eq. 7), and stage 2's objective (identity + triplet +
image-to-text cross-entropy, CLIP-ReID; + π-VL's alignment MSE, Eq. 11-12).
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from aaformer_hf.reid.losses import identity_loss

__all__ = ['batch_hard_triplet_loss', 'AAformerLoss', 'supcon_loss', 'part_infonce_loss', 'alignment_loss',
           'CLIPReIDLoss']


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

    def forward(self, logits: torch.Tensor, features: Sequence[torch.Tensor], labels: torch.Tensor
                ) -> Dict[str, torch.Tensor]:
        """logits (B, 1+P, C), features: the 1+P (B, D) features (CLS first; the model output's ``features``),
        labels (B,) -> dict of ``loss``, ``id_loss``, ``triplet_loss``."""
        id_loss = identity_loss(logits, labels, self.label_smoothing)
        terms = [batch_hard_triplet_loss(features[0], labels, self.margin)]
        if len(features) > 1:
            terms.append(batch_hard_triplet_loss(torch.cat(tuple(features[1:]), dim=1), labels, self.margin))
        triplet = torch.stack(terms).mean()
        return {'loss': self.id_weight * id_loss + self.triplet_weight * triplet, 'id_loss': id_loss,
                'triplet_loss': triplet}


# ---- CLIP-ReID and π-VL ----

def supcon_loss(anchors: torch.Tensor, contrasts: torch.Tensor, anchor_labels: torch.Tensor,
                contrast_labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """CLIP-ReID's stage-1 contrastive loss (its ``SupConLoss``): each anchor's log-softmax of ``anchor . contrast /
    temperature`` over the other modality's batch, averaged over its positives (same label), then over anchors;
    negated. Features are not normalised and the temperature is 1 in CLIP-ReID. Stage 1 adds both directions,
    ``supcon(image, text) + supcon(text, image)``.

    Args:
        anchors: (A, E); contrasts: (N, E); anchor_labels: (A,); contrast_labels: (N,). Every anchor needs a positive.
    """
    positive = anchor_labels.unsqueeze(1) == contrast_labels.unsqueeze(0)
    if not bool(positive.any(dim=1).all()):
        raise ValueError('supcon_loss: an anchor has no positive (no contrast with its label)')
    log_prob = (anchors.float() @ contrasts.float().t() / temperature).log_softmax(dim=1)
    return -((log_prob * positive).sum(dim=1) / positive.sum(dim=1)).mean()


def part_infonce_loss(pixels: torch.Tensor, pixel_keys: torch.Tensor, texts: torch.Tensor, text_keys: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """π-VL's pixel-level InfoNCE in both directions (Eq. 7, L_part = L_t2i + L_i2t).

    A key names an (identity, part) pair; a pixel's text is the part prompt of its image's identity and its parsing
    label. Positives are the same identity and the same part:
    - image-to-text: each pixel against the distinct texts of the batch, its own text the one positive;
    - text-to-image: each pixel's text against all pixels of the batch, the pixels of its key the positives
      (averaged over them, as in CLIP-ReID's SupCon form; Eq. 7 writes a single v+).
    Both are averaged over pixels (Eq. 7's 1/(H x W) sum). The paper gives no value for the temperature τ and does
    not say whether features are normalised; the caller decides (train_config: ``part_temperature``).

    Args:
        pixels: (N, E) projected patch features of the batch's (kept) pixels.
        pixel_keys: (N,) each pixel's key.
        texts: (U, E) one text feature per distinct key; text_keys: (U,) those keys, each pixel's key among them.
    """
    order = text_keys.argsort()
    index = torch.searchsorted(text_keys[order], pixel_keys)
    index = order[index.clamp(max=len(order) - 1)]
    if not bool((text_keys[index] == pixel_keys).all()):
        raise ValueError('part_infonce_loss: a pixel key has no text feature')
    pixels, texts = pixels.float(), texts.float()
    image_to_text = F.cross_entropy(pixels @ texts.t() / temperature, index)
    # text-to-image: anchor u = each distinct text, weighted by its number of pixels (= one anchor per pixel)
    log_prob = (texts @ pixels.t() / temperature).log_softmax(dim=1)  # (U, N)
    positive = text_keys.unsqueeze(1) == pixel_keys.unsqueeze(0)
    counts = positive.sum(dim=1)
    per_text = (log_prob * positive).sum(dim=1) / counts.clamp(min=1)
    text_to_image = -(per_text * counts).sum() / len(pixel_keys)
    return image_to_text + text_to_image


def alignment_loss(predicted: torch.Tensor, target: torch.Tensor, confidence: Optional[torch.Tensor] = None
                   ) -> torch.Tensor:
    """π-VL's alignment loss (Eq. 11): the squared error between the fusion head's map and the text-embedding map.

    Mean over channels and pixels ("a simple mean squared error loss"); with ``confidence`` (the paper's v2: the
    parsing confidence downsampled to the map, softmax-normalised over space) each image's per-pixel errors are
    weighted by it instead of averaged uniformly.

    Args:
        predicted, target: (B, E, h, w). confidence: (B, h, w) raw confidences, optional.
    """
    if predicted.shape != target.shape:
        raise ValueError(f'alignment_loss: predicted {tuple(predicted.shape)} vs target {tuple(target.shape)}')
    error = (predicted.float() - target.float()).pow(2).mean(dim=1).flatten(1)  # (B, h*w)
    if confidence is None:
        return error.mean()
    weights = confidence.float().flatten(1).softmax(dim=1)
    return (weights * error).sum(dim=1).mean()


class CLIPReIDLoss(nn.Module):
    """CLIP-ReID's stage-2 objective (its ``make_loss``) and π-VL's (Eq. 12):
    ``id_weight * ID + triplet_weight * TRI + i2t_weight * I2T [+ align_weight * ALIGN]``.

    - ID: label-smoothed cross-entropy, summed over the two classifiers (CLS and projection);
    - TRI: batch-hard triplet, summed over three features: the CLS after the second-to-last block, the CLS after the
      final norm and its projection (CLIP-ReID's ``img_feature_last``, ``img_feature``, ``img_feature_proj``);
    - I2T: label-smoothed cross-entropy of the projected CLS against the fixed text features of all identities
      (unnormalised dot products, no temperature);
    - ALIGN: ``alignment_loss`` (π-VL only).
    CLIP-ReID's ViT weights: 0.25 / 1 / 1; π-VL adds ALIGN with weight 1 (Eq. 12).
    """

    def __init__(self, label_smoothing: float = 0.1, margin: Optional[float] = 0.3, id_weight: float = 0.25,
                 triplet_weight: float = 1.0, i2t_weight: float = 1.0, align_weight: float = 1.0) -> None:
        super().__init__()
        self.label_smoothing, self.margin = label_smoothing, margin
        self.id_weight, self.triplet_weight = id_weight, triplet_weight
        self.i2t_weight, self.align_weight = i2t_weight, align_weight

    def forward(self, logits: torch.Tensor, features: Sequence[torch.Tensor], labels: torch.Tensor,
                text_features: torch.Tensor, alignment: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """logits (B, 2, C); features: the three (B, *) triplet features, the projected CLS last; text_features
        (C, E); alignment: the ALIGN term when π-VL computes one -> dict of the loss and its terms."""
        id_loss = logits.shape[1] * identity_loss(logits, labels, self.label_smoothing)  # a sum, not a mean
        triplet = sum(batch_hard_triplet_loss(f, labels, self.margin) for f in features)
        i2t = identity_loss(features[-1].float() @ text_features.float().t(), labels, self.label_smoothing)
        loss = self.id_weight * id_loss + self.triplet_weight * triplet + self.i2t_weight * i2t
        losses = {'id_loss': id_loss, 'triplet_loss': triplet, 'i2t_loss': i2t}
        if alignment is not None:
            loss = loss + self.align_weight * alignment
            losses['align_loss'] = alignment
        return {'loss': loss, **losses}
