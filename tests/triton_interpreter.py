"""Running a test module's Triton kernels without a GPU: the same tests again in a subprocess with TRITON_INTERPRET=1,
where Triton's interpreter runs the kernel source on the CPU (numpy semantics: it checks the algorithm, masking and
indexing, not GPU-only constraints or speed). The interpreter must be chosen before triton is first imported, hence
the subprocess."""
import os
import subprocess
import sys

import pytest
import torch

INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'


@pytest.fixture
def device(monkeypatch):
    """Where the kernels run: 'cuda' on a GPU; in the interpreter 'cpu', with the device check of
    ``aaformer_hf.layers.part_rows`` letting CPU tensors through; otherwise the test is skipped (the module's
    interpreter runner runs it)."""
    if torch.cuda.is_available():
        return 'cuda'
    if not INTERPRETED:
        pytest.skip('no GPU: run on the CPU by test_kernel_in_triton_interpreter, in a subprocess')
    from aaformer_hf.layers import part_rows
    monkeypatch.setattr(part_rows, 'triton_available', lambda tensor: True)  # CPU tensors, interpreted kernels
    return 'cpu'


def rerun_interpreted(test_file: str, runner_test: str, parent_only: tuple = ()) -> None:
    """Every test of ``test_file`` except ``runner_test`` (the one calling this) and the ``parent_only`` ones (which
    cannot run interpreted), interpreted; all must pass and none may skip."""
    deselect = ' and '.join(f'not {name}' for name in (runner_test, *parent_only))
    result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', test_file,
                             '-k', deselect],
                            env=dict(os.environ, TRITON_INTERPRET='1'), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert ' passed' in result.stdout and 'skipped' not in result.stdout, result.stdout[-2000:]
