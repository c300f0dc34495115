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


@pytest.fixture(scope='module', params=['aaformer_tiny', 'pivl_vit_tiny'])
def timm_model(request):
    torch.manual_seed(0)
    return timm.create_model(request.param, depth=2).eval()


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


def test_onnx_assignment_check_counts_differing_decisions(tmp_path, monkeypatch):
    """The assignment check compares decision by decision: a graph whose assignments are all flipped counts 100 %
    and the file is not written; the real export counts 0 %."""
    import aaformer_hf.export as export
    torch.manual_seed(0)
    model = timm.create_model('aaformer_tiny', depth=1).eval()
    assert export.export_onnx(model, tmp_path / 'ok.onnx')['assignments'] == 0.0

    class Flipped(export.AssignmentProbe):  # what PyTorch computes, so the exported graph disagrees everywhere
        def forward(self, pixel_values):
            return 1 - super().forward(pixel_values)

    real_export = export._export
    monkeypatch.setattr(export, '_export', lambda module, *args: real_export(
        Flipped(module.model) if type(module) is export.AssignmentProbe else module, *args))
    with pytest.raises(ValueError, match=r'assigns 100.00% of patches to other parts'):
        export.export_onnx(model, tmp_path / 'bad.onnx')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ok.onnx']
