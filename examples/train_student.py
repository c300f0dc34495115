"""π-VL's Table 5: a light timm backbone trained in stage 2 by the prompts a CLIP teacher learned in stage 1
("prompt-based knowledge distillation between the text encoder and the light-weight vision backbones").

The student keeps its own preprocessing (its mean/std, the teacher's input size) and is saved as a plain timm
backbone whose pooled feature is the embedding: ``timm.create_model('local-dir:FOLDER', pretrained=True)`` and
transformers' ``AutoModel.from_pretrained(FOLDER)`` (its timm wrapper) both load it, no code of this project needed.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import timm
import torch
import torch.nn as nn
from timm.models import save_for_hf

from aaformer_hf.layers.reid_head import BNNeck

__all__ = ['StudentReID', 'StudentOutput', 'build_student']


@dataclass
class StudentOutput:
    embeddings: torch.Tensor  # (B, D) the pooled backbone feature: what retrieval uses
    logits: torch.Tensor  # (B, 2, C) the two classifiers
    features: Tuple[torch.Tensor, ...]  # the triplet features, the projection to the text width last
    feature_map: Optional[torch.Tensor] = None  # (B, D, h, w) the backbone's last map (for the alignment head)


class StudentReID(nn.Module):
    """A timm backbone with CLIP-ReID's re-ID head: BNNeck + bias-free classifier on the pooled feature and on its
    linear projection to the text width (CLIP-ReID's two-classifier head; the projection also meets the text
    features in the image-to-text loss). The head is training-only: ``save_pretrained`` writes the backbone."""

    def __init__(self, backbone: nn.Module, num_classes: int, text_width: int) -> None:
        super().__init__()
        width = backbone.num_features
        self.backbone = backbone
        self.text_projection = nn.Linear(width, text_width, bias=False)
        self.bottleneck, self.bottleneck_proj = BNNeck(width), BNNeck(text_width)
        self.classifier = nn.Linear(width, num_classes, bias=False)
        self.classifier_proj = nn.Linear(text_width, num_classes, bias=False)
        for layer in (self.classifier, self.classifier_proj):
            nn.init.normal_(layer.weight, std=0.001)  # BoT / CLIP-ReID's classifier initialisation

    def forward(self, pixel_values: torch.Tensor, camera_ids: Optional[torch.Tensor] = None,
                output_feature_map: bool = False) -> StudentOutput:
        """``camera_ids`` is accepted and ignored: a student has no camera embedding."""
        feature_map = self.backbone.forward_features(pixel_values)
        pooled = self.backbone.forward_head(feature_map, pre_logits=True)
        projected = self.text_projection(pooled)
        logits = torch.stack([self.classifier(self.bottleneck(pooled)),
                              self.classifier_proj(self.bottleneck_proj(projected))], dim=1)
        return StudentOutput(pooled, logits, (pooled, projected), feature_map if output_feature_map else None)

    def save_pretrained(self, folder) -> None:
        """The backbone as a timm folder (config.json + model.safetensors) with this training's preprocessing."""
        save_for_hf(self.backbone, str(folder), safe_serialization=True)
        # timm records num_classes=0 in model_args as well as at the top level; transformers' timm wrapper passes
        # num_classes=0 itself and fails on the duplicate, so keep only the top-level key (timm reads either)
        path = Path(folder) / 'config.json'
        config = json.loads(path.read_text())
        config.get('model_args', {}).pop('num_classes', None)
        path.write_text(json.dumps(config, indent=2))


def build_student(name: str, num_classes: int, text_width: int, input_size: Tuple[int, int, int],
                  pretrained: bool = True, pretrained_file: Optional[str] = None) -> Tuple[StudentReID, Dict[str, Any]]:
    """The student and the pretrained config its images are prepared with: its own mean, std and interpolation at
    the teacher's ``input_size``, resized without a crop (re-ID crops are already the person)."""
    overlay = dict(file=str(pretrained_file)) if pretrained_file else None
    backbone = timm.create_model(name, pretrained=pretrained or bool(overlay), pretrained_cfg_overlay=overlay)
    backbone.reset_classifier(0)  # the pooled feature; the re-ID head is the student's own
    # what the saved folder tells timm's and transformers' preprocessing (they read pretrained_cfg)
    backbone.pretrained_cfg = dict(backbone.pretrained_cfg, input_size=tuple(input_size), crop_pct=1.0,
                                   fixed_input_size=False, num_classes=0)
    return StudentReID(backbone, num_classes, text_width), backbone.pretrained_cfg
