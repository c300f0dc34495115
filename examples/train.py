"""Train and evaluate AAformer (or one of its ablation baselines) on a re-ID dataset, with accelerate.

A training example in the style of transformers' ``*_no_trainer.py`` scripts: read it top to bottom, copy it, change
it. The package (``aaformer_hf``) provides the models, data, sampling and evaluation. Beside this file: the
configuration (``train_config.py``), the objectives (``train_losses.py``), the steps around the loop that both
training files share (``train_utils.py``: data, model, schedule, evaluation, checkpoints, saving), the output-folder
rules (``train_outputs.py``), and CLIP-ReID / π-VL's two-stage training (``train_clipreid.py``, with π-VL's prompt
learner ``train_prompts.py``, fusion heads ``train_fusion.py`` and Table 5 student ``train_student.py``), which this
script runs for ``--method clipreid`` / ``pivl``.

    accelerate launch examples/train.py --config examples/configs/market1501.yaml --data_root /data/market1501
    accelerate launch examples/train.py --config examples/configs/synthetic.yaml        # SYNTHETIC demo, CPU
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 examples/train.py --config ...  # two CPU processes

Every TrainConfig field is a flag and overrides the YAML file. Writes OUTPUT_DIR/metrics.json (final
R1/R5/R10/mAP/mINP, images/s), OUTPUT_DIR/model/ (save_pretrained: loadable by transformers' AutoModel and by timm),
OUTPUT_DIR/best_model/ and OUTPUT_DIR/checkpoints/{epoch_N,step_N}/. One CPU, one GPU or many.
"""
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from accelerate.utils import set_seed
from tqdm.auto import tqdm

from aaformer_hf.data.parsing import add_parsing_column
from train_config import BASELINES, TrainConfig, parse_config
from train_losses import AAformerLoss
from train_outputs import claim_output_dir, read_state, resume_folder
from train_utils import (
    build_model, check_finite_losses, extract, finish_run, format_summary, identity_labels,
    library_bars_only_on_a_terminal, load_data, make_loaders, make_optimizer, part_masks, quiet_bars, resumed_at,
    retrieval_metrics, run_summary, save_checkpoint, save_model, scheduler_from_config, start_accelerator,
    evaluate_and_keep_best,
)

__all__ = ['BASELINES', 'TrainConfig', 'build_model', 'extract', 'format_summary', 'main', 'make_optimizer',
           'parse_config', 'resumed_at', 'retrieval_metrics', 'save_model', 'train']

logger = logging.getLogger(__name__)


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train and evaluate; returns (and writes to ``output_dir/metrics.json``) the final evaluation."""
    if config.method != 'aaformer':  # CLIP-ReID / π-VL: two stages, in their own file
        from train_clipreid import train_two_stage
        return train_two_stage(config)
    accelerator = start_accelerator(config)
    output_dir = Path(config.output_dir)
    resume = resume_folder(config.resume_from_checkpoint, output_dir)  # before any work: no checkpoint is an error
    with claim_output_dir(output_dir, resuming=resume is not None, overwrite=config.overwrite_output_dir,
                          is_main_process=accelerator.is_main_process):
        accelerator.wait_for_everyone()  # the folder is this run's before any process writes to it
        return train_aaformer(config, accelerator, output_dir, resume)


def train_aaformer(config: TrainConfig, accelerator, output_dir: Path, resume: Optional[Path]) -> Dict[str, Any]:
    set_seed(config.seed)
    data = load_data(config)
    id2label = identity_labels(data['train'])
    model, pretrained_cfg, family = build_model(config, len(id2label), id2label)
    processor = family.image_processor_class.from_config(model.config)
    # [PART]s on human-parsing regions (assignment 'given', Table IV's SPReID row): every batch carries its maps
    parsing = model.config.assignment == 'given'
    if parsing:  # checks every map now: a bad one fails before training
        for split in (('query', 'gallery') if config.eval_only else ('train', 'query', 'gallery')):
            data[split] = add_parsing_column(data[split], config.data_root, missing=config.parsing_missing)

    loaders = make_loaders(config, data, pretrained_cfg, accelerator, train_parsing=parsing and not config.eval_only,
                           eval_parsing=parsing)
    loader, sampler, micro_per_epoch = loaders.train, loaders.sampler, loaders.micro_per_epoch

    criterion = AAformerLoss(label_smoothing=config.label_smoothing, margin=config.triplet_margin,
                             id_weight=config.id_loss_weight, triplet_weight=config.triplet_loss_weight)
    optimizer = make_optimizer(model.timm_model, config)  # timm's parameter groups need the timm model
    scheduler = scheduler_from_config(optimizer, loaders.steps_per_epoch, config)
    # the train loader is not prepared: the PK sampler already deals whole identities to each process
    model, optimizer, query_loader, gallery_loader = accelerator.prepare(model, optimizer, loaders.query,
                                                                          loaders.gallery)
    accelerator.register_for_checkpointing(scheduler)
    if config.with_tracking:
        accelerator.init_trackers('aaformer_hf', config=config.tracker_values())

    state = {'epoch': 0, 'step_in_epoch': 0, 'global_step': 0, 'best': None}
    if resume is not None:
        accelerator.load_state(str(resume))
        state = read_state(resume)
        accelerator.print(f'resumed from {resume}: {resumed_at(state)}')

    def model_inputs(batch):
        masks = {'part_masks': part_masks(accelerator.unwrap_model(model), batch[3])} if parsing else {}
        return dict(pixel_values=batch[0], **masks)

    images, compute_time, wait_time = 0, 0.0, 0.0
    metrics: Optional[Dict[str, Any]] = None
    epochs = 0 if config.eval_only else config.epochs
    accumulation = config.gradient_accumulation_steps
    progress = tqdm(total=epochs * loaders.steps_per_epoch, initial=state['global_step'], desc='training',
                    disable=quiet_bars(accelerator))
    for epoch in range(state['epoch'], epochs):
        model.train()
        scheduler.step(epoch + 1)  # lr_update 'epoch': this epoch's rate (CLIP-ReID counts epochs from 1)
        sampler.set_epoch(epoch, start_batch=state['step_in_epoch'] * accumulation)
        batches = iter(loader)
        for micro in range(state['step_in_epoch'] * accumulation, micro_per_epoch):
            started = time.perf_counter()
            batch = [item.to(accelerator.device, non_blocking=True) for item in next(batches)]
            waited = time.perf_counter()
            sync = (micro + 1) % accumulation == 0
            with nullcontext() if sync else accelerator.no_sync(model):
                out = model(**model_inputs(batch))
                losses = criterion(out.logits, out.features, batch[1])  # Eq. 8
                # accelerate divides the loss by gradient_accumulation_steps itself (set on the Accelerator)
                accelerator.backward(losses['loss'])
            # after backward (every process has joined its gradient all-reduce), before any optimiser step
            check_finite_losses(losses, state['global_step'] + 1, epoch, micro)
            if sync:
                optimizer.step()
                scheduler.step_update(state['global_step'] + 1)  # lr_update 'step': the rate of the next step
                optimizer.zero_grad(set_to_none=True)
                state['global_step'] += 1
                state['step_in_epoch'] = (micro + 1) // accumulation
                progress.update(1)
                progress.set_postfix(loss=f'{losses["loss"].item():.3f}', epoch=epoch)
                if progress.disable and config.log_every and state['step_in_epoch'] % config.log_every == 0 \
                        and accelerator.is_main_process:  # no bar drawn (not a terminal): a line now and then
                    logger.info('epoch %d: step %d / %d, loss %.3f', epoch + 1, state['step_in_epoch'],
                                loaders.steps_per_epoch, losses['loss'].item())
                if config.with_tracking:
                    accelerator.log({'train/' + k: v.item() for k, v in losses.items()}
                                    | {'train/lr': optimizer.param_groups[0]['lr']}, step=state['global_step'])
            images += batch[0].shape[0] * accelerator.num_processes
            wait_time += waited - started
            compute_time += time.perf_counter() - waited
            if sync and config.checkpoint_every_steps and state['global_step'] % config.checkpoint_every_steps == 0:
                save_checkpoint(accelerator, output_dir, f'step_{state["global_step"]}', state,
                                config.checkpoints_total_limit)
        del batches
        state['epoch'], state['step_in_epoch'] = epoch + 1, 0
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == epochs:  # before the checkpoint: it records the best
            metrics = evaluate_and_keep_best(model, query_loader, gallery_loader, accelerator, config, state,
                                             output_dir, processor)
        if config.checkpointing_steps == 'epoch':
            save_checkpoint(accelerator, output_dir, f'epoch_{epoch + 1}', state, config.checkpoints_total_limit)
    progress.close()
    if metrics is None:  # resumed after the last epoch, or eval_only
        metrics = evaluate_and_keep_best(model, query_loader, gallery_loader, accelerator, config, state, output_dir,
                                         processor)

    save_model(model, accelerator, output_dir / 'model', processor)
    summary = run_summary(config, accelerator, output_dir, metrics, state, pretrained_cfg, images, wait_time,
                          compute_time)
    return finish_run(config, accelerator, output_dir, summary)


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


if __name__ == '__main__':
    main()
