"""Losses against values worked out by hand (Eq. 6-8)."""
import math

import pytest
import torch
import torch.nn.functional as F

from aaformer_hf.reid.losses import identity_loss
from train_losses import AAformerLoss, batch_hard_triplet_loss


def test_triplet_unequal_identity_counts():
    # identity 0 has three samples, 1 and 2 one each (no positive: no triplet for them)
    x = torch.tensor([[0.], [4.], [1.], [2.5], [9.]])
    y = torch.tensor([0, 0, 0, 1, 2])
    # anchor 0: hardest positive 4 (x=4), hardest negative 2.5 -> 4 - 2.5 + 0.3 = 1.8
    # anchor 4: positives 4 and 3 -> 4; negatives 1.5 and 5 -> 1.5 -> 2.8
    # anchor 1: positives 1 and 3 -> 3; negatives 1.5 and 8 -> 1.5 -> 1.8
    assert batch_hard_triplet_loss(x, y, margin=0.3).item() == pytest.approx((1.8 + 2.8 + 1.8) / 3, abs=1e-6)
    soft = (2 * math.log1p(math.exp(1.5)) + math.log1p(math.exp(2.5))) / 3
    assert batch_hard_triplet_loss(x, y, margin=None).item() == pytest.approx(soft, abs=1e-6)


def test_triplet_no_triplet_and_gradient():
    x = torch.tensor([[0.], [1.]], requires_grad=True)
    loss = batch_hard_triplet_loss(x, torch.tensor([0, 1]))
    loss.backward()
    assert loss.item() == 0 and x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))
    # duplicates (distance 0) must not give NaN gradients
    x = torch.zeros(4, 3, requires_grad=True)
    batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(x.grad).all()


def test_aaformer_objective_mines_cls_and_parts_separately():
    y = torch.tensor([0, 0, 1, 1])
    cls = torch.tensor([0., 1., 3., 5.])
    parts = torch.tensor([[0., 0.], [0., 3.], [1., 0.], [4., 4.]])  # two 1-d [PART]s, concatenated
    stacked = torch.cat([cls[:, None], parts], dim=1).unsqueeze(-1)  # (B, 1 + P, D) with P = 2, D = 1
    features = tuple(stacked.unbind(1))  # as the model output gives them: 1 + P features (B, D)
    # CLS: only anchor 2 violates the margin: positive |3 - 5| = 2, negative |3 - 1| = 2 -> 0.3
    cls_term = 0.3 / 4
    # parts (2-d): anchor 0: 3 - 1 + .3; anchor 1: 3 - sqrt(10) + .3; anchor 2: 5 - 1 + .3; anchor 3: 5 - sqrt(17) + .3
    part_term = ((2.3) + (3.3 - math.sqrt(10)) + 4.3 + (5.3 - math.sqrt(17))) / 4
    logits = torch.randn(4, 3, 5)
    out = AAformerLoss()(logits, features, y)
    assert out['triplet_loss'].item() == pytest.approx((cls_term + part_term) / 2, abs=1e-6)
    # mining on the concatenation of everything would give another value: the terms really are separate
    joint = batch_hard_triplet_loss(stacked.flatten(1), y).item()
    assert abs(joint - out['triplet_loss'].item()) > 0.1
    by_hand_id = sum(F.cross_entropy(logits[:, t], y, label_smoothing=0.1) for t in range(3)) / 3
    assert out['id_loss'].item() == pytest.approx(by_hand_id.item(), abs=1e-6)
    assert out['loss'].item() == pytest.approx(by_hand_id.item() + (cls_term + part_term) / 2, abs=1e-6)
    weighted = AAformerLoss(id_weight=0.5, triplet_weight=2.0)(logits, features, y)
    assert weighted['loss'].item() == pytest.approx(0.5 * by_hand_id.item() + (cls_term + part_term), abs=1e-6)


def test_identity_loss_label_smoothing_by_hand():
    # two classes, uniform logits: CE = log 2 whatever the smoothing; one confident token checks the smoothing
    logits = torch.tensor([[[0., 0.], [10., 0.]]])  # B=1, T=2, C=2
    p = torch.softmax(torch.tensor([10., 0.]), 0)
    eps = 0.1
    confident = -((1 - eps / 2) * math.log(p[0]) + eps / 2 * math.log(p[1]))
    assert identity_loss(logits, torch.tensor([0])).item() == pytest.approx((math.log(2) + confident) / 2, abs=1e-5)
