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

__all__ = ['ReIDEmbedder', 'AssignmentProbe', 'export_onnx']


class ReIDEmbedder(nn.Module):
    """A timm model reduced to its re-ID embedding, the graph an exported file holds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return embed(self.model, pixel_values)


class AssignmentProbe(nn.Module):
    """An AAformer reduced to its patch-to-part assignments, (layers, B, H, P, N) as uint8: exported beside the
    embedding only to check that the deployed graph assigns every patch as PyTorch does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.model.forward_tokens(pixel_values, output_assignments=True).assignments).to(torch.uint8)


def _export(module: nn.Module, path: Path, opset: int, height: int, width: int, output: str) -> None:
    torch.onnx.export(module, (torch.randn(2, 3, height, width),), str(path), dynamo=True, opset_version=opset,
                      input_names=['pixel_values'], output_names=[output],
                      dynamic_shapes=({0: torch.export.Dim('batch')},), external_data=False, verbose=False)


def export_onnx(model: nn.Module, path: Path, opset: int = 18, tolerance: float = 1e-4, check_batches=(1, 3),
                assignment_tolerance: float = 1e-3) -> Dict[str, float]:
    """Export ``model`` (a timm model in eval mode) to ``path``; run the file in onnxruntime at each batch size of
    ``check_batches`` on random inputs and keep it only if every output is within ``tolerance`` (absolute) of
    PyTorch's. An AAformer that assigns patches itself (``assigns_patches``) is also exported as its assignments (a
    second, temporary graph) and the file is kept only if at most ``assignment_tolerance`` of the (layer, image,
    head, part, patch) decisions differ from PyTorch's (near-ties may flip under other float orderings).

    Returns the largest embedding difference per batch size and, when checked, ``'assignments'``: the share of
    decisions that differ."""
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
        _export(embedder, tmp, opset, height, width, 'embeddings')
        session = onnxruntime.InferenceSession(str(tmp), providers=['CPUExecutionProvider'])
        differences: Dict = {}
        generator = torch.Generator().manual_seed(0)
        inputs = [torch.randn(batch, 3, height, width, generator=generator) for batch in check_batches]
        for x in inputs:
            with torch.no_grad():
                expected = embedder(x).float().numpy()
            (got,) = session.run(None, {'pixel_values': x.numpy()})
            differences[len(x)] = float(abs(got - expected).max())
        if max(differences.values()) > tolerance:
            raise ValueError(f'{path}: the exported graph differs from PyTorch by up to '
                             f'{max(differences.values()):.2e} (> {tolerance}); not written')
        if getattr(model, 'assigns_patches', False):
            differences['assignments'] = _assignment_mismatch(model, tmp, opset, height, width, inputs, onnxruntime)
            if differences['assignments'] > assignment_tolerance:
                raise ValueError(f'{path}: the exported graph assigns {differences["assignments"]:.2%} of patches to '
                                 f'other parts than PyTorch (> {assignment_tolerance:.2%}); not written')
    return differences


def _assignment_mismatch(model, tmp: Path, opset, height, width, inputs, onnxruntime) -> float:
    probe = AssignmentProbe(model).eval()
    probe_path = tmp.with_name(tmp.name + '.assignments.onnx')
    try:
        _export(probe, probe_path, opset, height, width, 'assignments')
        session = onnxruntime.InferenceSession(str(probe_path), providers=['CPUExecutionProvider'])
        differing = total = 0
        for x in inputs:
            with torch.no_grad():
                expected = probe(x).numpy()
            (got,) = session.run(None, {'pixel_values': x.numpy()})
            differing += int((got != expected).sum())
            total += expected.size
        return differing / total
    finally:
        probe_path.unlink(missing_ok=True)
