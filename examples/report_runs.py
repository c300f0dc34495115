"""Print training runs side by side from their metrics.json files (a markdown table).

    python examples/report_runs.py B=outputs/synthetic_pivl/B "B+P+F=outputs/synthetic_pivl/B+P+F"
"""
import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

COLUMNS = (('R1', 'rank1'), ('R5', 'rank5'), ('R10', 'rank10'), ('mAP', 'mAP'), ('mINP', 'mINP'))


def table(runs: Sequence[str]) -> str:
    """``runs``: LABEL=OUTPUT_DIR (or OUTPUT_DIR, labelled by its name); a missing metrics.json is an error."""
    rows = ['| run | ' + ' | '.join(name for name, _ in COLUMNS) + ' |', '|---|' + '---:|' * len(COLUMNS)]
    for run in runs:
        label, _, folder = run.rpartition('=') if '=' in run else (Path(run).name, '', run)
        path = Path(folder) / 'metrics.json'
        if not path.is_file():
            raise FileNotFoundError(f'{path}: no metrics.json (did that run finish?)')
        metrics = json.loads(path.read_text())
        rows.append(f'| {label} | ' + ' | '.join(f'{100 * metrics[key]:.1f}' for _, key in COLUMNS) + ' |')
    return '\n'.join(rows)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help='LABEL=OUTPUT_DIR or OUTPUT_DIR')
    args = parser.parse_args(argv)
    try:
        print(table(args.runs))
    except FileNotFoundError as error:
        parser.error(str(error))


if __name__ == '__main__':
    main()
