"""The identity loss (Eq. 6): the loss the re-ID models compute themselves when given ``labels`` (transformers'
convention). The training objectives (triplet, Eq. 7; AAformer's Eq. 8) live with the trainer in
``examples/train_losses.py``."""
import torch
import torch.nn.functional as F

__all__ = ['identity_loss']


def identity_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Eq. 6: label-smoothed cross-entropy of each token's own classifier, averaged over the tokens.

    Args:
        logits: (B, T, C) per-token identity logits (T = CLS + [PART]s), or (B, C) for a single token.
        labels: (B,) identity indices in [0, C).
        label_smoothing: ε of label smoothing (0.1 as in BoT, which the paper follows).
    """
    if logits.ndim == 2:
        logits = logits.unsqueeze(1)
    b, t, c = logits.shape
    if labels.shape != (b,):
        raise ValueError(f'labels must have shape ({b},), got {tuple(labels.shape)}')
    # mean over B*T terms = mean over tokens of each token's batch-mean loss
    return F.cross_entropy(
        logits.reshape(b * t, c).float(), labels.repeat_interleave(t), label_smoothing=label_smoothing)
