"""CLIP-ReID's and π-VL's training losses (examples/train_losses.py) against hand computations on tiny tensors."""
import math

import pytest
import torch

from train_losses import CLIPReIDLoss, alignment_loss, part_infonce_loss, supcon_loss

E = math.e


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_supcon_both_ways_by_hand():
    images, texts = t([1, 0], [0, 1]), t([1, 0], [0, 1], [1, 1])
    # image 1 (label 0): logits (1, 0, 1) over the texts, positives texts 1 and 3: mean log-prob 1 - log(2e + 1);
    # image 2 (label 1): logits (0, 1, 1), positive text 2: 1 - log(1 + 2e)
    loss = supcon_loss(images, texts, torch.tensor([0, 1]), torch.tensor([0, 1, 0]))
    assert loss.item() == pytest.approx(math.log(2 * E + 1) - 1, rel=1e-6)
    # temperature 0.5 doubles the logits: image 1: 2 - log(2e^2 + 1); image 2: 2 - log(1 + 2e^2)
    loss = supcon_loss(images, texts, torch.tensor([0, 1]), torch.tensor([0, 1, 0]), temperature=0.5)
    assert loss.item() == pytest.approx(math.log(2 * E ** 2 + 1) - 2, rel=1e-6)
    # the other direction: text anchors over the images; text 3 = (1, 1) has logits (1, 1), positive image 1
    loss = supcon_loss(texts, images, torch.tensor([0, 1, 0]), torch.tensor([0, 1]))
    expected = -((1 - math.log(E + 1)) + (1 - math.log(1 + E)) + (1 - math.log(2 * E))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match='no positive'):
        supcon_loss(images, texts, torch.tensor([0, 2]), torch.tensor([0, 1, 0]))


def test_pixel_infonce_same_identity_same_part_positives_by_hand():
    # pixels 1 and 3 are key A (identity x, part p), pixel 2 is key B; the text of A is (1, 0), of B (0, 2)
    pixels, keys = t([1, 0], [0, 1], [1, 1]), torch.tensor([7, 3, 7])
    texts, text_keys = t([0, 2], [1, 0]), torch.tensor([3, 7])  # keys in any order
    i2t = -(math.log(E / (E + 1)) + math.log(E ** 2 / (1 + E ** 2)) + math.log(E / (E + E ** 2))) / 3
    # text of A over pixels: logits (1, 0, 1), positives pixels 1 and 3 -> 1 - log(2e + 1), once per A pixel;
    # text of B: logits (0, 2, 2), positive pixel 2 -> 2 - log(1 + 2e^2)
    t2i = -(2 * (1 - math.log(2 * E + 1)) + (2 - math.log(1 + 2 * E ** 2))) / 3
    assert part_infonce_loss(pixels, keys, texts, text_keys).item() == pytest.approx(i2t + t2i, rel=1e-6)
    # temperature 2 halves every logit: the same sums by hand with the halved values
    R = math.exp(0.5)
    i2t = -(math.log(R / (1 + R)) + math.log(E / (E + 1)) + math.log(R / (R + E))) / 3
    t2i = -(2 * (0.5 - math.log(2 * R + 1)) + (1 - math.log(1 + 2 * E))) / 3
    halved = part_infonce_loss(pixels, keys, texts, text_keys, temperature=2.0)
    assert halved.item() == pytest.approx(i2t + t2i, rel=1e-6)
    with pytest.raises(ValueError, match='no text feature'):
        part_infonce_loss(pixels, torch.tensor([7, 3, 5]), texts, text_keys)


def test_alignment_mse_with_and_without_confidence_weighting():
    predicted = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 3.0]], [[1.0, 1.0]]]])  # per-pixel squared errors, mean over channels: 1 and 5
    assert alignment_loss(predicted, target).item() == pytest.approx(3.0)
    # confidences (0, ln 3) -> softmax over space (1/4, 3/4) -> 1/4 + 15/4
    confidence = torch.tensor([[[0.0, math.log(3.0)]]])
    assert alignment_loss(predicted, target, confidence).item() == pytest.approx(4.0, rel=1e-6)
    with pytest.raises(ValueError, match='predicted'):
        alignment_loss(predicted, target[:, :, :, :1])


def test_clipreid_objective_sums_its_terms_with_clipreids_weights():
    labels = torch.tensor([0, 0, 1, 1])
    logits = torch.zeros(4, 2, 2)  # both classifiers: log 2 each, with or without smoothing
    # 1-D features 0, 2 | 1, 3: every anchor's hardest positive is 2 away, its closest negative 1 -> 2 - 1 + 0.3
    feature = t([0], [2], [1], [3])
    loss = CLIPReIDLoss()(logits, [feature, feature, feature], labels, text_features=torch.zeros(2, 1))
    assert loss['id_loss'].item() == pytest.approx(2 * math.log(2), rel=1e-6)  # summed over the classifiers
    assert loss['triplet_loss'].item() == pytest.approx(3 * 1.3, rel=1e-6)  # summed over the three features
    assert loss['i2t_loss'].item() == pytest.approx(math.log(2), rel=1e-6)  # zero text features: uniform
    assert loss['loss'].item() == pytest.approx(0.25 * 2 * math.log(2) + 3.9 + math.log(2), rel=1e-6)
    with_align = CLIPReIDLoss(align_weight=2.0)(logits, [feature] * 3, labels, torch.zeros(2, 1),
                                                alignment=torch.tensor(0.5))
    assert with_align['loss'].item() == pytest.approx(0.25 * 2 * math.log(2) + 3.9 + math.log(2) + 2 * 0.5, rel=1e-6)
    # image-to-text logits are plain dot products with the text features of all identities
    texts = t([1.0], [-1.0])
    i2t = CLIPReIDLoss(label_smoothing=0.0)(logits, [feature] * 3, labels, texts)['i2t_loss']
    expected = sum(-math.log(math.exp(s * f) / (math.exp(f) + math.exp(-f)))
                   for f, s in [(0, 1), (2, 1), (1, -1), (3, -1)]) / 4
    assert i2t.item() == pytest.approx(expected, rel=1e-6)


def smoothed_ce(logits, label, smoothing=0.1):
    """Label-smoothed cross-entropy of one sample, by its definition: (1 - e) of the target's -log p plus e spread
    evenly over all classes' -log p."""
    log_z = math.log(sum(math.exp(v) for v in logits))
    log_p = [v - log_z for v in logits]
    return -(1 - smoothing) * log_p[label] - smoothing / len(logits) * sum(log_p)


def test_clipreid_objective_smooths_the_id_and_image_to_text_terms():
    """Non-uniform logits, so a wrong (or missing) label smoothing in ID or I2T shows."""
    labels = torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[2.0, 0.0]]).expand(4, 2, 2)  # both classifiers, every sample: (2, 0)
    feature = t([0], [2], [1], [3])
    texts = t([1.0], [-1.0])  # image-to-text logits (f, -f)
    loss = CLIPReIDLoss()(logits, [feature] * 3, labels, texts)
    id_per_classifier = sum(smoothed_ce([2.0, 0.0], y) for y in (0, 0, 1, 1)) / 4
    assert loss['id_loss'].item() == pytest.approx(2 * id_per_classifier, rel=1e-6)
    i2t = sum(smoothed_ce([f, -f], y) for f, y in [(0, 0), (2, 0), (1, 1), (3, 1)]) / 4
    assert loss['i2t_loss'].item() == pytest.approx(i2t, rel=1e-6)
    assert smoothed_ce([2.0, 0.0], 1) != pytest.approx(smoothed_ce([2.0, 0.0], 1, smoothing=0.0))  # it matters here

