"""Deployment exports: torch.export (timm and transformers front doors) and ONNX through onnxruntime, with a dynamic
batch size, against the eager model. transformers' own export tests need its repository's tests/exporters, which its
PyPI sdist does not ship, so these stand in for them."""
import numpy as np
import pytest
import timm
import torch
from torch.export import Dim

from aaformer_hf import AAformerConfig, AAformerModel

TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=256)


@pytest.fixture(scope='module', params=['aaformer_tiny', 'pivl_vit_tiny', 'pivl_resnet_tiny'])
def timm_model(request):
    torch.manual_seed(0)
    shallower = {} if 'resnet' in request.param else dict(depth=2)
    return timm.create_model(request.param, **shallower).eval()


def test_torch_export_timm_model_with_dynamic_batch(timm_model):
    program = torch.export.export(timm_model, (torch.randn(2, 3, 256, 128),),
                                  dynamic_shapes=({0: Dim('batch', min=1, max=1024)},))
    for batch in (1, 3):
        x = torch.randn(batch, 3, 256, 128)
        torch.testing.assert_close(program.module()(x), timm_model(x))


def test_torch_export_transformers_model():
    torch.manual_seed(0)
    model = AAformerModel(AAformerConfig(**TINY)).eval()

    class Embedding(torch.nn.Module):  # export the re-ID embedding, the output a deployment uses
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).pooler_output

    wrapper = Embedding(model).eval()
    program = torch.export.export(wrapper, (torch.randn(2, 3, 256, 128),),
                                  dynamic_shapes=({0: Dim('batch', min=1, max=1024)},))
    x = torch.randn(3, 3, 256, 128)
    torch.testing.assert_close(program.module()(x), model(pixel_values=x).pooler_output)


def test_onnx_export_runs_in_onnxruntime(timm_model, tmp_path):
    import onnxruntime  # dev extras
    path = tmp_path / 'model.onnx'
    torch.onnx.export(timm_model, (torch.randn(2, 3, 256, 128),), str(path), dynamo=True,
                      dynamic_shapes=({0: Dim('batch')},), verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    x = torch.randn(3, 3, 256, 128)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = timm_model(x).numpy()
    assert out.shape == expected.shape == (3, timm_model.head_hidden_size)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)


def test_onnx_check_feeds_the_graphs_assignments_so_near_ties_do_not_refuse(tmp_path, monkeypatch):
    """Two runtimes may round a near-tied patch to different parts. Simulated here on the PyTorch side: its own
    assignment flips a few decisions (its embeddings then differ from the graph's far beyond the tolerance), yet the
    file is written - PyTorch recomputed with the graph's assignments matches it - and the flips are counted."""
    import aaformer_hf.apps.export as export
    torch.manual_seed(0)
    model = timm.create_model('aaformer_tiny', depth=2).eval()
    clean = export.export_onnx(model, tmp_path / 'clean.onnx')
    assert clean['assignments'] == 0.0 and max(clean[b] for b in (1, 3)) < 1e-4
    layer = model.blocks[1].attn
    real_assign = type(layer).assign

    def flip_a_few(self, q_parts, k_patches):  # move patch 0 of every image and head to the next part of its group
        assigned = real_assign(self, q_parts, k_patches).clone()
        if not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export():
            assigned[..., 0, 0], assigned[..., 1, 0] = assigned[..., 1, 0].clone(), assigned[..., 0, 0].clone()
        return assigned

    monkeypatch.setattr(type(layer), 'assign', flip_a_few)
    monkeypatch.setattr(layer, 'part_rows_op', False)
    out = export.export_onnx(model, tmp_path / 'ties.onnx', assignment_tolerance=0.01)
    x = torch.randn(3, 3, 256, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the old comparison (PyTorch with its own assignments) would have refused
        flipped = export.ReIDEmbedder(model)(x)
    import onnxruntime
    session = onnxruntime.InferenceSession(str(tmp_path / 'ties.onnx'), providers=['CPUExecutionProvider'])
    assert (torch.from_numpy(session.run(None, {'pixel_values': x.numpy()})[0]) - flipped).abs().max() > 1e-3
    assert out['unfed'] > 1e-3 and max(out[b] for b in (1, 3)) < 1e-4
    # every image x head of that layer had one patch moved (2 decisions each), of layers x heads x parts x patches
    heads, parts, patches = layer.num_heads, layer.num_parts, 128
    assert out['assignments'] == pytest.approx(2 / (2 * parts * patches), rel=0.01)
    with pytest.raises(ValueError, match=r'ties.onnx: not written: .* assignment decisions differ .* '
                                         r'--assignment_tolerance'):
        export.export_onnx(model, tmp_path / 'ties.onnx', assignment_tolerance=1e-4)


def test_onnx_check_refuses_a_graph_that_computes_otherwise(tmp_path, monkeypatch):
    """A runtime difference that is not an assignment tie (here the graph's embeddings scaled by 1.01) is refused,
    saying so, and nothing is written."""
    import aaformer_hf.apps.export as export
    torch.manual_seed(0)
    model = timm.create_model('aaformer_tiny', depth=1).eval()
    real_export = export._export

    class Scaled(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            embeddings, assignments = self.module(x)
            return embeddings * 1.01, assignments

    monkeypatch.setattr(export, '_export', lambda module, *args: real_export(Scaled(module), *args))
    with pytest.raises(ValueError, match=r'bad.onnx: not written: .* differ from PyTorch\'s by up to .* with the '
                                         r'graph\'s own patch assignments fed to PyTorch .* --opset'):
        export.export_onnx(model, tmp_path / 'bad.onnx')
    assert list(tmp_path.iterdir()) == []


def test_onnx_check_tolerance_is_relative_to_the_embeddings_size(tmp_path, monkeypatch):
    """A trained model's embeddings run to tens or thousands, where float32 arithmetic in another order differs by
    more than 1e-4 absolute: the graph here differs from PyTorch by a factor 1 + 3e-5 on embeddings of ~1000 (an
    absolute difference of ~0.1) and is written; 1 + 1e-3 is refused. The reported difference is relative."""
    import aaformer_hf.apps.export as export
    torch.manual_seed(0)
    model = timm.create_model('aaformer_tiny', depth=1).eval()
    with torch.no_grad():
        model.norm.weight.mul_(1000)
        model.norm.bias.mul_(1000)
        size = float(export.embed(model, torch.randn(3, 3, 256, 128)).abs().max())
    assert size > 500
    real_export = export._export

    def scaled_by(factor):
        class Scaled(torch.nn.Module):
            def __init__(self, module):
                super().__init__()
                self.module = module
                self.register_buffer('factor', torch.tensor(factor))

            def forward(self, x):
                embeddings, assignments = self.module(x)
                return embeddings * self.factor, assignments
        return lambda module, *args: real_export(Scaled(module), *args)

    monkeypatch.setattr(export, '_export', scaled_by(1 + 3e-5))
    out = export.export_onnx(model, tmp_path / 'large.onnx')
    assert (tmp_path / 'large.onnx').is_file()
    assert 2e-5 < max(out[b] for b in (1, 3)) < 5e-5
    monkeypatch.setattr(export, '_export', scaled_by(1 + 1e-3))
    with pytest.raises(ValueError, match=r'larger.onnx: not written: .* by up to 1\.0\de-03 \(relative'):
        export.export_onnx(model, tmp_path / 'larger.onnx')


def test_a_failing_int8_quantization_leaves_nothing_beside_the_output(tmp_path, monkeypatch):
    """``export_onnx(..., quantize='int8')`` quantizes in a temporary folder (onnxruntime's quantizer writes files
    beside its input): when quantizing fails, neither the output nor any other file is left in the output's folder."""
    import onnx

    from aaformer_hf.apps.export import export_onnx
    torch.manual_seed(0)
    model = timm.create_model('aaformer_tiny', depth=1).eval()

    def fail(*args, **kwargs):
        raise RuntimeError('metadata could not be set')
    monkeypatch.setattr(onnx.helper, 'set_model_props', fail)
    with pytest.raises(RuntimeError, match='metadata'):
        export_onnx(model, tmp_path / 'model.onnx', quantize='int8')
    assert list(tmp_path.iterdir()) == []
