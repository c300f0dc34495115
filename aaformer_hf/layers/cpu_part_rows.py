"""The [PART] rows on a CPU as C functions (``cpu_part_rows.c``, issue #26): forward and backward.

On a CPU the PyTorch code of ``part_rows_only`` is ~45 small operators per layer, each of which costs more in dispatch
and cold caches than in arithmetic: together ~1.3 ms a layer of ViT-B at batch 4, about 3 % of the forward. The C
forward does the same work (the products, the cosine Sinkhorn-Knopp, the rounding, the masked softmax and the rows)
image by image, reading keys and values row by row; the C backward recomputes the probabilities and writes the
gradients of q, k and v. Both split the images and heads over PyTorch's own OpenMP threads
(``torch.get_num_threads()``) and give the PyTorch code's results to float rounding (assignments can differ only
where two parts tie to ~1e-7).

They are compiled on first use with the system's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``; ~1 s) and
cached in ``$AAFORMER_HF_CACHE/kernels`` (``~/.cache/aaformer-hf/kernels``; a private temporary folder where that
cannot be written), one file per source, compiler, CPU (it is built for the CPU it runs on) and OpenMP runtime: it
links to the one PyTorch has loaded, so that it runs on PyTorch's thread pool, whose workers spin between operators
(a thread of its own would share a core with one); where none is found (not Linux) it runs on one thread. Plain C
through ``ctypes``, not a ``torch.utils.cpp_extension``: no PyTorch headers, so no minute-long build and no
``ninja``. Where no compiler works, or with ``AAFORMER_HF_CPU_KERNEL=0``, the PyTorch code runs as before;
``status()`` says which and why.

They cover what AAformer runs by default: float32, the assignment computed here (not given) by Sinkhorn on cosine
scores with ε >= 0.05, either ``part_self_key``. Other settings and dtypes, torch.compile, tracing, and calls that
autograd would record (the layer's operator calls them with its own backward) take the PyTorch code.
"""
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from ..files import cache_root

__all__ = ['applies', 'part_rows', 'backward_applies', 'part_rows_backward', 'status', 'enabled']

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name('cpu_part_rows.c')
MAX_PARTS = 64  # as in the C source
# -march=native: built for this CPU (the cache key holds the CPU); retried without it for compilers that lack it
ARCH_FLAGS = (['-march=native'], [])
COMMON_FLAGS = ['-O3', '-std=gnu11', '-fPIC']

# False switches the C functions off for this process (tests compare both paths); AAFORMER_HF_CPU_KERNEL=0 does so
# before they are ever compiled
enabled = os.environ.get('AAFORMER_HF_CPU_KERNEL', '1').strip().lower() not in ('0', 'false', 'no', 'off')

_lock = threading.Lock()
_library: Optional[ctypes.CDLL] = None
_status = 'not loaded yet'


_TENSOR_STRIDES = ('q_sb', 'q_sh', 'q_sl', 'k_sb', 'k_sh', 'k_sl', 'v_sb', 'v_sh', 'v_sl')


class _Job(ctypes.Structure):
    """The C ``Job``: field for field, in order."""
    _fields_ = ([('q', ctypes.c_void_p), ('k', ctypes.c_void_p), ('v', ctypes.c_void_p)]
                + [(name, ctypes.c_int64) for name in _TENSOR_STRIDES]
                + [('out', ctypes.c_void_p), ('o_sb', ctypes.c_int64), ('o_sl', ctypes.c_int64),
                   ('o_sh', ctypes.c_int64), ('assigned', ctypes.c_void_p), ('group_sizes', ctypes.c_void_p)]
                + [(name, ctypes.c_int64) for name in ('batch', 'heads', 'dim', 'parts', 'patches', 'groups', 'iters',
                                                       'self_key_always')]
                + [('epsilon', ctypes.c_float), ('scale', ctypes.c_float)])


class _BackwardJob(ctypes.Structure):
    """The C ``BackwardJob``: field for field, in order."""
    _fields_ = ([('q', ctypes.c_void_p), ('k', ctypes.c_void_p), ('v', ctypes.c_void_p)]
                + [(name, ctypes.c_int64) for name in _TENSOR_STRIDES]
                + [('grad_out', ctypes.c_void_p), ('g_sb', ctypes.c_int64), ('g_sl', ctypes.c_int64),
                   ('g_sh', ctypes.c_int64), ('assigned', ctypes.c_void_p), ('grad_q', ctypes.c_void_p),
                   ('grad_k', ctypes.c_void_p), ('grad_v', ctypes.c_void_p)]
                + [(name, ctypes.c_int64) for name in ('batch', 'heads', 'dim', 'parts', 'patches', 'self_key_always')]
                + [('scale', ctypes.c_float)])


def status() -> str:
    """'loaded: <file>', 'off: <why>' or 'not loaded yet' (it loads on first use)."""
    if not enabled:
        return 'off: switched off (AAFORMER_HF_CPU_KERNEL=0 or cpu_part_rows.enabled = False)'
    return _status


def _compilers():
    names = [os.environ['CC']] if os.environ.get('CC') else []
    return [path for path in dict.fromkeys(shutil.which(name) for name in names + ['cc', 'gcc', 'clang']) if path]


def _cpu_identity() -> str:
    """What the compiled file depends on beyond source and compiler: the CPU's model and features."""
    try:
        lines = Path('/proc/cpuinfo').read_text().splitlines()
        wanted = [line for line in lines if line.split(':')[0].strip() in ('model name', 'flags', 'Features')]
        return '\n'.join(dict.fromkeys(wanted))
    except OSError:
        return f'{platform.machine()} {platform.processor()}'


def _openmp_runtime() -> Optional[str]:
    """The file of the OpenMP runtime PyTorch calls (Linux), to build against: its thread pool is then the one the C
    function runs on. Found by where libtorch_cpu's ``omp_get_max_threads`` resolves to - not by name: other
    packages bring runtimes of their own (faiss its own libgomp)."""
    library = Path(torch.__file__).parent / 'lib' / 'libtorch_cpu.so'
    try:
        address = ctypes.cast(ctypes.CDLL(str(library)).omp_get_max_threads, ctypes.c_void_p).value
        with open('/proc/self/maps') as maps:
            for line in maps:
                fields = line.rstrip('\n').split(maxsplit=5)  # the path (field 6) may hold spaces
                start, end = (int(bound, 16) for bound in fields[0].split('-'))
                if start <= address < end and len(fields) == 6 and fields[5].startswith('/'):
                    return fields[5]
    except (OSError, AttributeError, ValueError):
        pass  # not Linux, no such library, PyTorch without OpenMP
    return None


def _compile(compiler: str, flags: Sequence[str], openmp: Optional[str], target: Path) -> None:
    """Compiles SOURCE into ``target`` atomically (concurrent processes each write their own file, then rename):
    with ``openmp``, against that runtime (compiled with -fopenmp, linked to that file rather than the compiler's
    own libgomp); without, single-threaded."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix='.build-') as build:
        obj, library = os.path.join(build, 'cpu_part_rows.o'), os.path.join(build, 'cpu_part_rows.so')
        threads = ['-fopenmp'] if openmp else ['-fopenmp-simd']
        run = dict(check=True, capture_output=True, timeout=120)
        subprocess.run([compiler, *flags, *COMMON_FLAGS, *threads, '-c', '-o', obj, str(SOURCE)], **run)
        link = [openmp, f'-Wl,-rpath,{os.path.dirname(openmp)}'] if openmp else []
        subprocess.run([compiler, '-shared', '-o', library, obj, *link, '-lm'], **run)
        os.replace(library, target)


def _load() -> Optional[ctypes.CDLL]:
    global _library, _status
    with _lock:
        if _library is not None or _status != 'not loaded yet':
            return _library
        compilers = _compilers()
        if not compilers:
            _status = 'off: no C compiler found ($CC, cc, gcc, clang); the PyTorch path runs'
            logger.info('aaformer-hf: %s', _status)
            return None
        try:
            source = SOURCE.read_bytes()
        except OSError as error:
            _status = f'off: cannot read the C source ({error}); the PyTorch path runs'
            logger.warning('aaformer-hf: %s', _status)
            return None
        runtime = _openmp_runtime()
        folder, writable = _cache_folder()
        private = None  # where the cache cannot be written: a private folder for this process
        errors = []
        for compiler in compilers:
            for openmp in dict.fromkeys([runtime, None]):
                for flags in ARCH_FLAGS:
                    key = hashlib.sha256(b'\0'.join([source, compiler.encode(), ' '.join(flags).encode(),
                                                     str(openmp).encode(), _compiler_version(compiler),
                                                     _cpu_identity().encode()]))
                    name = f'cpu_part_rows-{key.hexdigest()[:20]}.so'
                    target = folder / name
                    try:
                        if not target.is_file():
                            if not writable:
                                private = private or Path(tempfile.mkdtemp(prefix='aaformer-hf-kernels-'))
                                target = private / name
                            _compile(compiler, flags, openmp, target)
                        library = ctypes.CDLL(str(target))
                        library.part_rows_cpu.argtypes = [ctypes.POINTER(_Job), ctypes.c_int64]
                        library.part_rows_backward_cpu.argtypes = [ctypes.POINTER(_BackwardJob), ctypes.c_int64]
                        library.part_rows_cpu.restype = library.part_rows_backward_cpu.restype = ctypes.c_int
                    except (OSError, AttributeError, subprocess.SubprocessError) as error:
                        stderr = getattr(error, 'stderr', b'') or b''
                        errors.append(f'{compiler} {" ".join(flags)} (OpenMP: {openmp}): {error} '
                                      f'{stderr.decode(errors="replace")[-300:]}')
                        continue
                    threads = f"PyTorch's OpenMP threads ({openmp})" if openmp else 'one thread (no OpenMP runtime)'
                    _library, _status = library, f'loaded: {target}, on {threads}'
                    if private:
                        _status += f' (the cache {folder} cannot be written: built for this process only)'
                    return library
        _status = 'off: compiling cpu_part_rows.c failed; the PyTorch path runs. ' + ' | '.join(errors)
        logger.warning('aaformer-hf: %s', _status)
        return None


def _cache_folder() -> Tuple[Path, bool]:
    """The cache folder of compiled files, and whether it can be written (a read-only one, e.g. baked into a
    container image, is still read)."""
    folder = cache_root() / 'kernels'
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe, probe_path = tempfile.mkstemp(dir=folder, prefix='.probe-')
        os.close(probe)
        os.unlink(probe_path)
        return folder, True
    except OSError:
        return folder, False


def _compiler_version(compiler: str) -> bytes:
    try:
        return subprocess.run([compiler, '--version'], capture_output=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return b''


def _takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_parts: int, *others: torch.Tensor) -> bool:
    """What both C functions need (and loads them on first use): float32 CPU tensors (not FakeTensors or other
    subclasses) with unit stride along d, q, k, v of one (B, H, L, d) shape with at least one image, head and patch,
    not while compiling or tracing."""
    if not enabled or not all(type(t) is torch.Tensor and t.device.type == 'cpu' and t.dtype == torch.float32
                              and t.stride(-1) == 1 for t in (q, k, v, *others)):
        return False
    b, h, seq_len, _ = q.shape
    if k.shape != q.shape or v.shape != q.shape or not 0 < num_parts <= MAX_PARTS:
        return False
    if b * h == 0 or seq_len <= 1 + num_parts or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return _load() is not None


def _qkv_fields(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple:
    """The Job structs' leading fields: q, k, v's addresses and their (B, H, L) strides."""
    return (q.data_ptr(), k.data_ptr(), v.data_ptr(), *q.stride()[:3], *k.stride()[:3], *v.stride()[:3])


def applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, assigned: Optional[torch.Tensor], nearest: bool,
            cosine: bool, epsilon: float, iters: int, num_parts: int) -> bool:
    """Whether the C function computes these [PART] rows (``_takes``), with no gradient to record and the assignment
    computed here by Sinkhorn on cosine scores with ε >= 0.05 (the exp-domain iterations)."""
    if assigned is not None or nearest or not cosine or epsilon < 0.05 or iters < 1:
        return False
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    return _takes(q, k, v, num_parts)


def part_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, part_groups: Sequence[int], epsilon: float,
              iters: int, self_key_always: bool, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The [PART] rows (B, P, H, d) and the assignment (B, H, P, N) bool, for q, k, v where ``applies``."""
    b, h, seq_len, d = q.shape
    p = sum(part_groups)
    n = seq_len - 1 - p
    rows = torch.empty(b, p, h, d, dtype=q.dtype)
    assigned = torch.empty(b, h, p, n, dtype=torch.bool)
    group_sizes = (ctypes.c_int64 * len(part_groups))(*part_groups)
    job = _Job(*_qkv_fields(q, k, v), rows.data_ptr(), *rows.stride()[:3], assigned.data_ptr(),
               ctypes.addressof(group_sizes), b, h, d, p, n, len(part_groups), iters, int(self_key_always), epsilon,
               scale)
    if _library.part_rows_cpu(ctypes.byref(job), max(1, torch.get_num_threads())):
        raise MemoryError('cpu_part_rows: no memory for its scratch buffers')
    return rows, assigned


def backward_applies(grad_merged: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     assigned: torch.Tensor) -> bool:
    """Whether the C function computes the [PART] rows' backward (``_takes``): the output gradient (B, L, H, d) and
    the (B, H, P, N) assignment contiguous."""
    b, h, seq_len, d = q.shape
    p = assigned.shape[-2]
    if grad_merged.shape != (b, seq_len, h, d):
        return False
    if not (assigned.dtype == torch.bool and assigned.is_contiguous() and assigned.shape == (b, h, p, seq_len - 1 - p)):
        return False
    return _takes(q, k, v, p, grad_merged)


def part_rows_backward(grad_merged: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       assigned: torch.Tensor, self_key_always: bool, scale: float
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of q, k, v (B, H, L, d) from the [PART] rows' output gradient (rows 1..P of ``grad_merged``
    (B, L, H, d)), where ``backward_applies``: (B, L, H, d) tensors seen as (B, H, L, d), as q, k, v are."""
    b, h, seq_len, d = q.shape
    p = assigned.shape[-2]
    grads = [torch.empty(b, seq_len, h, d, dtype=q.dtype) for _ in range(3)]
    job = _BackwardJob(*_qkv_fields(q, k, v), grad_merged.data_ptr(), *grad_merged.stride()[:3], assigned.data_ptr(),
                       *(grad.data_ptr() for grad in grads), b, h, d, p, seq_len - 1 - p, int(self_key_always), scale)
    if _library.part_rows_backward_cpu(ctypes.byref(job), max(1, torch.get_num_threads())):
        raise MemoryError('cpu_part_rows: no memory for its scratch buffers')
    return tuple(grad.transpose(1, 2) for grad in grads)
