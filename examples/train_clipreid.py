"""CLIP-ReID's and π-VL's training, both stages in order: ``examples/train.py --method clipreid | pivl`` runs
``train_two_stage`` below.

Stage 1 (``stage1``): the image tower and the text tower stay frozen; the image features of every training image
are computed once, without augmentation, and cached; only the per-identity prompt tokens are tuned, with CLIP-ReID's
image-to-text + text-to-image SupCon loss on the projected CLS (``stage1_epochs``) and then, for π-VL, with that loss
plus the pixel-level InfoNCE between projected patch features and the identity-aware part prompts (Eq. 7-8,
``stage1_part_epochs``).
Stage 2 (the epoch loop in ``train_two_stage``): the text features of every identity (and every identity's part
prompts) are computed once and kept fixed (``fix_text_features``); the image encoder trains with ID + triplet +
image-to-text cross-entropy (CLIP-ReID) plus π-VL's alignment MSE between an auxiliary head and the text-embedding
map (Eq. 11-12; ``stage2_losses``): for the ViT on the last block's patch map, for the CNN on its C2-C4 stages.
Both backbones of π-VL's Table 2 train here: the CLIP ViT (``pivl_vit_*``) and the CLIP ResNet (``pivl_resnet*``);
where they differ (``image_features``, ``Stage2Model``) the code says which is which.
The head and the text side are never part of the saved model; the learned text features are written beside it
(``text_features.safetensors``). π-VL's pieces: the prompt learner (``train_prompts.py``), the alignment heads
(``train_fusion.py``) and Table 5's student (``train_student.py``).
"""
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from tqdm.auto import tqdm

from aaformer_hf.data import build_transforms, eval_loader
from aaformer_hf.data.parsing import add_parsing_column
from aaformer_hf.data.sampler import PKSampler
from aaformer_hf.models.pivl_resnet import PiVLResNet
from train_config import TrainConfig
from train_fusion import (
    NUM_PARSING_CLASSES, CNNHierarchicalFusion, build_alignment_head, parsing_on_grid, text_embedding_map,
)
from train_losses import CLIPReIDLoss, alignment_loss, part_infonce_loss, supcon_loss
from train_outputs import claim_output_dir, read_state, resume_folder
from train_prompts import LIP_PART_WORDS, PromptLearner, encode_prompt_embeddings, freeze
from train_utils import (
    build_model, check_finite_losses, evaluate_and_keep_best, finish_run, identity_labels, load_data, make_loaders,
    make_optimizer, make_scheduler, quiet_bars, resumed_at, run_summary, save_checkpoint, save_model,
    scheduler_from_config, start_accelerator,
)

__all__ = ['train_two_stage', 'TwoStageModels', 'stage1', 'fix_text_features', 'stage2_losses', 'Stage2Model',
           'load_text_side']

logger = logging.getLogger(__name__)
TEXT_BATCH = 256  # prompts per text-tower call when encoding every identity's prompts


def train_two_stage(config: TrainConfig) -> Dict[str, Any]:
    """CLIP-ReID (``--method clipreid``) or π-VL (``--method pivl``, its Table 3 rows, Table 5's students): stage 1,
    then stage 2; returns (and writes to ``output_dir/metrics.json``) the final evaluation."""
    accelerator = start_accelerator(config)
    output_dir = Path(config.output_dir)
    resume = resume_folder(config.resume_from_checkpoint, output_dir)  # before any work: no checkpoint is an error
    with claim_output_dir(output_dir, resuming=resume is not None, overwrite=config.overwrite_output_dir,
                          is_main_process=accelerator.is_main_process):
        accelerator.wait_for_everyone()  # the folder is this run's before any process writes to it
        return _train_two_stage(config, accelerator, output_dir, resume)


def _train_two_stage(config: TrainConfig, accelerator: Accelerator, output_dir: Path, resume: Optional[Path]
                     ) -> Dict[str, Any]:
    set_seed(config.seed)
    data = load_data(config)
    id2label = identity_labels(data['train'])
    model, pretrained_cfg, family = build_model(config, len(id2label), id2label)
    models = TwoStageModels.build(config, model, len(id2label))
    # a Table 5 student saves its own preprocessing (its mean/std) in its folder; the CLIP model gets a processor
    processor = family.image_processor_class.from_config(model.config) if models.input_cfg is None else None
    input_cfg = models.input_cfg or pretrained_cfg
    if models.parsing and not config.eval_only:  # checks every map now: a bad one fails before training
        data['train'] = add_parsing_column(data['train'], config.data_root, missing=config.parsing_missing)

    loaders = make_loaders(config, data, input_cfg, accelerator, train_parsing=models.parsing and not config.eval_only)
    loader, sampler, micro_per_epoch = loaders.train, loaders.sampler, loaders.micro_per_epoch
    steps_per_epoch = loaders.steps_per_epoch

    criterion = CLIPReIDLoss(
        label_smoothing=config.label_smoothing, margin=config.triplet_margin, id_weight=config.id_loss_weight,
        triplet_weight=config.triplet_loss_weight, i2t_weight=config.i2t_loss_weight,
        align_weight=config.align_loss_weight)
    optimizer = make_optimizer(models.trainable, config)
    scheduler = scheduler_from_config(optimizer, steps_per_epoch, config)
    # the train loader is not prepared: the PK sampler already deals whole identities to each process
    trainable, optimizer, query_loader, gallery_loader = accelerator.prepare(
        models.trainable, optimizer, loaders.query, loaders.gallery)
    accelerator.register_for_checkpointing(scheduler)
    models.prepare(accelerator)  # after the objects above: checkpoints list them in this order
    reid_model = models.reid_model  # evaluated and saved (the head and the text side are not)
    if config.with_tracking:
        accelerator.init_trackers('aaformer_hf', config=config.tracker_values())

    state = {'epoch': 0, 'step_in_epoch': 0, 'global_step': 0, 'best': None}
    if resume is not None:
        accelerator.load_state(str(resume))
        state = read_state(resume)
        accelerator.print(f'resumed from {resume}: {resumed_at(state)}')

    text_features = part_text_features = None
    if not config.eval_only:
        state.setdefault('stage', 1)
        for key in ('stage1_epoch', 'stage1_step_in_epoch', 'stage1_step'):
            state.setdefault(key, 0)
        total = config.stage1_epochs + config.stage1_part_epochs
        if state['stage'] == 1 and state['stage1_epoch'] < total:  # stage 1 (or what is left of it, resumed)
            stage1(models, accelerator, config, data, pretrained_cfg, state, output_dir, loaders.workers)
        state['stage'] = 2
        # stage 2's fixed text features (also after a resume in stage 2: the tuned tokens are in the checkpoint)
        text_features, part_text_features = fix_text_features(models, accelerator, config, len(id2label), output_dir)
        if models.teacher is not models.reid_model:
            models.teacher.to('cpu')  # a student's teacher has done its work: free the accelerator's memory

    images, compute_time, wait_time = 0, 0.0, 0.0
    metrics: Optional[Dict[str, Any]] = None
    epochs = 0 if config.eval_only else config.epochs
    accumulation = config.gradient_accumulation_steps
    progress = tqdm(total=epochs * steps_per_epoch, initial=state['global_step'], desc='stage 2',
                    disable=quiet_bars(accelerator))
    for epoch in range(state['epoch'], epochs):
        trainable.train()
        scheduler.step(epoch + 1)  # lr_update 'epoch' (CLIP-ReID's): this epoch's rate, epochs counted from 1
        sampler.set_epoch(epoch, start_batch=state['step_in_epoch'] * accumulation)
        batches = iter(loader)
        for micro in range(state['step_in_epoch'] * accumulation, micro_per_epoch):
            started = time.perf_counter()
            batch = [item.to(accelerator.device, non_blocking=True) for item in next(batches)]
            waited = time.perf_counter()
            sync = (micro + 1) % accumulation == 0
            with nullcontext() if sync else accelerator.no_sync(trainable):
                losses = stage2_losses(trainable, criterion, batch, text_features, part_text_features, config,
                                       models.uses_cameras)
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
                    logger.info('stage 2, epoch %d: step %d / %d, loss %.3f', epoch + 1, state['step_in_epoch'],
                                steps_per_epoch, losses['loss'].item())
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
            metrics = evaluate_and_keep_best(reid_model, query_loader, gallery_loader, accelerator, config, state,
                                             output_dir, processor)
        if config.checkpointing_steps == 'epoch':
            save_checkpoint(accelerator, output_dir, f'epoch_{epoch + 1}', state, config.checkpoints_total_limit)
    progress.close()
    if metrics is None:  # resumed after the last epoch, or eval_only
        metrics = evaluate_and_keep_best(reid_model, query_loader, gallery_loader, accelerator, config, state,
                                         output_dir, processor)

    save_model(reid_model, accelerator, output_dir / 'model', processor)
    summary = run_summary(config, accelerator, output_dir, metrics, state, pretrained_cfg, images, wait_time,
                          compute_time)
    return finish_run(config, accelerator, output_dir, summary)


# ---- the models of the two stages ----


@dataclass
class TwoStageModels:
    """What the two stages train and read: the CLIP re-ID model stage 1 reads (``teacher``), the re-ID model stage 2
    trains and the run saves (``reid_model``: the teacher itself, or Table 5's student), the module stage 2's
    optimiser steps (``trainable``: the re-ID model with π-VL's alignment head), and stage 1's text side."""
    teacher: nn.Module
    reid_model: nn.Module
    trainable: nn.Module
    parsing: bool  # the training items carry their parsing maps (π-VL's part prompts)
    uses_cameras: bool  # stage 2 passes each image's camera (a model with SIE)
    input_cfg: Optional[Dict[str, Any]] = None  # a student's own preprocessing (None: the CLIP model's)
    text_model: Optional[nn.Module] = None
    prompt_learner: Optional[nn.Module] = None
    stage1_optimizer: Optional[torch.optim.Optimizer] = None

    @classmethod
    def build(cls, config: TrainConfig, model: nn.Module, num_classes: int) -> 'TwoStageModels':
        parsing = config.part_prompts != 'off'
        width = model.config.projection_dim
        if config.student_model is None:
            cnn = is_cnn(model)  # π-VL's CNN: the fusion reads C2-C4, the 1x1 head the last map
            head = None if config.alignment_head == 'off' else build_alignment_head(
                config.alignment_head, model.config.hidden_size, width, config.align_hidden,
                cnn_widths=model.config.hidden_sizes[:3] if cnn else (), fusion_sum=config.cnn_fusion_sum)
            models = cls(model, model, Stage2Model(model, head), parsing, getattr(model.config, 'num_cameras', 0) > 0)
        else:  # Table 5: a timm student learns from the teacher's prompts; the teacher only caches stage-1 features
            from train_student import build_student
            student, input_cfg = build_student(
                config.student_model, num_classes, width, (model.config.num_channels, *model.config.image_size),
                config.student_pretrained, config.student_pretrained_file)
            head = None if config.alignment_head == 'off' else build_alignment_head(
                config.alignment_head, student.backbone.num_features, width, config.align_hidden)
            # in stage 2 a student has no camera embedding
            models = cls(model, student, StudentStage2Model(student, head), parsing, False, input_cfg)
        if config.eval_only:
            return models
        models.text_model, tokenizer = load_text_side(config.text_model)
        width = models.text_model.config.projection_dim
        if width != model.config.projection_dim:
            raise ValueError(f'text_model {config.text_model}: its projection is {width}-d, the image tower\'s '
                             f'{model.config.projection_dim}-d; they must be the same CLIP')
        torch.manual_seed(config.seed)  # the identity tokens' initialisation
        models.prompt_learner = PromptLearner(
            tokenizer, models.text_model.text_model.embeddings.token_embedding, num_classes,
            models.text_model.config.max_position_embeddings, config.num_context_tokens,
            part_words=LIP_PART_WORDS if parsing else None, identity_parts=config.part_prompts == 'identity')
        models.stage1_optimizer = torch.optim.Adam(
            models.prompt_learner.parameters(), lr=config.stage1_lr, weight_decay=config.stage1_weight_decay)
        return models

    def prepare(self, accelerator: Accelerator) -> None:
        """Stage 1's objects on the device; the prompt learner is a model of its own (DDP averages its gradients),
        and checkpoints save it and its optimiser."""
        if self.prompt_learner is None:
            return
        if self.teacher is not self.reid_model:  # not prepared with the trainable module: stage 1 still needs it
            self.teacher.to(accelerator.device)
        self.text_model.to(accelerator.device)
        self.prompt_learner, self.stage1_optimizer = accelerator.prepare(self.prompt_learner, self.stage1_optimizer)


def is_cnn(reid_model: nn.Module) -> bool:
    """A π-VL CNN (CLIP ResNet) rather than a CLIP ViT."""
    return isinstance(reid_model.timm_model, PiVLResNet)


class Stage2Model(nn.Module):
    """What stage 2 trains: the re-ID model and (π-VL) the alignment head.

    ``forward`` returns the identity logits (B, 2, C), CLIP-ReID's three triplet features and the head's map
    (B, E, h', w') or None. The triplet features, as CLIP-ReID's ``build_transformer`` returns them: for the ViT the
    CLS after the second-to-last block, the CLS after the final norm and its projection; for the ResNet the third
    stage's map and the last map, average-pooled, and the attention pool's projection. The head reads the ViT's last
    patch map, or the ResNet's C2-C4 (fusion) / last map (1x1 head).
    """

    def __init__(self, reid_model: nn.Module, alignment_head: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.reid_model = reid_model
        self.alignment_head = alignment_head

    def forward(self, pixel_values: torch.Tensor, camera_ids: Optional[torch.Tensor] = None):
        if is_cnn(self.reid_model):
            if camera_ids is not None:
                raise ValueError('π-VL\'s CNN has no camera embedding (CLIP-ReID\'s never uses one)')
            out = self.reid_model(pixel_values=pixel_values, output_hidden_states=True)
            maps = out.hidden_states  # the stem's map, then stages 1-4
            features = (maps[-2].mean((2, 3)), *out.features)  # stage 3 pooled, stage 4 pooled, its projection
            aligned = None
            if self.alignment_head is not None:
                fusion = isinstance(self.alignment_head, CNNHierarchicalFusion)
                aligned = self.alignment_head(maps[1:4] if fusion else maps[-1])
            return out.logits, features, aligned
        out = self.reid_model(pixel_values=pixel_values, camera_ids=camera_ids, output_hidden_states=True)
        features = (out.hidden_states[-2][:, 0], *out.features)  # CLS after block 11, CLS, its projection
        aligned = None
        if self.alignment_head is not None:
            trunk = self.reid_model.timm_model
            patches = out.hidden_states[-1][:, trunk.num_prefix_tokens:]
            grid = trunk.patch_embed.dynamic_feat_size(pixel_values.shape[-2:])
            aligned = self.alignment_head(patches.transpose(1, 2).reshape(len(patches), -1, *grid))
        return out.logits, features, aligned


class StudentStage2Model(Stage2Model):
    """Stage 2 of Table 5: the student (train_student.StudentReID) and the alignment head on its last map."""

    def forward(self, pixel_values: torch.Tensor, camera_ids: Optional[torch.Tensor] = None):
        out = self.reid_model(pixel_values, output_feature_map=self.alignment_head is not None)
        aligned = None if self.alignment_head is None else self.alignment_head(out.feature_map)
        return out.logits, out.features, aligned


def load_text_side(name: str):
    """transformers' ``CLIPTextModelWithProjection`` and its tokenizer (a folder or Hub id), the text tower frozen."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection
    text_model = CLIPTextModelWithProjection.from_pretrained(name)
    return freeze(text_model), AutoTokenizer.from_pretrained(name)


# ---- stage 1 ----


def stage1(models: TwoStageModels, accelerator: Accelerator, config: TrainConfig, data: Dict[str, Any],
           pretrained_cfg: Dict[str, Any], state: Dict[str, Any], output_dir: Path, workers: int) -> None:
    """Tune the prompt tokens on the cached image features for ``stage1_epochs`` (+ π-VL's ``stage1_part_epochs``),
    from where ``state`` says (a resumed run); checkpoints as stage 2's, named ``stage1_*``."""
    total = config.stage1_epochs + config.stage1_part_epochs
    cache = cache_image_features(models.teacher, accelerator, config, data['train'], pretrained_cfg, workers,
                                 with_patches=config.stage1_part_epochs > 0)
    batches_of = stage1_batches(cache['labels'].tolist(), accelerator, config)
    steps = len(batches_of(0))
    # CLIP-ReID's stage-1 schedule (its code): timm's cosine over all stage-1 epochs with the warm-up inside it, the
    # rate set at the start of each epoch counted from 1; set from the epoch alone (a resume needs no more)
    scheduler = make_scheduler(models.stage1_optimizer, steps, schedule='cosine', epochs=total,
                               warmup_epochs=config.stage1_warmup_epochs, warmup_lr=config.stage1_warmup_lr,
                               min_lr=config.stage1_min_lr, per_epoch=True, cosine_after_warmup=False)
    progress = tqdm(total=total * steps, initial=state['stage1_step'], desc='stage 1 (prompts)',
                    disable=quiet_bars(accelerator))
    models.prompt_learner.train()
    for epoch in range(state['stage1_epoch'], total):
        batches = batches_of(epoch)
        with_parts = epoch >= config.stage1_epochs
        scheduler.step(epoch + 1)
        for step in range(state['stage1_step_in_epoch'], steps):
            index = torch.tensor(batches[step])
            losses = stage1_losses(models, accelerator, config, cache, index, with_parts)
            # stage 1 does not accumulate; accelerate divides by gradient_accumulation_steps (a stage-2 setting)
            accelerator.backward(losses['loss'] * config.gradient_accumulation_steps)
            check_finite_losses(losses, state['stage1_step'] + 1, epoch, step)
            models.stage1_optimizer.step()
            models.stage1_optimizer.zero_grad(set_to_none=True)
            state['stage1_step'] += 1
            state['stage1_step_in_epoch'] = step + 1
            progress.update(1)
            progress.set_postfix(loss=f'{losses["loss"].item():.3f}', epoch=epoch)
            if progress.disable and config.log_every and (step + 1) % config.log_every == 0 \
                    and accelerator.is_main_process:  # no bar drawn (not a terminal): a line now and then
                logger.info('stage 1, epoch %d: step %d / %d, loss %.3f', epoch + 1, step + 1, steps,
                            losses['loss'].item())
            if config.with_tracking:
                accelerator.log({'stage1/' + k: v.item() for k, v in losses.items()}
                                | {'stage1/lr': models.stage1_optimizer.param_groups[0]['lr']},
                                step=state['stage1_step'])
            if config.checkpoint_every_steps and state['stage1_step'] % config.checkpoint_every_steps == 0:
                save_checkpoint(accelerator, output_dir, f'stage1_step_{state["stage1_step"]}', state,
                                config.checkpoints_total_limit)
        state['stage1_epoch'], state['stage1_step_in_epoch'] = epoch + 1, 0
        if config.checkpointing_steps == 'epoch':
            save_checkpoint(accelerator, output_dir, f'stage1_epoch_{epoch + 1}', state,
                            config.checkpoints_total_limit)
    progress.close()


def stage1_batches(labels: Sequence[int], accelerator: Accelerator, config: TrainConfig):
    """``epoch -> this process's batches`` (lists of cache rows), the same on every call for an epoch (so a resumed
    run sees the batches it left). ``stage1_sampling`` 'pk': π-VL §4.2's identities x ``num_instances`` images
    (the PK sampler); 'shuffle': CLIP-ReID's code, every cached feature once an epoch in a random order, in batches of
    ``stage1_batch_size``, the last one the remainder. Over several processes each batch is dealt out among them (a
    remainder smaller than the process count is left out, the same on every process)."""
    rank, world, size = accelerator.process_index, accelerator.num_processes, config.stage1_batch_size
    if config.stage1_sampling == 'shuffle':
        def shuffled(epoch: int) -> List[List[int]]:
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed + 1 + epoch))
            whole = [order[start:start + size].tolist() for start in range(0, len(labels), size)]
            return [batch[rank::world] for batch in whole if len(batch) >= world]
        return shuffled
    if size % (config.num_instances * world):
        raise ValueError(f'stage1_batch_size ({size}) must be divisible by num_instances x processes '
                         f'({config.num_instances} x {world})')
    per_process = size // world
    sampler = PKSampler(labels, per_process, config.num_instances, seed=config.seed + 1, num_replicas=world,
                        rank=rank)

    def identities_x_instances(epoch: int) -> List[List[int]]:
        sampler.set_epoch(epoch)
        order = list(sampler)
        return [order[start:start + per_process] for start in range(0, len(order) - per_process + 1, per_process)]
    return identities_x_instances


@torch.no_grad()
def cache_image_features(teacher: nn.Module, accelerator: Accelerator, config: TrainConfig, train_split,
                         pretrained_cfg: Dict[str, Any], workers: int, with_patches: bool) -> Dict[str, torch.Tensor]:
    """Every training image's projected feature (and, for the part epochs, its projected features per cell of the
    last map and the parsing labels on that grid), computed once without augmentation; identical on every
    process."""
    trunk = teacher.timm_model
    loader = accelerator.prepare(eval_loader(
        train_split, build_transforms(pretrained_cfg, train=False), config.eval_batch_size, workers,
        parsing=with_patches))
    was_training = trunk.training
    trunk.eval()
    columns: Dict[str, list] = {'image': [], 'labels': [], 'patches': [], 'cells': [], 'has_parsing': []}
    for batch in tqdm(loader, desc='stage 1: caching image features', leave=False, disable=quiet_bars(accelerator)):
        pixels, pids = batch[:2]
        with accelerator.autocast():
            image, cells, grid = image_features(trunk, pixels, with_cells=with_patches)
            row = {'image': image.float(), 'labels': pids}
            if with_patches:
                row['patches'] = cells.half()  # stored in fp16 to halve memory
                row['cells'] = parsing_on_grid(batch[3], grid)[0]
                row['has_parsing'] = batch[4]
        for key, value in accelerator.gather_for_metrics(row).items():
            columns[key].append(value.cpu())
    trunk.train(was_training)
    return {key: torch.cat(value) for key, value in columns.items() if value}


def image_features(trunk: nn.Module, pixels: torch.Tensor, with_cells: bool
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Tuple[int, int]]:
    """Stage 1's image features in the text space: (B, E) per image, and with ``with_cells`` (B, N, E) per cell of
    the grid it returns. ViT: the projected CLS, and CLIP's final norm and projection applied to every patch token
    (as DenseCLIP / MaskCLIP do). ResNet: the attention pool's output for its mean token (CLIP-ReID's
    ``image_features_proj[0]``), and its outputs for every cell of the last map as queries (the rest of that
    sequence). π-VL does not say how its patch features reach the text space. No camera embedding on this path, as
    in CLIP-ReID's code (its stage-1 image features skip SIE)."""
    if isinstance(trunk, PiVLResNet):
        last = trunk.forward_features(pixels)
        image, cells = trunk.attn_pool(last), None
        if with_cells:
            pool = trunk.attn_pool
            pool.pool_type = ''  # timm's AttentionPool2d then returns every cell's output, as a map
            try:
                cells = pool(last).flatten(2).transpose(1, 2)
            finally:
                pool.pool_type = 'token'
        return image, cells, tuple(last.shape[-2:])
    tokens, _ = trunk.forward_tokens(pixels, without_cameras=True)
    image = trunk.proj(tokens[:, 0])
    cells = trunk.proj(tokens[:, trunk.num_prefix_tokens:]) if with_cells else None
    return image, cells, tuple(trunk.patch_embed.dynamic_feat_size(pixels.shape[-2:]))


def encode_prompts(models: TwoStageModels, accelerator: Accelerator, labels: torch.Tensor,
                   parts: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The text features of the identities' prompts (with ``parts``: their part prompts)."""
    with accelerator.autocast():
        embeddings, eos = models.prompt_learner(labels, parts)
        return encode_prompt_embeddings(models.text_model, embeddings, eos).float()


def stage1_losses(models: TwoStageModels, accelerator: Accelerator, config: TrainConfig,
                  cache: Dict[str, torch.Tensor], index: torch.Tensor, with_parts: bool) -> Dict[str, torch.Tensor]:
    """CLIP-ReID's L_i2t + L_t2i on the batch's cached projected CLS (Eq. 2); with the part epochs also π-VL's
    L_part (Eq. 7) over the batch's pixels, L_prompt = L_stage1 + L_part (Eq. 8)."""
    device = accelerator.device
    labels, images = cache['labels'][index].to(device), cache['image'][index].to(device)
    if not with_parts:
        texts = encode_prompts(models, accelerator, labels)
        loss = supcon_loss(images, texts, labels, labels) + supcon_loss(texts, images, labels, labels)
        return {'loss': loss, 'stage1_loss': loss}
    keep = cache['has_parsing'][index].to(device).bool()
    cells = cache['cells'][index].to(device)[keep].flatten(1)  # (B', h*w) parsing labels
    pixels = cache['patches'][index].to(device)[keep].float().flatten(0, 1)  # (B' * h*w, E)
    pixel_keys = (labels[keep, None] * NUM_PARSING_CLASSES + cells).flatten()  # (identity, part) of each pixel
    keys = pixel_keys.unique()
    # one call for the identity prompts and the distinct part prompts (DDP wants one forward per step)
    texts = encode_prompts(models, accelerator, torch.cat([labels, keys // NUM_PARSING_CLASSES]),
                           torch.cat([torch.full_like(labels, -1), keys % NUM_PARSING_CLASSES]))
    identity_texts, part_texts = texts[:len(labels)], texts[len(labels):]
    stage1_loss = supcon_loss(images, identity_texts, labels, labels) + \
        supcon_loss(identity_texts, images, labels, labels)
    part = part_infonce_loss(pixels, pixel_keys, part_texts, keys, config.part_temperature) if len(keys) \
        else identity_texts.sum() * 0
    return {'loss': stage1_loss + part, 'stage1_loss': stage1_loss, 'part_loss': part}


# ---- stage 2 ----


@torch.no_grad()
def fix_text_features(models: TwoStageModels, accelerator: Accelerator, config: TrainConfig, num_classes: int,
                      output_dir: Path) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Every identity's prompt feature (C, E) and, with part prompts, every identity's part-prompt features
    (C, P, E), from the tuned tokens; computed once and fixed for stage 2, and written beside the model."""
    accelerator.unwrap_model(models.prompt_learner).eval()
    device, classes = accelerator.device, torch.arange(num_classes, device=accelerator.device)
    text_features = torch.cat([encode_prompts(models, accelerator, c) for c in classes.split(TEXT_BATCH)])
    saved, part_text_features = {'identity': text_features}, None
    if models.parsing:
        parts = torch.arange(NUM_PARSING_CLASSES, device=device)
        if config.part_prompts == 'identity':
            labels, part = classes.repeat_interleave(len(parts)), parts.repeat(len(classes))
            flat = torch.cat([encode_prompts(models, accelerator, lab, par)
                              for lab, par in zip(labels.split(TEXT_BATCH), part.split(TEXT_BATCH))])
            part_text_features = flat.view(len(classes), len(parts), -1)
        else:  # label-only prompts: the same for every identity
            part_text_features = encode_prompts(models, accelerator, torch.zeros_like(parts), parts).expand(
                len(classes), -1, -1)
        saved['parts'] = part_text_features.contiguous()
    if accelerator.is_main_process:
        save_file({k: v.cpu().contiguous() for k, v in saved.items()}, output_dir / 'text_features.safetensors',
                  metadata={'text_model': config.text_model, 'part_prompts': config.part_prompts})
    return text_features, part_text_features


def stage2_losses(trainable: nn.Module, criterion: CLIPReIDLoss, batch: Sequence[torch.Tensor],
                  text_features: torch.Tensor, part_text_features: Optional[torch.Tensor], config: TrainConfig,
                  uses_cameras: bool) -> Dict[str, torch.Tensor]:
    """ID + triplet + image-to-text (CLIP-ReID) and, with an alignment head, π-VL's alignment MSE (Eq. 11-12)."""
    pixels, pids, cams = batch[:3]
    logits, features, aligned = trainable(pixels, cams if uses_cameras else None)
    alignment = None
    if aligned is not None:
        parsing, keep = batch[3], batch[4].bool()
        cells, share = parsing_on_grid(parsing, aligned.shape[-2:])
        target = text_embedding_map(part_text_features, pids, cells)
        if bool(keep.any()):
            alignment = alignment_loss(aligned[keep], target[keep], share[keep] if config.align_confidence else None)
        else:  # no image of this batch has a parsing map (parsing_missing='keep')
            alignment = aligned.sum() * 0
    return criterion(logits, features, pids, text_features, alignment)
