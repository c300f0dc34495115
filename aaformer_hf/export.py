# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""ONNX export of a re-ID model's embedding (images -> the pooled re-ID feature), the Sinkhorn alignment included,
with a dynamic batch size, checked against PyTorch in onnxruntime before the file is kept.

Needs the ``onnx`` extra (``pip install "aaformer-hf[onnx]"``: onnx, onnxscript, onnxruntime).
"""
from pathlib import Path
from typing import Dict

import torch
import torch.nn as nn

from ._files import atomic_path
from .embeddings import embed

__all__ = ['ReIDEmbedder', 'export_onnx']


class ReIDEmbedder(nn.Module):
    """A timm model reduced to its re-ID embedding, the graph an exported file holds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return embed(self.model, pixel_values)


def export_onnx(model: nn.Module, path: Path, opset: int = 18, tolerance: float = 1e-4, check_batches=(1, 3)
                ) -> Dict[str, float]:
    """Export ``model`` (a timm model in eval mode) to ``path``; run the file in onnxruntime at each batch size of
    ``check_batches`` on random inputs and keep it only if every output is within ``tolerance`` (absolute) of
    PyTorch's. Returns the largest difference per batch size."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError('ONNX export needs onnx, onnxscript and onnxruntime: pip install "aaformer-hf[onnx]"'
                          ) from error
    if opset < 17:
        raise ValueError(f'opset {opset}: 17 or newer is needed (LayerNormalization)')
    path = Path(path)
    embedder = ReIDEmbedder(model).eval()
    _, height, width = model.pretrained_cfg['input_size']
    with atomic_path(path, suffix='.onnx') as tmp:
        torch.onnx.export(embedder, (torch.randn(2, 3, height, width),), str(tmp), dynamo=True, opset_version=opset,
                          input_names=['pixel_values'], output_names=['embeddings'],
                          dynamic_shapes=({0: torch.export.Dim('batch')},), external_data=False, verbose=False)
        session = onnxruntime.InferenceSession(str(tmp), providers=['CPUExecutionProvider'])
        differences = {}
        generator = torch.Generator().manual_seed(0)
        for batch in check_batches:
            x = torch.randn(batch, 3, height, width, generator=generator)
            with torch.no_grad():
                expected = embedder(x).float().numpy()
            (got,) = session.run(None, {'pixel_values': x.numpy()})
            differences[batch] = float(abs(got - expected).max())
        if max(differences.values()) > tolerance:
            raise ValueError(f'{path}: the exported graph differs from PyTorch by up to '
                             f'{max(differences.values()):.2e} (> {tolerance}); not written')
    return differences
