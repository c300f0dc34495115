# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Model cards for saved re-ID models, generated with huggingface_hub's ``ModelCard`` / ``ModelCardData`` /
``EvalResult``: the model-index holds only what was measured for the weights (from the ``metrics.json`` training
wrote); the papers' own numbers appear in a separate table labelled as reported by the paper.

``python -m aaformer_hf.hub.cards FOLDER [--repo_id ORG/NAME] [--metrics FILE]`` writes ``FOLDER/README.md``;
``python -m aaformer_hf.hub.cards --planned DIR`` writes the cards of the planned checkpoints (``model_cards/``).
"""
import argparse
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..files import atomic_path
from ..hf import FAMILIES  # each family's card facts and reported numbers; importing hf registers the families
from .folders import folder_config, read_metrics, run_metrics, timm_folder_config

__all__ = ['model_card', 'student_card', 'card_for_folder', 'student_card_for_folder', 'planned_cards', 'write_card',
           'DATASETS', 'main']

TASK = dict(task_type='image-feature-extraction', task_name='Person Re-Identification')
# the dataset names training records (aaformer_hf.data's loaders) -> how cards name them
DATASETS = {
    'market1501': 'Market-1501', 'msmt17': 'MSMT17', 'dukemtmc': 'DukeMTMC-reID', 'cuhk03': 'CUHK03-NP',
    'occluded_duke': 'Occluded-DukeMTMC', 'synthetic': 'aaformer-hf synthetic re-ID set',
}
_METRICS = (('rank1', 'Rank-1'), ('rank5', 'Rank-5'), ('rank10', 'Rank-10'), ('mAP', 'mAP'), ('mINP', 'mINP'))


_FAMILY_USAGE = """```python
import aaformer_hf  # registers the models with timm and transformers (no trust_remote_code needed)
import timm
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained('{repo_id}').eval()            # transformers
processor = AutoImageProcessor.from_pretrained('{repo_id}')
features = model(**processor(images, return_tensors='pt')).pooler_output  # (batch, {embedding_size})

model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()  # or timm: the same weights
```
"""
# a plain timm backbone (π-VL's Table 5 student): timm's own format, which transformers' timm wrapper also reads
_TIMM_USAGE = """```python
import timm  # aaformer-hf is not needed for this model
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained('{repo_id}').eval()            # transformers (its timm wrapper)
processor = AutoImageProcessor.from_pretrained('{repo_id}')
features = model(**processor(images, return_tensors='pt')).pooler_output  # (batch, {embedding_size})

model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()  # or timm: the same weights
features = model.forward_head(model.forward_features(pixels), pre_logits=True)
```
"""
_STUDENT_SUMMARY = (
    'A `{architecture}` backbone (timm) trained for person re-identification as in Table 5 of {paper} '
    '([arXiv {arxiv}](https://arxiv.org/abs/{arxiv})): its training (stage 2) also learned from the text features of '
    'prompts that a CLIP teacher learned in stage 1 ({teacher}). The re-ID feature is the backbone\'s pooled feature; '
    'the training-only re-ID head is not part of these weights. Trained with the `aaformer-hf` training example.')


def model_card(config, repo_id: str, metrics: Optional[Dict[str, Any]] = None, dataset: Optional[str] = None,
               status: Optional[str] = None, selection: Optional[str] = None) -> ModelCard:
    """The card of a saved model with this transformers ``config`` (a registered family's), to live at
    ``repo_id``. ``metrics``: a ``metrics.json`` training wrote (fractions; its ``dataset``, ``epochs``, ...), whose
    R1/R5/R10/mAP/mINP become the model-index; ``dataset`` when there are no metrics; ``status``: a line shown at the
    top (e.g. that the weights are not published yet); ``selection``: how the weights were chosen (best epoch)."""
    if config.model_type not in FAMILIES:
        raise ValueError(f'no model card text for model_type {config.model_type!r} (known: {sorted(FAMILIES)})')
    family = FAMILIES[config.model_type]
    metrics = _flat_metrics(metrics or {})
    dataset = _dataset_of(metrics) or dataset
    dataset_name = DATASETS.get(dataset, dataset or 'unknown data')
    measured, eval_results = _measured(metrics, dataset, dataset_name)
    name = f'{family.name} ({config.model_type}) on {dataset_name}'
    # a measured model states what it started from; a planned one the recipe's initialisation
    base_model = family.base_model if status is not None else _base_model(metrics)
    card_data = ModelCardData(
        model_name=name, library_name='aaformer-hf', license='apache-2.0', pipeline_tag='image-feature-extraction',
        tags=['timm', 'transformers', 'person-reid', 're-identification', config.model_type],
        base_model=base_model, eval_results=eval_results)
    return _render(
        card_data, repo_id, status, pretrained_cfg=config.timm_hub_keys()['pretrained_cfg'],
        summary=f'{family.summary} Paper: {family.paper} ([arXiv {family.arxiv}](https://arxiv.org/abs/'
                f'{family.arxiv})); implementation: the `aaformer-hf` package (timm and transformers).',
        usage=_FAMILY_USAGE.format(repo_id=repo_id, embedding_size=config.embedding_size),
        training=_training_text(metrics, dataset_name, selection),
        measured=_measured_text(measured, metrics, dataset, dataset_name),
        reported=_reported_text(family.reported.get(dataset, ()), family, dataset_name),
        citation=family.citation)


def student_card(timm_config: Dict[str, Any], repo_id: str, metrics: Optional[Dict[str, Any]] = None,
                 selection: Optional[str] = None) -> ModelCard:
    """The card of a plain timm backbone trained as π-VL's Table 5 student (``examples/train.py --student_model``):
    ``timm_config`` is its folder's timm ``config.json``, ``metrics`` the run's ``metrics.json``. It loads with timm
    alone (or transformers' timm wrapper); the paper's Table 5 numbers are not repeated (other students, real data)."""
    metrics = metrics or {}
    architecture = timm_config.get('architecture')
    if not architecture or 'pretrained_cfg' not in timm_config:
        raise ValueError('not a timm model config (no architecture / pretrained_cfg)')
    family = FAMILIES['pivl']  # the students of π-VL's Table 5
    metrics = _flat_metrics(metrics)
    dataset = _dataset_of(metrics)
    dataset_name = DATASETS.get(dataset, dataset or 'unknown data')
    measured, eval_results = _measured(metrics, dataset, dataset_name)
    teacher = _teacher_text(metrics)
    name = f'{architecture} re-ID student on {dataset_name}'
    card_data = ModelCardData(
        model_name=name, library_name='timm', license='apache-2.0', pipeline_tag='image-feature-extraction',
        tags=['timm', 'transformers', 'person-reid', 're-identification', 'pivl-student'], eval_results=eval_results)
    return _render(
        card_data, repo_id, None, pretrained_cfg=timm_config['pretrained_cfg'],
        summary=_STUDENT_SUMMARY.format(architecture=architecture, paper=family.paper, arxiv=family.arxiv,
                                        teacher=teacher),
        usage=_TIMM_USAGE.format(repo_id=repo_id, embedding_size=timm_config.get('num_features', 'D')),
        training=_training_text(metrics, dataset_name, selection),
        measured=_measured_text(measured, metrics, dataset, dataset_name), reported='', citation=family.citation)


def _flat_metrics(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """A metrics dict as training writes it; ``aaformer-hf evaluate --json`` nests its plain metrics under 'plain'."""
    if isinstance(metrics.get('plain'), dict) and 'mAP' not in metrics:
        return {**metrics, **metrics['plain']}
    return metrics


def _dataset_of(metrics: Dict[str, Any]) -> Optional[str]:
    """The dataset the metrics were measured on; a set the synthetic generator wrote is 'synthetic' whichever loader
    read it (its root says so), never the benchmark whose layout it copies."""
    from ..data.synthetic import is_synthetic

    root = metrics.get('data_root') or metrics.get('root')
    if root and Path(root).is_dir() and is_synthetic(Path(root)):
        return 'synthetic'
    return metrics.get('dataset')


def _base_model(metrics: Dict[str, Any]) -> Optional[str]:
    """The Hub checkpoint the weights started from, when the run recorded one (``init`` in metrics.json)."""
    init = metrics.get('init') or {}
    return init.get('hub_id') if init.get('kind') == 'hub' else None


def _init_text(metrics: Dict[str, Any]) -> Optional[str]:
    init = metrics.get('init')
    if not isinstance(init, dict):
        return None
    return {'hub': f'initialised from `{init.get("hub_id")}` (timm)',
            'file': f'initialised from a local checkpoint file (`{init.get("file")}`)',
            'random': 'trained from a random initialisation (no pretrained weights)'}.get(init.get('kind'))


def _teacher_text(metrics: Dict[str, Any]) -> str:
    """What the student learned from, as the run's metrics.json records it (stage 1's steps and the prompt kinds)."""
    if metrics.get('stage1_step') == 0:
        return 'here none: stage 1 did not run, so this is the student trained alone'
    prompts = {'off': 'CLIP-ReID\'s identity prompts', 'label': 'identity prompts and parsing-label part prompts',
               'identity': 'π-VL\'s identity-aware part prompts'}.get(metrics.get('part_prompts'), 'prompts')
    alignment = {'pyramid': ' and the hierarchical-fusion alignment',
                 'linear': ' and a 1x1 alignment head'}.get(metrics.get('alignment_head'), '')
    return f'{prompts}{alignment}, from the teacher {metrics.get("model", "(unknown)")}'


def _measured(metrics: Dict[str, Any], dataset: Optional[str], dataset_name: str):
    """(key, label, percent) of each metric training measured, and the model-index entries made of them."""
    measured = [(key, label, 100 * float(metrics[key])) for key, label in _METRICS if metrics.get(key) is not None]
    eval_results = [EvalResult(**TASK, dataset_type=dataset, dataset_name=dataset_name, metric_type=key,
                               metric_name=label, metric_value=round(value, 2))
                    for key, label, value in measured] or None
    return measured, eval_results


def _render(card_data: ModelCardData, repo_id: str, status: Optional[str], pretrained_cfg: Dict[str, Any],
            **text: str) -> ModelCard:
    template = resources.files('aaformer_hf.hub').joinpath('templates/model_card.md').read_text(encoding='utf-8')
    height, width = pretrained_cfg['input_size'][-2:]
    return ModelCard.from_template(
        card_data, template_str=template, title=card_data.model_name, repo_id=repo_id, status=status,
        height=height, width=width, interpolation=pretrained_cfg['interpolation'],
        mean=_numbers(pretrained_cfg['mean']), std=_numbers(pretrained_cfg['std']), **text)


def card_for_folder(folder: Union[str, Path], repo_id: Optional[str] = None, metrics_file: Optional[Path] = None):
    """The generated card of a saved model folder (``python -m aaformer_hf.hub.cards FOLDER``)."""
    folder = Path(folder)
    timm_config = timm_folder_config(folder)
    config = folder_config(folder) if timm_config is None else None
    if metrics_file is not None:
        metrics, selection = read_metrics(Path(metrics_file)), None
    else:
        metrics, selection = run_metrics(folder)
    if timm_config is not None:
        return student_card_for_folder(folder, timm_config, repo_id or folder.resolve().name, metrics, selection)
    return model_card(config, repo_id or folder.resolve().name, metrics=metrics, selection=selection)


def student_card_for_folder(folder: Path, timm_config: Dict[str, Any], repo_id: str, metrics, selection):
    """The card of a plain timm folder, which must be a student examples/train.py trained (its metrics say so)."""
    if not (metrics or {}).get('student_model'):
        raise ValueError(f'{folder}: a plain timm model, but not one examples/train.py trained as a student (no '
                         'metrics.json naming a student_model beside it); add a README.md model card to the folder '
                         'or give the run\'s metrics')
    return student_card(timm_config, repo_id, metrics=metrics, selection=selection)


def write_card(card: ModelCard, path: Path) -> Path:
    """Write ``card`` to ``path`` so that a reader never sees half a card."""
    with atomic_path(path) as tmp:
        tmp.write_text(str(card), encoding='utf-8')
    return Path(path)


def planned_cards(out_dir: Path, org: str = 'aaformer-hf') -> List[Path]:
    """Write the cards of the planned checkpoints (each family's ``planned_datasets``) to ``out_dir``, named like
    their repos."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for model_type, dataset in ((f.model_type, d) for f in FAMILIES.values() for d in f.planned_datasets):
        name = f'{model_type}-{dataset.replace("_", "-")}'
        card = model_card(FAMILIES[model_type].config_class(), f'{org}/{name}', dataset=dataset,
                          status='Planned checkpoint: these weights are not published yet. The numbers below are '
                                 'the paper\'s, for the paper\'s own model; none were measured for this repo.')
        written.append(write_card(card, out_dir / f'{name}.md'))
    return written


def _numbers(values: Sequence[float]) -> str:
    return '(' + ', '.join(f'{v:.4g}' for v in values) + ')'


def _training_text(metrics: Dict[str, Any], dataset_name: str, selection: Optional[str]) -> str:
    if not metrics:
        return (f'To be trained on {dataset_name} with `accelerate launch examples/train.py` (the recipe of the paper, '
                'see the aaformer-hf README).')
    lines = [f'- data: {dataset_name}' + (f', {metrics["train_images"]} training images seen'
                                          if metrics.get('train_images') else '')]
    recipe = ', '.join(f'{key} {metrics[key]}' for key in ('method', 'pivl_ablation', 'model', 'student_model',
                                                          'baseline', 'epochs', 'processes') if metrics.get(key))
    if recipe:
        lines.append(f'- recipe: {recipe} (`accelerate launch examples/train.py`, aaformer-hf)')
    init = _init_text(metrics)
    lines.append(f'- weights {init}' if init else '- initialisation: not recorded with these metrics')
    if selection:
        lines.append(f'- weights: {selection}')
    return '\n'.join(lines)


def _measured_text(measured, metrics: Dict[str, Any], dataset: Optional[str], dataset_name: str) -> str:
    if not measured:
        return 'No results measured for these weights yet.'
    warning = ('\n\n**Synthetic images**: these numbers show the training pipeline works; they say nothing about '
               'accuracy on real people.' if dataset == 'synthetic' else '')
    queries = f', {metrics["num_valid_queries"]} queries' if metrics.get('num_valid_queries') else ''
    return (f'Measured for these weights on {dataset_name}{queries} (single query, Euclidean distance, no '
            're-ranking):\n\n' + _table([('these weights', {k: v for k, _, v in measured})]) + warning)


def _reported_text(rows, family, dataset_name: str) -> str:
    if not rows:
        return ''
    table = _table([(label, values) for label, values, _ in rows])
    where = ', '.join(sorted({where for _, _, where in rows}))
    return f'{family.paper}, {where}, on {dataset_name}:\n\n{table}'


def _table(rows: Sequence[Tuple[str, Dict[str, float]]]) -> str:
    columns = [(key, label) for key, label in _METRICS if any(key in values for _, values in rows)]
    lines = ['| | ' + ' | '.join(label for _, label in columns) + ' |', '|---|' + '---:|' * len(columns)]
    lines += [f'| {name} | ' + ' | '.join(f'{values[key]:.1f}' if key in values else '-' for key, _ in columns) + ' |'
              for name, values in rows]
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or 'python -m aaformer_hf.hub.cards', description=__doc__.split('\n\n')[0],
        epilog='examples:\n  python -m aaformer_hf.hub.cards outputs/market/model --repo_id me/aaformer-market1501\n'
               '  python -m aaformer_hf.hub.cards --planned model_cards', formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('folder', nargs='?', type=Path, help='a saved model folder (writes FOLDER/README.md)')
    parser.add_argument('--repo_id', help='the Hub repo the card names in its examples (default: the folder name)')
    parser.add_argument('--metrics', type=Path, help='metrics.json (default: FOLDER/../metrics.json when present)')
    parser.add_argument('--planned', type=Path, help='write the planned checkpoints\' cards to this folder instead')
    parser.add_argument('--org', default='aaformer-hf', help='the Hub organisation the planned cards name')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing README.md')
    args = parser.parse_args(argv)
    if args.planned is not None:
        for path in planned_cards(args.planned, org=args.org):
            print(path)
        return 0
    if args.folder is None:
        parser.error('give a model FOLDER or --planned DIR')
    from ..files import check_output
    try:
        if not args.folder.is_dir():
            raise FileNotFoundError(f'{args.folder}: model folder not found')
        check_output(args.folder / 'README.md', args.overwrite)  # a card someone wrote is not replaced unasked
        path = write_card(card_for_folder(args.folder, args.repo_id, args.metrics), args.folder / 'README.md')
    except (OSError, ValueError) as error:
        parser.exit(2, f'{parser.prog}: error: {error}\n')
    print(path)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
