# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""ONNX export of a re-ID model's embedding (images -> the pooled re-ID feature), the Sinkhorn alignment included,
with a dynamic batch size, checked against PyTorch in onnxruntime before the file is kept.

An AAformer that assigns patches itself also outputs its patch-to-[PART] assignments (``assignments``: (layers,
batch, heads, parts, patches) bool, what ``visualize parts`` draws). They make the check robust to near-ties: the
Sinkhorn assignment rounds scores that are nearly equal for two parts, and two runtimes that sum in another order
may round such a patch the other way - a trained model has a few of those in a million decisions. So the graph's
embeddings are compared with PyTorch's computed *with the graph's own assignments* (any other difference is the
runtime's arithmetic, held to ``tolerance`` relative to the embedding's size), and the share of assignment
decisions that differ from PyTorch's own is reported and held to ``assignment_tolerance``.

With ``quantize='int8'`` the checked float32 graph is then quantized with ONNX Runtime's dynamic quantization (int8
weights of the matrix products per output channel, activations quantized on the fly; the patch embedding's
convolution stays float32), the setting that kept retrieval quality on a trained
ViT-B-sized AAformer at 2.4x the speed on a 2-core CPU (BENCHMARKS.md). It does not give PyTorch's embeddings to float
rounding, so it is held to a cosine to PyTorch's instead (``min_cosine``) and marked in the file's metadata
(``QUANTIZATION_KEY``). Beyond the papers; off by default.

Needs the ``onnx`` extra (``pip install "aaformer-hf[onnx]"``: onnx, onnxscript, onnxruntime).
"""
import contextlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn

from ..files import atomic_path
from .extract import embed

__all__ = ['ReIDEmbedder', 'ReIDEmbedderWithAssignments', 'export_onnx', 'assignments_fed', 'OnnxEmbedder',
           'QUANTIZATION_KEY', 'QUANTIZED_MIN_COSINE']

QUANTIZATION_KEY = 'aaformer_hf.quantization'  # the metadata entry of a quantized graph, saying how
QUANTIZED_MIN_COSINE = 0.98  # a quantized graph's least cosine to PyTorch's embeddings on the check inputs


class ReIDEmbedder(nn.Module):
    """A timm model reduced to its re-ID embedding, the graph an exported file holds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return embed(self.model, pixel_values)


class ReIDEmbedderWithAssignments(ReIDEmbedder):
    """An AAformer's re-ID embedding and its patch-to-part assignments of every layer, (layers, B, H, P, N) bool."""

    def forward(self, pixel_values: torch.Tensor):
        tokens = self.model.forward_tokens(pixel_values, output_assignments=True)
        return (self.model.forward_head(tokens.last_hidden_state, pre_logits=True),
                torch.stack(tokens.assignments))


@contextlib.contextmanager
def assignments_fed(model: nn.Module, assignments: Sequence[torch.Tensor]) -> Iterator[nn.Module]:
    """Within the block, every [PART] layer of ``model`` (an AAformer) takes its (B, H, P, N) assignment from
    ``assignments`` (one per layer, in order) instead of computing it: the rest of the forward is unchanged."""
    layers = [block.attn for block in model.blocks if getattr(block.attn, 'num_parts', 0)]
    if len(layers) != len(assignments):
        raise ValueError(f'{len(assignments)} assignments for {len(layers)} [PART] layers')
    saved = [layer.part_rows_op for layer in layers]
    try:
        for layer, assigned in zip(layers, assignments):
            layer.assign = lambda q_parts, k_patches, assigned=assigned: assigned.to(q_parts.device)
            layer.part_rows_op = False  # the operator path assigns inside itself
        yield model
    finally:
        for layer, op in zip(layers, saved):
            del layer.assign
            layer.part_rows_op = op


def _export(module: nn.Module, path: Path, opset: int, height: int, width: int, outputs: List[str]) -> None:
    torch.onnx.export(module, (torch.randn(2, 3, height, width),), str(path), dynamo=True, opset_version=opset,
                      input_names=['pixel_values'], output_names=outputs,
                      dynamic_shapes=({0: torch.export.Dim('batch')},), external_data=False, verbose=False)


def _quantize_int8(path: Path) -> None:
    """Replace the float32 graph at ``path`` by its dynamic int8 quantization (weights per output channel), marked as
    such in its metadata. Done in a temporary folder beside it: onnxruntime's quantizer writes files of its own beside
    its input, which a failure would leave behind."""
    import os
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix='.quantize-', dir=path.parent) as scratch:
        source, quantized = Path(scratch) / 'float32.onnx', Path(scratch) / 'int8.onnx'
        os.replace(path, source)
        # the matrix products only: the patch embedding's ConvInteger has no CPU kernel in onnxruntime 1.20 (our lowest)
        quantize_dynamic(str(source), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=['MatMul', 'Gemm'])
        graph = onnx.load(str(quantized))
        onnx.helper.set_model_props(graph, {QUANTIZATION_KEY: 'int8 dynamic, weights per channel (onnxruntime)'})
        onnx.save(graph, str(path))


def export_onnx(model: nn.Module, path: Path, opset: int = 18, tolerance: float = 1e-4, check_batches=(1, 3),
                assignment_tolerance: float = 1e-3, quantize: Optional[str] = None,
                min_cosine: float = QUANTIZED_MIN_COSINE) -> Dict[str, float]:
    """Export ``model`` (a timm model in eval mode) to ``path``; run the file in onnxruntime at each batch size of
    ``check_batches`` on random inputs and keep it only if its embeddings are within ``tolerance`` of PyTorch's,
    relative to the largest embedding value (absolute where that is below 1: a trained model's embeddings run to
    tens, where float32 arithmetic in another order differs by more than 1e-4 absolute) - for a model that assigns
    patches itself, PyTorch's with the graph's own assignments fed in (see the module docstring) - and at most
    ``assignment_tolerance`` of its (layer, image, head, part, patch) assignment decisions differ from PyTorch's own.

    With ``quantize='int8'`` the file kept is that graph quantized (see the module docstring), refused unless its
    embeddings' cosine to PyTorch's is at least ``min_cosine`` on every check input (random images: a sanity check of
    the quantized graph, not its retrieval quality - measure that on your own crops).

    Returns the largest embedding difference per batch size (relative, as held to ``tolerance``) and, for a model
    that assigns patches, ``'assignments'`` (the share of decisions that differ) and ``'unfed'`` (the largest absolute
    difference from PyTorch's embedding with its own assignments: what near-ties cost at worst on these inputs); when
    quantized, ``'cosine'`` (the least cosine of the quantized graph's embeddings to PyTorch's)."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError('ONNX export needs onnx, onnxscript and onnxruntime: pip install "aaformer-hf[onnx]"'
                          ) from error
    if opset < 17:
        raise ValueError(f'opset {opset}: 17 or newer is needed (LayerNormalization)')
    if quantize not in (None, 'int8'):
        raise ValueError(f'quantize={quantize!r}: None (float32) or \'int8\'')
    path = Path(path)
    model = model.eval()
    with_assignments = bool(getattr(model, 'assigns_patches', False))
    exported = (ReIDEmbedderWithAssignments if with_assignments else ReIDEmbedder)(model).eval()
    outputs = ['embeddings', 'assignments'] if with_assignments else ['embeddings']
    _, height, width = model.pretrained_cfg['input_size']
    with atomic_path(path, suffix='.onnx') as tmp:
        _export(exported, tmp, opset, height, width, outputs)
        session = onnxruntime.InferenceSession(str(tmp), providers=['CPUExecutionProvider'])
        generator = torch.Generator().manual_seed(0)
        differences: Dict = {}
        differing = decisions = 0
        unfed = 0.0
        checked = []  # (inputs, PyTorch's own embeddings): what a quantized graph is compared with below
        for batch in check_batches:
            x = torch.randn(batch, 3, height, width, generator=generator)
            got = session.run(None, {'pixel_values': x.numpy()})
            with torch.no_grad():
                if with_assignments:
                    graph_assignments = torch.from_numpy(got[1]).bool()
                    own = exported(x)
                    checked.append((x, own[0]))
                    with assignments_fed(model, list(graph_assignments)):
                        expected = embed(model, x)
                    differing += int((graph_assignments != own[1]).sum())
                    decisions += graph_assignments.numel()
                    unfed = max(unfed, float((torch.from_numpy(got[0]) - own[0].float()).abs().max()))
                else:
                    expected = embed(model, x)
                    checked.append((x, expected))
            scale = max(1.0, float(expected.float().abs().max()))
            differences[batch] = float((torch.from_numpy(got[0]) - expected.float()).abs().max()) / scale
        worst = max(differences.values())
        if worst > tolerance:
            fed = ' with the graph\'s own patch assignments fed to PyTorch' if with_assignments else ''
            raise ValueError(
                f'{path}: not written: the exported graph\'s embeddings differ from PyTorch\'s by up to {worst:.2e}'
                f' (relative to the largest embedding value)'
                f'{fed} (> --tolerance {tolerance}): onnxruntime computes some operator differently, not a near-tie '
                'of the assignment. Try another --opset, or raise --tolerance if that difference is acceptable')
        if with_assignments:
            differences['assignments'] = differing / decisions
            differences['unfed'] = unfed
            if differences['assignments'] > assignment_tolerance:
                raise ValueError(
                    f'{path}: not written: {differences["assignments"]:.3%} of the patch-to-part assignment decisions '
                    f'differ from PyTorch\'s (> --assignment_tolerance {assignment_tolerance:.3%}); near-ties flip a '
                    'few in a million, so this many means the graph assigns otherwise. Raise --assignment_tolerance '
                    'only if that is acceptable for this deployment')
        if quantize == 'int8':
            _quantize_int8(tmp)
            differences['cosine'] = _least_cosine(tmp, checked)
            if differences['cosine'] < min_cosine:
                raise ValueError(
                    f'{path}: not written: the int8 graph\'s embeddings reach a cosine of only '
                    f'{differences["cosine"]:.4f} to PyTorch\'s on the check inputs (< --min_cosine {min_cosine}); '
                    'export it in float32 (without --quantize)')
    return differences


def _least_cosine(path: Path, checked) -> float:
    """The least cosine between the graph's embeddings at ``path`` and PyTorch's, over ``checked``'s (inputs,
    PyTorch's embeddings) pairs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    least = 1.0
    for x, expected in checked:
        got = torch.from_numpy(session.run(['embeddings'], {'pixel_values': x.numpy()})[0])
        least = min(least, float(torch.nn.functional.cosine_similarity(got, expected.float(), dim=1).min()))
    return least


class OnnxEmbedder:
    """An exported embedding graph run in ONNX Runtime on the CPU, in place of the PyTorch model it was exported from:
    what ``aaformer-hf extract --runtime onnxruntime`` embeds with. Carries the model's ``pretrained_cfg`` (the
    preprocessing) and ``onnx_digest`` (the graph file's SHA-256), which ``extract``'s job fingerprint uses in place of
    the weights; called on (B, 3, H, W) pixels it returns the (B, D) embeddings.

    Args:
        path: the .onnx file (``export_onnx``'s).
        pretrained_cfg: the source model's (``input_size``, ``mean``, ``std``, ...).
        threads: ONNX Runtime's intra-op threads (default: as many as PyTorch uses).
    """

    def __init__(self, path: Path, pretrained_cfg: Dict, threads: Optional[int] = None) -> None:
        import hashlib

        import onnxruntime

        self.path, self.pretrained_cfg = Path(path), dict(pretrained_cfg)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=['CPUExecutionProvider'])
        except Exception as error:  # onnxruntime's own error types for a damaged or foreign file
            raise ValueError(f'{self.path}: not an ONNX graph onnxruntime can run ({error})') from error
        names = [output.name for output in self.session.get_outputs()]
        if 'embeddings' not in names:
            raise ValueError(f'{self.path}: no "embeddings" output (outputs: {", ".join(names)}); write the file with '
                             'aaformer-hf export-onnx')
        self.input_name = self.session.get_inputs()[0].name
        self.onnx_digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        # how the graph was quantized (export_onnx's mark), or None for a float graph
        self.quantization = self.session.get_modelmeta().custom_metadata_map.get(QUANTIZATION_KEY)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        embeddings, = self.session.run(['embeddings'], {self.input_name: pixels.float().cpu().numpy()})
        return torch.from_numpy(embeddings)
