"""Print training runs side by side from their metrics.json files (a markdown table).

    python examples/report_runs.py B=outputs/synthetic_pivl/B "B+P+F=outputs/synthetic_pivl/B+P+F"

Several folders for one label (``LABEL=DIR1,DIR2,DIR3``, e.g. one per seed) print as the mean with the range,
``mean (min-max)``, and the number of runs.
"""
import argparse
import json
from pathlib import Path
from typing import List, Optional, Sequence

COLUMNS = (('R1', 'rank1'), ('R5', 'rank5'), ('R10', 'rank10'), ('mAP', 'mAP'), ('mINP', 'mINP'))


def _metrics(folder: str) -> dict:
    path = Path(folder) / 'metrics.json'
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no metrics.json (did that run finish?)')
    return json.loads(path.read_text())


def _cell(values: List[float]) -> str:
    mean = 100 * sum(values) / len(values)
    if len(values) == 1:
        return f'{mean:.1f}'
    return f'{mean:.1f} ({100 * min(values):.1f}-{100 * max(values):.1f})'


def table(runs: Sequence[str]) -> str:
    """``runs``: LABEL=OUTPUT_DIR[,OUTPUT_DIR...] (or OUTPUT_DIR, labelled by its name); a missing metrics.json is an
    error. With several folders per label, a column ``runs`` says how many."""
    parsed = []
    for run in runs:
        label, _, folders = run.rpartition('=') if '=' in run else (Path(run).name, '', run)
        parsed.append((label, [_metrics(folder) for folder in folders.split(',')]))
    several = any(len(metrics) > 1 for _, metrics in parsed)
    names = [name for name, _ in COLUMNS] + (['runs'] if several else [])
    rows = ['| run | ' + ' | '.join(names) + ' |', '|---|' + '---:|' * len(names)]
    for label, metrics in parsed:
        cells = [_cell([m[key] for m in metrics]) for _, key in COLUMNS] + ([str(len(metrics))] if several else [])
        rows.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(rows)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help='LABEL=OUTPUT_DIR[,OUTPUT_DIR...] or OUTPUT_DIR')
    args = parser.parse_args(argv)
    try:
        print(table(args.runs))
    except FileNotFoundError as error:
        parser.error(str(error))


if __name__ == '__main__':
    main()
