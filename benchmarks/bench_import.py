"""Start-up cost: wall time of import statements, each in a fresh interpreter (median of --repeats runs).

    python benchmarks/bench_import.py [--repeats 7]

Prints one row per statement and which heavy libraries (transformers, torchvision, datasets, accelerate) each one
pulled in, so a lazy-import regression shows up as a library appearing where it should not.
"""
import argparse
import statistics
import subprocess
import sys

STATEMENTS = [
    'import torch',
    'import aaformer_hf',
    'import aaformer_hf, timm; timm.create_model("aaformer_tiny")',
    'from aaformer_hf.reid.evaluation import evaluate',
    'from aaformer_hf.data import PKSampler',
    'from aaformer_hf.reid.losses import identity_loss',
]
HEAVY = ('transformers', 'torchvision', 'datasets', 'accelerate', 'timm')

PROBE = '''
import sys, time
start = time.perf_counter()
exec({statement!r})
elapsed = time.perf_counter() - start
print(elapsed, ','.join(m for m in {heavy!r} if m in sys.modules))
'''


def measure(statement: str, repeats: int):
    times, loaded = [], ''
    for _ in range(repeats):
        out = subprocess.run([sys.executable, '-c', PROBE.format(statement=statement, heavy=HEAVY)],
                             capture_output=True, text=True, check=True).stdout.split()
        times.append(float(out[0]))
        loaded = out[1] if len(out) > 1 else ''
    return statistics.median(times), loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    print(f'| statement | median s ({args.repeats} fresh interpreters) | heavy libraries imported |')
    print('|---|---:|---|')
    for statement in STATEMENTS:
        seconds, loaded = measure(statement, args.repeats)
        print(f'| `{statement}` | {seconds:.2f} | {loaded or "-"} |')


if __name__ == '__main__':
    main()
