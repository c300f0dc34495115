"""Training: the config (YAML + flags), PK loaders with position-seeded augmentation, and the accelerate loop."""
from typing import Optional, Sequence

from .config import BASELINES, TrainConfig, parse_config
from .loop import FAMILIES, Family, build_model, lr_at, retrieval_metrics, train

__all__ = ['BASELINES', 'FAMILIES', 'Family', 'TrainConfig', 'build_model', 'format_summary', 'lr_at', 'main',
           'parse_config', 'retrieval_metrics', 'train']


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """``examples/train.py``'s entry point: parse the config and flags, train, print the final table."""
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    logging.getLogger('accelerate').setLevel(logging.WARNING)  # one line per saved file otherwise
    if not sys.stderr.isatty():  # a log file: no progress bars from the libraries either (ours follow tqdm's rule)
        import datasets
        import huggingface_hub.utils
        import transformers
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()
        datasets.disable_progress_bars()
    try:
        summary = train(parse_config(argv))
    except (ValueError, OSError, RuntimeError, FloatingPointError, NotImplementedError) as error:
        if type(error).__module__.split('.')[0] not in ('aaformer_hf', 'builtins'):
            raise  # another library's error: its traceback is the useful part
        # what a user can fix (a bad value, a missing file, a folder in use): the message, not a traceback
        print(f'examples/train.py: error: {error}', file=sys.stderr)
        raise SystemExit(2) from None
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    rows = [('R1', 'rank1'), ('R5', 'rank5'), ('R10', 'rank10'), ('mAP', 'mAP'), ('mINP', 'mINP')]
    dataset = summary['dataset'] + (' (SYNTHETIC images: says nothing about real re-ID accuracy)'
                                    if summary['dataset'] == 'synthetic' else '')
    variant = summary['model'] + (f', baseline {summary["baseline"]}' if summary['baseline'] else '')
    evaluations = {'': ''} if 'rerank_mAP' not in summary else {'plain': '', 're-ranked': 'rerank_'}
    label = (lambda text: f'| {text} ') if len(evaluations) > 1 else (lambda text: '')
    table = [label('') + '| ' + ' | '.join(name for name, _ in rows) + ' |',
             label('---') + '|' + '---:|' * len(rows)]
    table += [label(name) + '| ' + ' | '.join(f'{100 * summary[prefix + key]:.1f}' for _, key in rows) + ' |'
              for name, prefix in evaluations.items()]
    lines = [f'{variant} on {dataset}', *table,
             f'{summary["num_valid_queries"]} valid queries, {summary["epochs"]} epochs' + (
                 f', {summary["images_per_second"]:.1f} images/s (data wait {100 * summary["data_wait_share"]:.0f} %)'
                 if summary['images_per_second'] else ''),
             f'model folder: {summary["model_dir"]}  (AutoModel.from_pretrained or timm pretrained_cfg_overlay file)']
    return '\n'.join(lines)
