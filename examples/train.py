"""Train and evaluate AAformer (or one of its ablation baselines) on a re-ID dataset, with accelerate.

A training example in the style of transformers' ``*_no_trainer.py`` scripts: read it top to bottom, copy it, change
it. The package (``aaformer_hf``) provides the models, data, sampling and evaluation; the loop (here), its
configuration (``train_config.py``), the training objectives (``train_losses.py``) and the output-folder rules
(``train_outputs.py``) live beside this file.

    accelerate launch examples/train.py --config examples/configs/market1501.yaml --data_root /data/market1501
    accelerate launch examples/train.py --config examples/configs/synthetic.yaml        # SYNTHETIC demo, CPU
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 examples/train.py --config ...  # two CPU processes

Every TrainConfig field (train_config.py beside this file) is a flag and overrides the YAML file. Writes
OUTPUT_DIR/metrics.json (final R1/R5/R10/mAP/mINP, images/s), OUTPUT_DIR/model/ (save_pretrained: loadable by
transformers' AutoModel and by timm), OUTPUT_DIR/best_model/ and OUTPUT_DIR/checkpoints/{epoch_N,step_N}/.
One CPU, one GPU or many. The model's family (the package's registry, ``aaformer_hf.hf.families``) says which
``--method`` values train it; ``RECIPES`` says what each method adds to the shared loop; everything else (data,
schedule, checkpoints, evaluation, saving) is shared.
"""
import json
import logging
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from timm.optim import create_optimizer_v2
from tqdm.auto import tqdm

from aaformer_hf.data import build_transforms, eval_loader, load_reid_dataset, train_loader
from aaformer_hf.data.parsing import add_parsing_column
from aaformer_hf.data.synthetic import generate_market_layout, is_synthetic
from aaformer_hf.reid.evaluation import evaluate, re_rank, summarise
from aaformer_hf.hf.timm_backed import family_of_timm_model, wrap_timm_model
from train_config import BASELINES, TrainConfig, parse_config
from train_recipe import (ParsingPartsRecipe, Recipe, RunContext, check_finite_losses,
                          library_bars_only_on_a_terminal, make_scheduler, part_masks, quiet_bars)
from train_outputs import STATE_FILE, claim_output_dir, complete_checkpoints, read_state, resume_folder

__all__ = ['BASELINES', 'RECIPES', 'TrainConfig', 'build_model', 'make_recipe', 'format_summary', 'main',
           'make_optimizer', 'parse_config', 'retrieval_metrics', 'save_model', 'train']

logger = logging.getLogger(__name__)


def _aaformer_recipe(config: TrainConfig, model: nn.Module, num_classes: int) -> Recipe:
    return (ParsingPartsRecipe if model.config.assignment == 'given' else Recipe)(config, model)


def _two_stage_recipe(config: TrainConfig, model: nn.Module, num_classes: int) -> Recipe:
    from train_clipreid import TwoStageRecipe
    return TwoStageRecipe(config, model, num_classes)


# what each --method adds to the shared loop; which methods train which family is the family's own declaration
# (aaformer_hf.hf.families: training_methods)
RECIPES: Dict[str, Callable[[TrainConfig, nn.Module, int], Recipe]] = {
    'aaformer': _aaformer_recipe, 'clipreid': _two_stage_recipe, 'pivl': _two_stage_recipe,
}


def make_recipe(config: TrainConfig, model: nn.Module, num_classes: int) -> Recipe:
    return RECIPES[config.method](config, model, num_classes)


def build_model(config: TrainConfig, num_classes: int, id2label: Optional[Dict[int, str]] = None):
    """The timm model (pretrained through timm's own loading path when asked), wrapped by its family's
    transformers re-ID class so the result saves with ``save_pretrained`` in the shared weight layout."""
    overlay = dict(file=str(config.pretrained_file)) if config.pretrained_file else None
    timm_model = timm.create_model(
        config.model, pretrained=config.pretrained or bool(overlay), num_classes=num_classes,
        pretrained_cfg_overlay=overlay, **config.model_kwargs())
    try:
        family = family_of_timm_model(timm_model)
    except TypeError as error:
        raise ValueError(f'{config.model!r} is not a model family this trainer knows: {error}') from None
    if config.method not in family.training_methods:
        raise ValueError(f'--method {config.method} does not train {config.model!r} ({type(timm_model).__name__} '
                         f'trains with --method {" / ".join(family.training_methods)})')
    model = wrap_timm_model(timm_model, label_smoothing=config.label_smoothing, id2label=id2label)
    return model, timm_model.pretrained_cfg, family


def _load_data(config: TrainConfig):
    if config.dataset == 'synthetic':  # dataset_options go to the generator (train_ids, test_ids, occlusion...)
        root = Path(config.data_root)
        if not root.exists():
            logger.info('generating the SYNTHETIC dataset into %s', root)
            generate_market_layout(root, **{'seed': config.seed, 'parsing': True, **config.dataset_options})
        return load_reid_dataset('market1501', root)
    return load_reid_dataset(config.dataset, config.data_root, **config.dataset_options)


@torch.no_grad()
def extract(model, loader, accelerator: Accelerator, flip: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings, pids and camids of a (prepared) loader, gathered from every process without padding."""
    model.eval()
    feats, pids, cams = [], [], []
    # a model with a camera embedding (SIE) needs each image's camera
    needs_cameras = getattr(getattr(accelerator.unwrap_model(model), 'config', None), 'num_cameras', 0)
    for batch in tqdm(loader, desc='features', leave=False, disable=quiet_bars(accelerator)):
        pixels, pid, cam = batch[:3]
        extra = {'camera_ids': cam} if needs_cameras else {}
        parsing = batch[3] if len(batch) > 3 else None  # [PART]s on parsing regions

        def embed(x: torch.Tensor, maps: Optional[torch.Tensor]) -> torch.Tensor:
            masks = {} if maps is None else {'part_masks': part_masks(accelerator.unwrap_model(model), maps)}
            return model(pixel_values=x, **extra, **masks).embeddings

        with accelerator.autocast():
            emb = embed(pixels, parsing)
            if flip:  # the flip test's mean, the parsing map mirrored with its image
                emb = (emb + embed(pixels.flip(-1), None if parsing is None else parsing.flip(-1))) / 2
        emb, pid, cam = accelerator.gather_for_metrics((emb.float().contiguous(), pid, cam))
        feats.append(emb.cpu()), pids.append(pid.cpu()), cams.append(cam.cpu())
    return torch.cat(feats), torch.cat(pids), torch.cat(cams)


def run_evaluation(model, query_loader, gallery_loader, accelerator: Accelerator, config: TrainConfig
                   ) -> Dict[str, Any]:
    qf, q_pids, q_cams = extract(model, query_loader, accelerator, config.flip_test)
    gf, g_pids, g_cams = extract(model, gallery_loader, accelerator, config.flip_test)
    # every process needs the plain metrics (they choose the best model); the re-ranked ones are only reported
    return retrieval_metrics(qf, gf, q_pids, g_pids, q_cams, g_cams, config,
                             rerank=config.rerank and accelerator.is_main_process)


def retrieval_metrics(qf, gf, q_pids, g_pids, q_cams, g_cams, config: TrainConfig,
                      rerank: Optional[bool] = None) -> Dict[str, Any]:
    """R1/R5/R10/mAP/mINP under the config's metric and normalisation; with re-ranking (``rerank``, default
    ``config.rerank``) also the same after k-reciprocal re-ranking of the (normalised) features, as ``rerank_*``."""
    rerank = config.rerank if rerank is None else rerank
    labels = (q_pids, g_pids, q_cams, g_cams)
    metrics = summarise(evaluate(qf, gf, *labels, metric=config.eval_metric, normalize=config.eval_normalize))
    if rerank:
        if config.eval_normalize or config.eval_metric == 'cosine':
            qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
        reranked = summarise(evaluate(None, None, *labels, distmat=re_rank(qf, gf)))
        metrics.update({f'rerank_{k}': v for k, v in reranked.items() if k != 'num_valid_queries'})
    return metrics


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimiser ``config.optimizer``: AAformer's SGD with (heavy-ball) momentum as the paper and TransReID use
    it (timm's 'momentum'; its 'sgd' is Nesterov's), CLIP-ReID's Adam. Weight decay on weights only: biases, norms
    and the model's ``no_weight_decay`` tokens get none (timm's convention; CLIP-ReID decays biases too and gives
    them 2x the learning rate, which this trainer does not copy)."""
    extra = {'momentum': config.momentum} if config.optimizer in ('momentum', 'sgd', 'nesterov') else {}
    return create_optimizer_v2(model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay, **extra)


def _non_finite_parameters(model: nn.Module) -> list:
    return [name for name, value in model.state_dict().items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())]


def save_model(model, accelerator: Accelerator, folder: Path, processor) -> None:
    """``save_pretrained`` (and the processor) into ``folder`` from the main process; a model with non-finite
    weights is refused, naming them."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        bad = _non_finite_parameters(accelerator.unwrap_model(model))
        if bad:  # a diverged model is never saved (as best_model or at all)
            raise FloatingPointError(f'not saving {folder}: non-finite values in {len(bad)} tensors ({bad[:5]}...)')
        accelerator.unwrap_model(model).save_pretrained(folder)
        if processor is not None:  # None: the model's folder carries its preprocessing (a timm student's config)
            processor.save_pretrained(folder)
    accelerator.wait_for_everyone()


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train and evaluate; returns (and writes to ``output_dir/metrics.json``) the final evaluation."""
    if config.push_to_hub:
        from aaformer_hf.hub import check_push_supported
        check_push_supported(config.hub_model_id)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.report_to if config.with_tracking else None, project_dir=config.output_dir)
    if config.with_tracking and not accelerator.log_with:  # accelerate only warns and logs nowhere
        raise ValueError(f'--with_tracking: tracker {config.report_to!r} is not installed (for tensorboard: '
                         '`pip install tensorboard`), or not an accelerate tracker name')
    if config.pretrained_file and not Path(config.pretrained_file).is_file():
        raise FileNotFoundError(f'{config.pretrained_file}: pretrained_file not found')
    output_dir = Path(config.output_dir)
    resume = resume_folder(config.resume_from_checkpoint, output_dir)  # before any work: no checkpoint is an error
    with claim_output_dir(output_dir, resuming=resume is not None, overwrite=config.overwrite_output_dir,
                          is_main_process=accelerator.is_main_process):
        accelerator.wait_for_everyone()  # the folder is this run's before any process writes to it
        return _train(config, accelerator, output_dir, resume)


def _train(config: TrainConfig, accelerator: Accelerator, output_dir: Path, resume: Optional[Path]
           ) -> Dict[str, Any]:
    set_seed(config.seed)
    data = _load_data(config)
    originals = data['train']['pid_original']
    id2label = {label: str(pid) for label, pid in sorted(set(zip(data['train']['pid'], originals)))}
    model, pretrained_cfg, family = build_model(config, len(id2label), id2label)
    recipe = make_recipe(config, model, len(id2label))
    processor_class = family.image_processor_class
    processor = processor_class.from_config(model.config) if recipe.input_cfg is None else None
    input_cfg = recipe.input_cfg or pretrained_cfg  # stage 1 (RunContext) reads the teacher's own
    if recipe.parsing and not config.eval_only:  # checks every map now: a bad one fails before training
        data['train'] = add_parsing_column(data['train'], config.data_root, missing=config.parsing_missing)
    if recipe.eval_parsing:
        for split in ('query', 'gallery'):
            data[split] = add_parsing_column(data[split], config.data_root, missing=config.parsing_missing)

    # torchrun (and so accelerate launch) says how many processes share this machine
    workers = config.loader_workers(int(os.environ.get('LOCAL_WORLD_SIZE', accelerator.num_processes)))
    loader, sampler = train_loader(
        data['train'], build_transforms(input_cfg, train=True), config.batch_size, config.num_instances,
        config.seed, workers, accelerator.num_processes, accelerator.process_index, config.sampler_epoch,
        parsing=recipe.parsing and not config.eval_only)
    test_transform = build_transforms(input_cfg, train=False)
    query_loader = eval_loader(data['query'], test_transform, config.eval_batch_size, workers,
                               parsing=recipe.eval_parsing)
    gallery_loader = eval_loader(data['gallery'], test_transform, config.eval_batch_size, workers,
                                 parsing=recipe.eval_parsing)
    micro_per_epoch = len(loader) - len(loader) % config.gradient_accumulation_steps  # whole optimiser steps only
    steps_per_epoch = micro_per_epoch // config.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError(f'an epoch has {len(loader)} batches, fewer than gradient_accumulation_steps')

    optimizer = make_optimizer(recipe.optimizer_target(), config)
    scheduler = make_scheduler(
        optimizer, steps_per_epoch, schedule=config.lr_schedule, epochs=config.epochs,
        warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr, min_lr=config.min_lr,
        decay_epochs=config.lr_decay_epochs, decay_factor=config.lr_decay_factor)
    # the train loader is not prepared: the PK sampler already deals whole identities to each process
    trainable, optimizer, query_loader, gallery_loader = accelerator.prepare(
        recipe.trainable, optimizer, query_loader, gallery_loader)
    accelerator.register_for_checkpointing(scheduler)
    recipe.prepare(accelerator)  # after the objects above: checkpoints list them in this order
    model = recipe.reid_model if recipe.trainable is not recipe.reid_model else trainable  # evaluated and saved
    if config.with_tracking:
        accelerator.init_trackers('aaformer_hf', config={
            k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) or v is None else v)
            for k, v in config.to_dict().items()})

    state = {'epoch': 0, 'step_in_epoch': 0, 'global_step': 0, 'best': None}
    if resume is not None:
        accelerator.load_state(str(resume))
        state = read_state(resume)
        accelerator.print(f'resumed from {resume}: {resumed_at(state)}')

    def save_checkpoint(name: str) -> None:
        final, partial = output_dir / 'checkpoints' / name, output_dir / 'checkpoints' / f'.incomplete-{name}'
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (partial / STATE_FILE).write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)  # a folder is a checkpoint only once complete
            if config.checkpoints_total_limit:
                for old in complete_checkpoints(output_dir)[:-config.checkpoints_total_limit]:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()

    def evaluate_now(epoch: int) -> Dict[str, Any]:
        metrics = run_evaluation(model, query_loader, gallery_loader, accelerator, config)
        if accelerator.is_main_process:  # tqdm.write keeps the progress bar intact
            tqdm.write(f'epoch {epoch}: ' + '  '.join(
                f'{k} {v:.4f}' for k, v in metrics.items() if k != 'num_valid_queries'))
        if config.with_tracking:
            accelerator.log({f'eval/{k}': v for k, v in metrics.items()}, step=state['global_step'])
        if state['best'] is None or metrics['mAP'] > state['best']['mAP']:
            state['best'] = dict(metrics, epoch=epoch)
            save_model(model, accelerator, output_dir / 'best_model', processor)
        return metrics

    if not config.eval_only:  # CLIP-ReID / π-VL: stage 1 (or, resumed in stage 2, the fixed text features)
        recipe.before_epochs(RunContext(accelerator, data, pretrained_cfg, state, save_checkpoint, workers,
                                        output_dir))
    images, compute_time, wait_time = 0, 0.0, 0.0
    metrics: Optional[Dict[str, Any]] = None
    epochs = 0 if config.eval_only else config.epochs
    every_steps = config.checkpoint_every_steps
    accumulation = config.gradient_accumulation_steps
    progress = tqdm(total=epochs * steps_per_epoch, initial=state['global_step'], desc='training',
                    disable=quiet_bars(accelerator))
    for epoch in range(state['epoch'], epochs):
        trainable.train()
        sampler.set_epoch(epoch, start_batch=state['step_in_epoch'] * accumulation)
        batches = iter(loader)
        for micro in range(state['step_in_epoch'] * accumulation, micro_per_epoch):
            started = time.perf_counter()
            batch = [item.to(accelerator.device, non_blocking=True) for item in next(batches)]
            waited = time.perf_counter()
            sync = (micro + 1) % accumulation == 0
            with nullcontext() if sync else accelerator.no_sync(trainable):
                losses = recipe.losses(trainable, batch)
                # accelerate divides the loss by gradient_accumulation_steps itself (set on the Accelerator above)
                accelerator.backward(losses['loss'])
            # after backward (every process has joined its gradient all-reduce), before any optimiser step
            check_finite_losses(losses, state['global_step'] + 1, epoch, micro)
            if sync:
                optimizer.step()
                scheduler.step_update(state['global_step'] + 1)  # the rate of the next step
                optimizer.zero_grad(set_to_none=True)
                state['global_step'] += 1
                state['step_in_epoch'] = (micro + 1) // accumulation
                progress.update(1)
                progress.set_postfix(loss=f'{losses["loss"].item():.3f}', epoch=epoch)
                if progress.disable and config.log_every and state['step_in_epoch'] % config.log_every == 0 \
                        and accelerator.is_main_process:  # no bar drawn (not a terminal): a line now and then
                    logger.info('epoch %d: step %d / %d, loss %.3f', epoch + 1, state['step_in_epoch'],
                                steps_per_epoch, losses['loss'].item())
                if config.with_tracking:
                    accelerator.log({'train/' + k: v.item() for k, v in losses.items()}
                                    | {'train/lr': optimizer.param_groups[0]['lr']}, step=state['global_step'])
            images += batch[0].shape[0] * accelerator.num_processes
            wait_time += waited - started
            compute_time += time.perf_counter() - waited
            if sync and every_steps and state['global_step'] % every_steps == 0:
                save_checkpoint(f'step_{state["global_step"]}')
        del batches
        state['epoch'], state['step_in_epoch'] = epoch + 1, 0
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == epochs:
            metrics = evaluate_now(epoch + 1)  # before the checkpoint, so it records this epoch's best
        if config.checkpointing_steps == 'epoch':
            save_checkpoint(f'epoch_{epoch + 1}')
    progress.close()
    if metrics is None:  # resumed after the last epoch, or eval_only
        metrics = evaluate_now(state['epoch'])

    save_model(model, accelerator, output_dir / 'model', processor)
    elapsed = wait_time + compute_time
    summary = dict(metrics, epochs=state['epoch'], images_per_second=images / elapsed if elapsed else None,
                   train_images=images, train_seconds=elapsed,
                   data_wait_share=wait_time / elapsed if elapsed else None, best=state['best'],
                   model=config.model, student_model=config.student_model, baseline=config.baseline,
                   method=config.method,
                   pivl_ablation=config.pivl_ablation,
                   **({} if config.method == 'aaformer' else dict(part_prompts=config.part_prompts,
                                                                    alignment_head=config.alignment_head)),
                   # generated images are reported as such, whichever loader read them
                   dataset='synthetic' if config.data_root and is_synthetic(config.data_root) else config.dataset,
                   data_root=str(config.data_root), init=model_init(config, pretrained_cfg),
                   processes=accelerator.num_processes, model_dir=str(output_dir / 'model'))
    summary.update({k: v for k, v in state.items() if k.startswith('stage1_')})
    if accelerator.is_main_process:
        (output_dir / 'metrics.json').write_text(json.dumps(summary, indent=2))
    if config.with_tracking:
        accelerator.end_training()
    if config.push_to_hub and accelerator.is_main_process:
        from aaformer_hf.hub import push_model_folder
        # the best epoch's weights when training evaluated along the way (the card says how they were chosen)
        folder = output_dir / ('best_model' if (output_dir / 'best_model').is_dir() else 'model')
        commit = push_model_folder(folder, config.hub_model_id, private=config.hub_private)
        logger.info('pushed %s to %s', folder, getattr(commit, 'commit_url', config.hub_model_id))
    return summary


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """``examples/train.py``'s entry point: parse the config and flags, train, print the final table."""
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    logging.getLogger('accelerate').setLevel(logging.WARNING)  # one line per saved file otherwise
    library_bars_only_on_a_terminal()
    try:
        summary = train(parse_config(argv))
    except (ValueError, OSError, RuntimeError, FloatingPointError, NotImplementedError) as error:
        if not _user_fixable(error):
            raise  # another library's error: its traceback is the useful part
        # what a user can fix (a bad value, a missing file, a folder in use): the message, not a traceback
        print(f'examples/train.py: error: {error}', file=sys.stderr)
        raise SystemExit(2) from None
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(format_summary(summary))
    return summary


def _user_fixable(error: BaseException) -> bool:
    """Python's own error classes, the package's and this example's (the modules beside this file)."""
    module = type(error).__module__
    if module == 'builtins' or module.split('.')[0] == 'aaformer_hf':
        return True
    defined_in = getattr(sys.modules.get(module), '__file__', None)
    return defined_in is not None and Path(defined_in).resolve().parent == Path(__file__).resolve().parent


def model_init(config: TrainConfig, pretrained_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """What the trained weights started from, for metrics.json and the model card: a Hub checkpoint through timm's
    pretrained machinery, a local file, or a random initialisation."""
    if config.pretrained_file:
        return {'kind': 'file', 'file': Path(config.pretrained_file).name}
    if config.pretrained and pretrained_cfg.get('hf_hub_id'):
        return {'kind': 'hub', 'hub_id': pretrained_cfg['hf_hub_id']}
    return {'kind': 'random'}


def resumed_at(state: Dict[str, Any]) -> str:
    """Where a checkpoint's state resumes, in the stage it was saved in (CLIP-ReID / π-VL have two)."""
    if state.get('stage') == 1:
        return (f'stage 1, epoch {state.get("stage1_epoch", 0)}, step {state.get("stage1_step_in_epoch", 0)} '
                f'({state.get("stage1_step", 0)} stage-1 steps done)')
    stage = 'stage 2, ' if state.get('stage') == 2 else ''
    return f'{stage}epoch {state["epoch"]}, step {state["step_in_epoch"]} ({state["global_step"]} steps done)'


def format_summary(summary: dict) -> str:
    rows = [('R1', 'rank1'), ('R5', 'rank5'), ('R10', 'rank10'), ('mAP', 'mAP'), ('mINP', 'mINP')]
    dataset = summary['dataset'] + (' (SYNTHETIC images: says nothing about real re-ID accuracy)'
                                    if summary['dataset'] == 'synthetic' else '')
    variant = summary['model'] + (f', baseline {summary["baseline"]}' if summary['baseline'] else '')
    if summary.get('method', 'aaformer') != 'aaformer':
        variant += f', {summary["method"]}' + (f' {summary["pivl_ablation"]}' if summary.get('pivl_ablation') else '')
    if summary.get('student_model'):
        variant = f'{summary["student_model"]} taught by {variant}'
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
             f'model folder: {summary["model_dir"]}  '
             "(timm.create_model('local-dir:...', pretrained=True) or AutoModel.from_pretrained)"]
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
