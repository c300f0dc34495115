"""What the training example's two training files (train.py: AAformer; train_clipreid.py: CLIP-ReID / π-VL) share:
starting a run, data, the model, optimiser and schedule, evaluation, checkpoints, saving and the run's summary.
Each training file keeps its own loop; these are the steps around it."""
import json
import logging
import os
import shutil
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from timm.optim import create_optimizer_v2
from timm.scheduler import MultiStepLRScheduler, create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from tqdm.auto import tqdm

from aaformer_hf.data import build_transforms, eval_loader, load_reid_dataset, train_loader
from aaformer_hf.data.parsing import region_masks
from aaformer_hf.data.synthetic import generate_market_layout, is_synthetic
from aaformer_hf.hf.timm_backed import family_of_timm_model, wrap_timm_model
from aaformer_hf.reid.evaluation import evaluate, re_rank, summarise
from train_config import TrainConfig
from train_outputs import STATE_FILE, complete_checkpoints

__all__ = ['start_accelerator', 'load_data', 'identity_labels', 'build_model', 'Loaders', 'make_loaders',
           'make_optimizer', 'make_scheduler', 'scheduler_from_config',
           'extract', 'run_evaluation', 'evaluate_and_keep_best', 'retrieval_metrics', 'check_finite_losses',
           'save_checkpoint', 'save_model', 'run_summary', 'finish_run', 'part_masks', 'quiet_bars',
           'library_bars_only_on_a_terminal', 'model_init', 'resumed_at', 'format_summary']

logger = logging.getLogger(__name__)


def start_accelerator(config: TrainConfig) -> Accelerator:
    """The run's Accelerator, after the checks that need no data or model (a push that could not happen, a
    tracker that is not installed, a missing pretrained file)."""
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
    return accelerator


def identity_labels(train_split) -> Dict[int, str]:
    """label -> the dataset's own identity name, for the model's ``id2label``."""
    return {label: str(pid) for label, pid in sorted(set(zip(train_split['pid'], train_split['pid_original'])))}


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


def load_data(config: TrainConfig):
    if config.dataset == 'synthetic':  # dataset_options go to the generator (train_ids, test_ids, occlusion...)
        root = Path(config.data_root)
        if not root.exists():
            logger.info('generating the SYNTHETIC dataset into %s', root)
            generate_market_layout(root, **{'seed': config.seed, 'parsing': True, **config.dataset_options})
        return load_reid_dataset('market1501', root)
    return load_reid_dataset(config.dataset, config.data_root, **config.dataset_options)


@dataclass
class Loaders:
    """The training loader (PK batches), its sampler, the two test loaders and the epoch's length in whole
    optimiser steps."""
    train: torch.utils.data.DataLoader
    sampler: Any
    query: torch.utils.data.DataLoader
    gallery: torch.utils.data.DataLoader
    micro_per_epoch: int  # batches an epoch runs: whole optimiser steps only
    steps_per_epoch: int
    workers: int  # loader processes, for any other loader the run makes


def make_loaders(config: TrainConfig, data: Dict[str, Any], input_cfg: Dict[str, Any], accelerator: Accelerator,
                 train_parsing: bool = False, eval_parsing: bool = False) -> Loaders:
    """The loaders of a run; ``*_parsing``: batches carry the human-parsing maps."""
    # torchrun (and so accelerate launch) says how many processes share this machine
    workers = config.loader_workers(int(os.environ.get('LOCAL_WORLD_SIZE', accelerator.num_processes)))
    loader, sampler = train_loader(
        data['train'], build_transforms(input_cfg, train=True), config.batch_size, config.num_instances,
        config.seed, workers, accelerator.num_processes, accelerator.process_index, config.sampler_epoch,
        parsing=train_parsing)
    test_transform = build_transforms(input_cfg, train=False)
    query = eval_loader(data['query'], test_transform, config.eval_batch_size, workers, parsing=eval_parsing)
    gallery = eval_loader(data['gallery'], test_transform, config.eval_batch_size, workers, parsing=eval_parsing)
    accumulation = config.gradient_accumulation_steps
    micro_per_epoch = len(loader) - len(loader) % accumulation
    if micro_per_epoch == 0:
        raise ValueError(f'an epoch has {len(loader)} batches, fewer than gradient_accumulation_steps')
    return Loaders(loader, sampler, query, gallery, micro_per_epoch, micro_per_epoch // accumulation, workers)


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
    it (timm's 'momentum'; its 'sgd' is Nesterov's), CLIP-ReID's Adam.

    ``weight_decay_scope`` 'weights' (AAformer): timm's convention, no decay on biases, norms and the model's
    ``no_weight_decay`` tokens. 'all' (CLIP-ReID's code): every parameter decays, one group per parameter, and a
    parameter whose name contains 'bias' runs at ``bias_lr_factor`` x the rate (an ``lr_scale`` timm's schedulers
    apply)."""
    extra = {'momentum': config.momentum} if config.optimizer in ('momentum', 'sgd', 'nesterov') else {}
    if config.weight_decay_scope == 'weights':
        if config.bias_lr_factor != 1:
            raise ValueError('bias_lr_factor is for weight_decay_scope all (CLIP-ReID\'s parameter groups)')
        return create_optimizer_v2(model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay, **extra)
    groups = [{'params': [p], 'weight_decay': config.weight_decay,
               **({'lr_scale': config.bias_lr_factor} if 'bias' in name else {})}
              for name, p in model.named_parameters() if p.requires_grad]
    return create_optimizer_v2(groups, config.optimizer, lr=config.lr, weight_decay=config.weight_decay, **extra)


def non_finite_parameters(model: nn.Module) -> list:
    return [name for name, value in model.state_dict().items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())]


def save_model(model, accelerator: Accelerator, folder: Path, processor) -> None:
    """``save_pretrained`` (and the processor) into ``folder`` from the main process; a model with non-finite
    weights is refused, naming them."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        bad = non_finite_parameters(accelerator.unwrap_model(model))
        if bad:  # a diverged model is never saved (as best_model or at all)
            raise FloatingPointError(f'not saving {folder}: non-finite values in {len(bad)} tensors ({bad[:5]}...)')
        accelerator.unwrap_model(model).save_pretrained(folder)
        if processor is not None:  # None: the model's folder carries its preprocessing (a timm student's config)
            processor.save_pretrained(folder)
    accelerator.wait_for_everyone()


def evaluate_and_keep_best(model, query_loader, gallery_loader, accelerator: Accelerator, config: TrainConfig,
                           state: Dict[str, Any], output_dir: Path, processor) -> Dict[str, Any]:
    """Evaluate after ``state['epoch']`` epochs; the best mAP so far is saved as ``best_model`` (and recorded in
    ``state['best']``)."""
    metrics = run_evaluation(model, query_loader, gallery_loader, accelerator, config)
    if accelerator.is_main_process:  # tqdm.write keeps the progress bar intact
        tqdm.write(f'epoch {state["epoch"]}: ' + '  '.join(
            f'{k} {v:.4f}' for k, v in metrics.items() if k != 'num_valid_queries'))
    if config.with_tracking:
        accelerator.log({f'eval/{k}': v for k, v in metrics.items()}, step=state['global_step'])
    if state['best'] is None or metrics['mAP'] > state['best']['mAP']:
        state['best'] = dict(metrics, epoch=state['epoch'])
        save_model(model, accelerator, output_dir / 'best_model', processor)
    return metrics


def save_checkpoint(accelerator: Accelerator, output_dir: Path, name: str, state: Dict[str, Any],
                    total_limit: Optional[int]) -> None:
    """accelerate's ``save_state`` into ``checkpoints/NAME`` with the trainer state beside it, complete or not at
    all (written as ``.incomplete-NAME``, renamed at the end); only the newest ``total_limit`` are kept. accelerate's
    own ``ProjectConfiguration(automatic_checkpoint_naming, total_limit)`` names folders ``checkpoint_N`` by save
    count and deletes before it writes; here a name says where the run was (``epoch_3``, ``step_500``,
    ``stage1_epoch_2``) and a run killed while saving leaves the older checkpoints intact."""
    final, partial = output_dir / 'checkpoints' / name, output_dir / 'checkpoints' / f'.incomplete-{name}'
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # every optimiser step of the run so far (CLIP-ReID / π-VL: stage 1's, then stage 2's): orders checkpoints
        steps_done = state.get('stage1_step', 0) + state['global_step']
        (partial / STATE_FILE).write_text(json.dumps(dict(state, steps_done=steps_done), indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)  # a folder is a checkpoint only once complete
        if total_limit:
            for old in complete_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def run_summary(config: TrainConfig, accelerator: Accelerator, output_dir: Path, metrics: Dict[str, Any],
                state: Dict[str, Any], pretrained_cfg: Dict[str, Any], images: int, wait_time: float,
                compute_time: float) -> Dict[str, Any]:
    """What metrics.json records: the final evaluation, throughput, the best epoch and how the run was made."""
    elapsed = wait_time + compute_time
    summary = dict(metrics, epochs=state['epoch'], images_per_second=images / elapsed if elapsed else None,
                   train_images=images, train_seconds=elapsed,
                   data_wait_share=wait_time / elapsed if elapsed else None, best=state['best'],
                   model=config.model, student_model=config.student_model, baseline=config.baseline,
                   method=config.method, pivl_ablation=config.pivl_ablation,
                   **({} if config.method == 'aaformer' else dict(
                       part_prompts=config.part_prompts, alignment_head=config.alignment_head)),
                   # generated images are reported as such, whichever loader read them
                   dataset='synthetic' if config.data_root and is_synthetic(config.data_root) else config.dataset,
                   data_root=str(config.data_root), init=model_init(config, pretrained_cfg),
                   processes=accelerator.num_processes, model_dir=str(output_dir / 'model'))
    summary.update({k: v for k, v in state.items() if k.startswith('stage1_')})
    return summary


def finish_run(config: TrainConfig, accelerator: Accelerator, output_dir: Path, summary: Dict[str, Any]
               ) -> Dict[str, Any]:
    """Write ``metrics.json``, close the trackers and push the model when asked; returns ``summary``."""
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


def part_masks(model: nn.Module, parsing: torch.Tensor) -> torch.Tensor:
    """(B, P, N) patch masks of the model's [PART]s from (B, H, W) parsing maps: SPReID's regions on its patch grid."""
    timm_model = getattr(model, 'timm_model', model)
    masks = region_masks(parsing, timm_model.patch_embed.grid_size)
    if masks.shape[1] != timm_model.num_parts:
        raise ValueError(f'{masks.shape[1]} parsing regions for a model with {timm_model.num_parts} [PART]s')
    return masks


def make_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, *, schedule: str, epochs: int,
                   warmup_epochs: int, warmup_lr: float, min_lr: float = 0.0, decay_epochs: Sequence[int] = (),
                   decay_factor: float = 0.1, per_epoch: bool = False, cosine_after_warmup: bool = True
                   ) -> Scheduler:
    """timm's scheduler for a linear warm-up from ``warmup_lr`` to the optimiser's lr over ``warmup_epochs``, then
    'cosine' to ``min_lr`` at ``epochs`` or 'step': x ``decay_factor`` from each of ``decay_epochs`` on.

    ``per_epoch=False``: the rate follows the schedule at every optimiser step, epochs counted from 0 (the loop calls
    ``step_update(steps_done)``; the rate of step 0 is set here). ``per_epoch=True``: CLIP-ReID's code, which sets
    the rate once at the start of each epoch, the n-th epoch counted from 1 (the loop calls ``step(n)``; the first
    epoch runs at the schedule's value for 1, not 0). The loops make both calls; timm's scheduler acts on the one
    of its unit. ``cosine_after_warmup``: the cosine spans the epochs after the warm-up (timm's ``warmup_prefix``);
    False: it spans all epochs, the warm-up inside it (CLIP-ReID's stage 1)."""
    unit = 1 if per_epoch else steps_per_epoch
    if schedule == 'step':
        # timm's multistep scheduler applies milestone m at t = m - 1 (its documented convention, kept on purpose);
        # m + 1 makes the rate change at the milestone itself, as torch's MultiStepLR and CLIP-ReID's
        # WarmupMultiStepLR do (bisect_right over the milestones)
        scheduler = MultiStepLRScheduler(
            optimizer, decay_t=[m * unit + 1 for m in decay_epochs], decay_rate=decay_factor,
            warmup_t=warmup_epochs * unit, warmup_lr_init=warmup_lr, t_in_epochs=per_epoch,
            warmup_prefix=False)  # milestones count from epoch 0, warm-up included
    else:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched='cosine', min_lr=min_lr, warmup_lr=warmup_lr, warmup_epochs=warmup_epochs,
            warmup_prefix=cosine_after_warmup, step_on_epochs=per_epoch, updates_per_epoch=steps_per_epoch,
            # a warm-up as long as training never reaches the cosine; timm needs a positive length all the same
            num_epochs=max(epochs - warmup_epochs, 1) if cosine_after_warmup else epochs)
    if not per_epoch:
        scheduler.step_update(0)
    return scheduler


def scheduler_from_config(optimizer: torch.optim.Optimizer, steps_per_epoch: int, config: TrainConfig
                          ) -> Scheduler:
    """The main training's (AAformer's, CLIP-ReID's stage 2) schedule, as the config's lr fields say."""
    return make_scheduler(
        optimizer, steps_per_epoch, schedule=config.lr_schedule, epochs=config.epochs,
        warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr, min_lr=config.min_lr,
        decay_epochs=config.lr_decay_epochs, decay_factor=config.lr_decay_factor,
        per_epoch=config.lr_update == 'epoch')


def quiet_bars(accelerator: Accelerator) -> Optional[bool]:
    """tqdm's ``disable``: off on all but the local main process; None there (tqdm then draws only to a terminal, so
    a log file gets no escape codes)."""
    return None if accelerator.is_local_main_process else True


def library_bars_only_on_a_terminal() -> None:
    """Writing to a log file: turn off transformers', huggingface_hub's and datasets' progress bars (ours follow
    tqdm's rule through ``quiet_bars``), which would otherwise fill the log with carriage-return frames."""
    import sys
    if sys.stderr.isatty():
        return
    import datasets
    import huggingface_hub.utils
    import transformers
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    datasets.disable_progress_bars()


def check_finite_losses(losses: Dict[str, torch.Tensor], step: int, epoch: int, batch: int) -> None:
    if bool(torch.isfinite(losses['loss'])):
        return
    terms = ', '.join(f'{name} = {float(value.detach())}' for name, value in losses.items())
    raise FloatingPointError(
        f'training diverged at optimiser step {step} (epoch {epoch}, batch {batch}): {terms}. Nothing of this step '
        'was applied or saved; try a lower lr, more warm-up or --mixed_precision no, and resume from a checkpoint')


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
