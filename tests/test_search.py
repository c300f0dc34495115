"""aaformer_hf.reid.search and ``aaformer-hf search``: exact search against a NumPy brute force, FAISS (flat and IVF)
against it, chunking, and bad input."""
import json

import numpy as np
import pytest
import torch

from aaformer_hf.apps.cli import main
from aaformer_hf.apps.extract import FORMAT, _save
from aaformer_hf.reid.search import recall_at, search


def _brute_force(q, g, k, metric):
    q, g = q.numpy().astype(np.float64), g.numpy().astype(np.float64)
    if metric == 'cosine':
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        d = 1 - q @ g.T
    else:
        d = ((q[:, None, :] - g[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind='stable')[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize('metric', ['cosine', 'euclidean'])
@pytest.mark.parametrize('backend', ['torch', 'faiss'])
def test_exact_search_equals_a_brute_force(metric, backend):
    torch.manual_seed(0)
    q, g = torch.randn(37, 24), torch.randn(500, 24)
    # tiny chunks: 3 query rows at a time, so the chunk seams are crossed
    distances, indices = search(q, g, top=7, metric=metric, backend=backend, chunk_bytes=3 * 4 * 500)
    ref_d, ref_i = _brute_force(q, g, 7, metric)
    assert indices.tolist() == ref_i.tolist()
    np.testing.assert_allclose(distances.numpy(), ref_d, rtol=1e-4, atol=1e-4)


def test_faiss_ivf_is_approximate_and_measured_by_recall():
    torch.manual_seed(0)
    centres = torch.randn(20, 32) * 4
    g = centres.repeat_interleave(100, 0) + torch.randn(2000, 32)  # clustered, as re-ID galleries are
    q = centres.repeat_interleave(3, 0) + torch.randn(60, 32)
    exact = search(q, g, top=10)[1]
    approximate = search(q, g, top=10, backend='faiss', index='IVF20,Flat', nprobe=20)[1]
    assert recall_at(approximate, exact) == 1.0  # every list probed: exact again
    one_list = search(q, g, top=10, backend='faiss', index='IVF20,Flat', nprobe=1)[1]
    assert 0.5 < recall_at(one_list, exact) <= 1.0
    assert recall_at(exact.flip(1), exact) == 1.0 and recall_at(exact + 10_000, exact) == 0.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match='must share D'):
        search(torch.randn(2, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match='gallery embeddings hold NaN'):
        search(torch.randn(2, 3), torch.tensor([[float('nan'), 0, 0]]))
    with pytest.raises(ValueError, match="backend must be 'torch' or 'faiss'"):
        search(torch.randn(2, 3), torch.randn(4, 3), backend='annoy')


def test_device_is_checked_and_results_come_back_on_the_cpu():
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or a torch device"):
        search(torch.randn(2, 3), torch.randn(4, 3), device='gpu0')
    distances, indices = search(torch.randn(2, 3), torch.randn(4, 3), top=2, device='cpu')
    assert distances.device.type == indices.device.type == 'cpu'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (the device machine runs it)')
def test_gpu_search_equals_the_cpu_search():
    torch.manual_seed(0)
    q, g = torch.randn(37, 24), torch.randn(5000, 24)
    cpu_d, cpu_i = search(q, g, top=7, device='cpu')
    gpu_d, gpu_i = search(q, g, top=7, device='auto')
    assert gpu_i.device.type == 'cpu' and gpu_i.tolist() == cpu_i.tolist()
    torch.testing.assert_close(gpu_d, cpu_d, rtol=1e-4, atol=1e-4)


def test_search_command_writes_matches_by_path(tmp_path):
    torch.manual_seed(0)
    g, q = torch.randn(30, 8), torch.randn(4, 8)
    meta = lambda n, prefix, model='m': {'format': FORMAT, 'model': model,  # noqa: E731
                                         'paths': json.dumps([f'{prefix}{i}.jpg' for i in range(n)])}
    _save({'embeddings': g}, meta(30, 'g'), tmp_path / 'g.safetensors')
    _save({'embeddings': q}, meta(4, 'q'), tmp_path / 'q.safetensors')
    out = tmp_path / 'm.json'
    assert main(['search', str(tmp_path / 'g.safetensors'), str(tmp_path / 'q.safetensors'), '-o', str(out),
                 '--top', '3']) == 0
    results = json.loads(out.read_text())['results']
    ref_d, ref_i = _brute_force(q, g, 3, 'cosine')
    assert [r['query'] for r in results] == ['q0.jpg', 'q1.jpg', 'q2.jpg', 'q3.jpg']
    assert [[m['path'] for m in r['matches']] for r in results] == [[f'g{i}.jpg' for i in row] for row in ref_i]
    _save({'embeddings': q}, meta(4, 'q', model='other'), tmp_path / 'q2.safetensors')
    with pytest.raises(SystemExit):
        main(['search', str(tmp_path / 'g.safetensors'), str(tmp_path / 'q2.safetensors'), '-o', str(tmp_path / 'x')])
