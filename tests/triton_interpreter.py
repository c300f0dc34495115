"""Running a test module's Triton kernels without a GPU: the same tests again in a subprocess with TRITON_INTERPRET=1,
where Triton's interpreter runs the kernel source on the CPU (numpy semantics: it checks the algorithm, masking and
indexing, not GPU-only constraints or speed). The interpreter must be chosen before triton is first imported, hence
the subprocess."""
import os
import subprocess
import sys

INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'


def rerun_interpreted(test_file: str, runner_test: str, parent_only: tuple = ()) -> None:
    """Every test of ``test_file`` except ``runner_test`` (the one calling this) and the ``parent_only`` ones (which
    cannot run interpreted), interpreted; all must pass and none may skip."""
    deselect = ' and '.join(f'not {name}' for name in (runner_test, *parent_only))
    result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', test_file,
                             '-k', deselect],
                            env=dict(os.environ, TRITON_INTERPRET='1'), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert ' passed' in result.stdout and 'skipped' not in result.stdout, result.stdout[-2000:]
