"""The [PART] rows as C functions on a CPU (``cpu_part_rows``, issue #26): the same assignments and rows as the
plain PyTorch path (``assign_patches`` + ``part_rows_reference``), and the same gradients as autograd through it, on
a ViT layer's strided q, k, v views, in every group layout they take, with empty parts, ties and both self-key
rules; taken where they apply and nowhere else; built once, cached, on PyTorch's OpenMP threads; and the PyTorch path
with a clear status where no compiler works."""
import ctypes
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from aaformer_hf.layers import MultiHeadAutoAlignment, PartGroupLayout, cpu_part_rows
from aaformer_hf.layers.part_rows import assign_patches, part_rows_only, part_rows_reference

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(name) for name in ('cc', 'gcc', 'clang')),
    reason='no C compiler on this machine: the C function cannot be built, the PyTorch path runs (tested in '
           'test_part_rows.py and by test_without_a_compiler_the_pytorch_path_runs here)')


def _qkv(batch, heads, parts, patches, head_dim, seed=0):
    """q, k, v as a ViT layer has them: permuted views of one (B, L, 3, H, d) qkv output."""
    torch.manual_seed(seed)
    seq_len = 1 + parts + patches
    qkv = torch.randn(batch, seq_len, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    return qkv.unbind(0)


def _reference(q, k, v, groups, epsilon, iters, self_key_always, scale):
    p = sum(groups)
    layout = PartGroupLayout.build(groups)
    group_size = layout.slot_group_size[:, 0].index_select(0, layout.part_group)
    assigned = assign_patches(q[:, :, 1:1 + p], k[:, :, 1 + p:], layout, group_size, False, True, epsilon, iters)
    return part_rows_reference(q, k, v, assigned, self_key_always, scale).transpose(1, 2), assigned


@needs_compiler
@pytest.mark.parametrize('groups,patches,head_dim', [((2, 3), 128, 64), ((6,), 40, 12), ((1, 4), 17, 8),
                                                     ((2, 3), 1, 16), ((3,), 2, 8)],
                         ids=['vit-b', 'one-group', 'single-part-group', 'one-patch', 'two-patches'])
@pytest.mark.parametrize('self_key_always', [False, True], ids=['if_empty', 'always'])
@pytest.mark.parametrize('threads', [1, 2])
def test_equals_the_plain_path(groups, patches, head_dim, self_key_always, threads, monkeypatch):
    """With one or two patches most parts of a group are empty: their row is their own value (or, 'always', their
    own key and value alone)."""
    monkeypatch.setattr(torch, 'get_num_threads', lambda: threads)
    q, k, v = _qkv(3, 4, sum(groups), patches, head_dim)
    scale = head_dim ** -0.5
    assert cpu_part_rows.applies(q, k, v, None, False, True, 0.05, 3, sum(groups))
    rows, assigned = cpu_part_rows.part_rows(q, k, v, groups, 0.05, 3, self_key_always, scale)
    ref_rows, ref_assigned = _reference(q, k, v, groups, 0.05, 3, self_key_always, scale)
    assert torch.equal(assigned, ref_assigned)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-5, atol=1e-6)


@needs_compiler
@pytest.mark.parametrize('iters', [1, 2, 5])
def test_equals_the_plain_path_for_other_iterations_and_epsilon(iters):
    q, k, v = _qkv(2, 3, 5, 30, 16, seed=1)
    rows, assigned = cpu_part_rows.part_rows(q, k, v, (2, 3), 0.1, iters, False, 0.25)
    ref_rows, ref_assigned = _reference(q, k, v, (2, 3), 0.1, iters, False, 0.25)
    assert torch.equal(assigned, ref_assigned)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-5, atol=1e-6)


@needs_compiler
def test_ties_go_to_the_first_part_as_in_pytorch():
    """Two parts of a group with the same query tie on every patch: both paths give every patch to the first."""
    q, k, v = _qkv(2, 2, 3, 20, 8, seed=2)
    q = q.clone()
    q[:, :, 2] = q[:, :, 1]  # parts 0 and 1 (rows 1 and 2) are one group's twins
    rows, assigned = cpu_part_rows.part_rows(q, k, v, (3,), 0.05, 3, False, 0.3)
    ref_rows, ref_assigned = _reference(q, k, v, (3,), 0.05, 3, False, 0.3)
    assert not assigned[:, :, 1].any() and torch.equal(assigned, ref_assigned)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-5, atol=1e-6)


def test_applies_only_where_it_computes_the_same():
    q, k, v = _qkv(2, 2, 5, 12, 8)
    args = (None, False, True, 0.05, 3, 5)
    # settings it does not implement
    assert not cpu_part_rows.applies(q, k, v, torch.ones(2, 2, 5, 12, dtype=torch.bool), *args[1:])
    assert not cpu_part_rows.applies(q, k, v, None, True, True, 0.05, 3, 5)  # nearest part
    assert not cpu_part_rows.applies(q, k, v, None, False, False, 0.05, 3, 5)  # dot-product scores
    assert not cpu_part_rows.applies(q, k, v, None, False, True, 0.02, 3, 5)  # ε < 0.05: log domain
    # tensors it does not take
    assert not cpu_part_rows.applies(q.double(), k.double(), v.double(), *args)
    assert not cpu_part_rows.applies(q.bfloat16(), k.bfloat16(), v.bfloat16(), *args)
    assert not cpu_part_rows.applies(q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1), *args)
    assert not cpu_part_rows.applies(q[:0], k[:0], v[:0], *args)
    assert not cpu_part_rows.applies(q.to('meta'), k.to('meta'), v.to('meta'), *args)
    grad_q = q.detach().requires_grad_()
    assert not cpu_part_rows.applies(grad_q, k, v, *args)
    with torch.no_grad():
        assert cpu_part_rows.applies(grad_q, k, v, *args) == (cpu_part_rows._load() is not None)
    # the backward's
    assigned = torch.zeros(2, 2, 5, 12, dtype=torch.bool)
    grad = torch.randn(2, 1 + 5 + 12, 2, 8)
    assert cpu_part_rows.backward_applies(grad, q, k, v, assigned) == (cpu_part_rows._load() is not None)
    assert not cpu_part_rows.backward_applies(grad.double(), q, k, v, assigned)
    assert not cpu_part_rows.backward_applies(grad, q, k, v, assigned.transpose(0, 1).contiguous().transpose(0, 1))
    assert not cpu_part_rows.backward_applies(grad, q, k, v, assigned[..., :-1])
    assert not cpu_part_rows.backward_applies(grad.transpose(1, 2), q, k, v, assigned)


@needs_compiler
def test_the_layer_takes_it_at_inference_and_in_training(monkeypatch):
    """Default AAformer settings go through the C functions: at inference, and in a training step's forward and
    backward; the same layer with them switched off (PyTorch) gives the same outputs, assignments and gradients."""
    calls = []
    library = cpu_part_rows._load()
    monkeypatch.setattr(cpu_part_rows, '_library', SimpleNamespace(
        part_rows_cpu=lambda *args: calls.append('forward') or library.part_rows_cpu(*args),
        part_rows_backward_cpu=lambda *args: calls.append('backward') or library.part_rows_backward_cpu(*args)))
    torch.manual_seed(0)
    layer = MultiHeadAutoAlignment(32, num_heads=2, qkv_bias=True, part_groups=(2, 3), grid_size=(4, 4))
    x = torch.randn(2, 1 + 5 + 16, 32)

    def run(enabled):
        monkeypatch.setattr(cpu_part_rows, 'enabled', enabled)
        with torch.no_grad():
            out, _, assigned = layer(x)
        xg = x.clone().requires_grad_()
        train_out, _, _ = layer(xg)
        (train_out * torch.linspace(-1, 1, train_out.numel()).view_as(train_out)).sum().backward()
        grads = [xg.grad] + [param.grad.clone() for param in layer.parameters()]
        layer.zero_grad()
        return out, assigned, train_out.detach(), grads

    with_c = run(True)
    assert calls == ['forward', 'forward', 'backward']
    without = run(False)
    assert len(calls) == 3
    assert torch.equal(with_c[1], without[1])
    for got, expected in zip([with_c[0], with_c[2]] + with_c[3], [without[0], without[2]] + without[3]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@needs_compiler
@pytest.mark.parametrize('groups,patches,head_dim', [((2, 3), 128, 64), ((6,), 40, 12), ((2, 3), 1, 16)],
                         ids=['vit-b', 'one-group', 'one-patch'])
@pytest.mark.parametrize('self_key_always', [False, True], ids=['if_empty', 'always'])
@pytest.mark.parametrize('threads', [1, 2])
def test_backward_equals_autograd_through_the_plain_path(groups, patches, head_dim, self_key_always, threads,
                                                          monkeypatch):
    """The C backward against autograd through ``part_rows_reference`` (PyTorch's own softmax and matmul
    derivatives, not our hand-written backward), on a ViT layer's strided q, k, v views; with one patch most parts
    are empty (their own value, or with 'always' their own key and value)."""
    monkeypatch.setattr(torch, 'get_num_threads', lambda: threads)
    q, k, v = _qkv(3, 4, sum(groups), patches, head_dim, seed=3)
    scale = head_dim ** -0.5
    _, assigned = _reference(q, k, v, groups, 0.05, 3, self_key_always, scale)
    b, h, seq_len, d = q.shape
    p = sum(groups)
    grad_merged = torch.randn(b, seq_len, h, d)
    assert cpu_part_rows.backward_applies(grad_merged, q, k, v, assigned)
    grads = cpu_part_rows.part_rows_backward(grad_merged, q, k, v, assigned, self_key_always, scale)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    rows = part_rows_reference(*leaves, assigned, self_key_always, scale)  # (B, H, P, d)
    rows.backward(grad_merged[:, 1:1 + p].transpose(1, 2))
    for grad, leaf in zip(grads, leaves):
        assert grad.shape == leaf.shape
        torch.testing.assert_close(grad, leaf.grad, rtol=1e-5, atol=1e-5)


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
    """The module as in a new process, its cache in ``tmp_path``."""
    monkeypatch.setenv('AAFORMER_HF_CACHE', str(tmp_path))
    monkeypatch.setattr(cpu_part_rows, '_library', None)
    monkeypatch.setattr(cpu_part_rows, '_status', 'not loaded yet')
    monkeypatch.setattr(cpu_part_rows, 'enabled', True)
    return tmp_path


def test_without_a_compiler_the_pytorch_path_runs(fresh_state, monkeypatch):
    monkeypatch.setattr(cpu_part_rows, '_compilers', lambda: [])
    q, k, v = _qkv(2, 2, 5, 12, 8)
    assert not cpu_part_rows.applies(q, k, v, None, False, True, 0.05, 3, 5)
    assert cpu_part_rows.status().startswith('off: no C compiler')
    layout = PartGroupLayout.tensors((2, 3))
    group_size = layout[1][:, 0].index_select(0, layout[2])
    rows, assigned = part_rows_only(q, k, v, None, [*layout, group_size], [2, 3], False, True, 0.05, 3, False, 0.35,
                                    True)
    ref_rows, ref_assigned = _reference(q, k, v, (2, 3), 0.05, 3, False, 0.35)
    assert torch.equal(assigned, ref_assigned)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-5, atol=1e-6)


def test_a_compiler_that_fails_is_reported_and_skipped(fresh_state, monkeypatch):
    monkeypatch.setattr(cpu_part_rows, '_compilers', lambda: [shutil.which('false') or '/bin/false'])
    q, k, v = _qkv(2, 2, 5, 12, 8)
    assert not cpu_part_rows.applies(q, k, v, None, False, True, 0.05, 3, 5)
    assert 'compiling cpu_part_rows.c failed' in cpu_part_rows.status() and 'false' in cpu_part_rows.status()
    assert not list(fresh_state.rglob('*.so*'))  # nothing half-written left in the cache


def test_switched_off(fresh_state, monkeypatch):
    monkeypatch.setattr(cpu_part_rows, 'enabled', False)
    q, k, v = _qkv(2, 2, 5, 12, 8)
    assert not cpu_part_rows.applies(q, k, v, None, False, True, 0.05, 3, 5)
    assert cpu_part_rows.status().startswith('off: switched off')
    assert not list(fresh_state.rglob('*.so'))  # nothing compiled


@needs_compiler
def test_compiled_once_then_loaded_from_the_cache(fresh_state, monkeypatch):
    q, k, v = _qkv(2, 2, 5, 12, 8)
    assert cpu_part_rows.applies(q, k, v, None, False, True, 0.05, 3, 5)
    built = list(fresh_state.glob('kernels/cpu_part_rows-*.so'))
    assert len(built) == 1 and cpu_part_rows.status().startswith(f'loaded: {built[0]}, on ')
    monkeypatch.setattr(cpu_part_rows, '_library', None)
    monkeypatch.setattr(cpu_part_rows, '_status', 'not loaded yet')
    monkeypatch.setattr(cpu_part_rows, '_compile', lambda *a: pytest.fail('compiled a second time'))
    assert cpu_part_rows.applies(q, k, v, None, False, True, 0.05, 3, 5)



def _openmp_files():
    with open('/proc/self/maps') as maps:
        return {line.split()[-1] for line in maps
                if re.match(r'lib(gomp|iomp5|omp)[-.]', line.rsplit('/', 1)[-1].strip())}


@needs_compiler
@pytest.mark.skipif(cpu_part_rows._openmp_runtime() is None,
                    reason="PyTorch runs no OpenMP runtime here (built without it, or not Linux): the C function is "
                           'built single-threaded, tested by test_built_without_openmp_one_thread')
def test_built_against_pytorchs_openmp_runtime(fresh_state):
    """On PyTorch's own thread pool (its workers spin between operators; a thread of our own would share a core
    with one), even where another package brought a second OpenMP runtime (faiss does): the C function's OpenMP
    calls resolve to the same function as PyTorch's, and loading it loads no runtime."""
    before = _openmp_files()
    q, k, v = _qkv(2, 2, 5, 12, 8)
    assert cpu_part_rows.applies(q, k, v, None, False, True, 0.05, 3, 5)
    assert _openmp_files() == before
    assert cpu_part_rows.status().endswith(f"on PyTorch's OpenMP threads ({cpu_part_rows._openmp_runtime()})")
    torch_cpu = ctypes.CDLL(str(Path(torch.__file__).parent / 'lib' / 'libtorch_cpu.so'))
    ours = ctypes.CDLL(cpu_part_rows.status().split(': ', 1)[1].split(', on ')[0])
    assert (ctypes.cast(ours.omp_get_max_threads, ctypes.c_void_p).value
            == ctypes.cast(torch_cpu.omp_get_max_threads, ctypes.c_void_p).value)


@needs_compiler
def test_built_without_openmp_one_thread(fresh_state, monkeypatch):
    monkeypatch.setattr(cpu_part_rows, '_openmp_runtime', lambda: None)
    monkeypatch.setattr(torch, 'get_num_threads', lambda: 2)
    q, k, v = _qkv(3, 2, 5, 20, 8)
    assert cpu_part_rows.applies(q, k, v, None, False, True, 0.05, 3, 5)
    assert cpu_part_rows.status().endswith('on one thread (no OpenMP runtime)')
    rows, assigned = cpu_part_rows.part_rows(q, k, v, (2, 3), 0.05, 3, False, 0.35)
    ref_rows, ref_assigned = _reference(q, k, v, (2, 3), 0.05, 3, False, 0.35)
    assert torch.equal(assigned, ref_assigned)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-5, atol=1e-6)


def test_a_missing_source_is_reported(fresh_state, monkeypatch, tmp_path):
    """An installation without the C source (a packaging mistake) runs the PyTorch path and says why."""
    monkeypatch.setattr(cpu_part_rows, 'SOURCE', tmp_path / 'cpu_part_rows.c')
    q, k, v = _qkv(2, 2, 5, 12, 8)
    assert not cpu_part_rows.applies(q, k, v, None, False, True, 0.05, 3, 5)
    assert cpu_part_rows.status().startswith('off: ') and 'cpu_part_rows.c' in cpu_part_rows.status()


def test_the_c_source_ships_with_the_package():
    """pyproject's package data carries the source to wheels (without it every install runs the PyTorch path)."""
    import tomllib
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / 'pyproject.toml').read_text())
    assert 'cpu_part_rows.c' in pyproject['tool']['setuptools']['package-data']['aaformer_hf.layers']
    assert cpu_part_rows.SOURCE.is_file()


@needs_compiler
def test_a_cache_that_cannot_be_written(fresh_state, monkeypatch):
    """A read-only cache (a container's home): built in a private folder for this process, and said so."""
    blocker = fresh_state / 'a-file'
    blocker.write_text('not a folder')
    monkeypatch.setenv('AAFORMER_HF_CACHE', str(blocker / 'cache'))
    q, k, v = _qkv(2, 2, 5, 12, 8)
    assert cpu_part_rows.applies(q, k, v, None, False, True, 0.05, 3, 5)
    assert cpu_part_rows.status().endswith(f'(the cache {blocker / "cache" / "kernels"} cannot be written: built for '
                                           'this process only)')
    rows, assigned = cpu_part_rows.part_rows(q, k, v, (2, 3), 0.05, 3, False, 0.35)
    assert torch.equal(assigned, _reference(q, k, v, (2, 3), 0.05, 3, False, 0.35)[1])
