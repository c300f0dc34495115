"""CLIP-ReID's and π-VL's two training stages, as a recipe for the shared loop in train.py.

Stage 1 (before the epochs): the image tower and the text tower stay frozen; the image features of every training
image are computed once, without augmentation, and cached; only the per-identity prompt tokens are tuned, with
CLIP-ReID's image-to-text + text-to-image SupCon loss on the projected CLS (``stage1_epochs``) and then, for π-VL,
with that loss plus the pixel-level InfoNCE between projected patch features and the identity-aware part prompts
(Eq. 7-8, ``stage1_part_epochs``).
Stage 2 (the epochs): the text features of every identity (and every identity's part prompts) are computed once and
kept fixed; the image encoder trains with ID + triplet + image-to-text cross-entropy (CLIP-ReID) plus π-VL's
alignment MSE between an auxiliary head on the last block's patch map and the text-embedding map (Eq. 11-12).
The head and the text side are never part of the saved model; the learned text features are written beside it
(``text_features.safetensors``).
"""
import logging
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from accelerate import Accelerator
from safetensors.torch import save_file
from tqdm.auto import tqdm

from aaformer_hf.data import build_transforms, eval_loader
from aaformer_hf.data.sampler import PKSampler
from train_config import TrainConfig
from train_recipe import Recipe, RunContext, check_finite_losses, make_scheduler, quiet_bars
from train_fusion import NUM_PARSING_CLASSES, build_alignment_head, parsing_on_grid, text_embedding_map
from train_losses import CLIPReIDLoss, alignment_loss, part_infonce_loss, supcon_loss
from train_prompts import LIP_PART_WORDS, PromptLearner, encode_prompt_embeddings, freeze

__all__ = ['TwoStageRecipe', 'Stage2Model', 'load_text_side']

logger = logging.getLogger(__name__)
TEXT_BATCH = 256  # prompts per text-tower call when encoding every identity's prompts


def load_text_side(name: str):
    """transformers' ``CLIPTextModelWithProjection`` and its tokenizer from a folder or Hub id, the text tower frozen."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection
    text_model = CLIPTextModelWithProjection.from_pretrained(name)
    return freeze(text_model), AutoTokenizer.from_pretrained(name)


class Stage2Model(nn.Module):
    """What stage 2 trains: the re-ID model and (π-VL) the alignment head on its last block's patch map.

    ``forward`` returns the identity logits (B, 2, C), CLIP-ReID's three triplet features (the CLS after the
    second-to-last block, the CLS after the final norm, its projection) and the head's map (B, E, h', w') or None.
    """

    def __init__(self, reid_model: nn.Module, alignment_head: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.reid_model = reid_model
        self.alignment_head = alignment_head

    def forward(self, pixel_values: torch.Tensor, camera_ids: Optional[torch.Tensor] = None):
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


class TwoStageRecipe(Recipe):
    """CLIP-ReID (``part_prompts='off'``) and π-VL's Table 3 variants, for a ``PiVLForReID`` model."""

    def __init__(self, config: TrainConfig, model: nn.Module, num_classes: int) -> None:
        self.config, self.num_classes = config, num_classes
        self.teacher = self.reid_model = model  # stage 1 reads the teacher; stage 2 trains reid_model
        self.parsing = config.part_prompts != 'off'
        self.uses_cameras = model.config.num_cameras > 0
        width = model.config.projection_dim
        if config.student_model is None:
            head = None if config.alignment_head == 'off' else build_alignment_head(
                config.alignment_head, model.config.hidden_size, width, config.align_hidden)
            self.trainable = Stage2Model(model, head)
        else:  # Table 5: a timm student learns from the teacher's prompts; the teacher only caches stage-1 features
            from train_student import build_student
            student, self.input_cfg = build_student(
                config.student_model, num_classes, width, (model.config.num_channels, *model.config.image_size),
                config.student_pretrained, config.student_pretrained_file)
            head = None if config.alignment_head == 'off' else build_alignment_head(
                config.alignment_head, student.backbone.num_features, width, config.align_hidden)
            self.reid_model, self.trainable = student, StudentStage2Model(student, head)
            self.uses_cameras = False  # in stage 2: a student has no camera embedding
        self.criterion = CLIPReIDLoss(
            label_smoothing=config.label_smoothing, margin=config.triplet_margin, id_weight=config.id_loss_weight,
            triplet_weight=config.triplet_loss_weight, i2t_weight=config.i2t_loss_weight,
            align_weight=config.align_loss_weight)
        self.text_features: Optional[torch.Tensor] = None  # (C, E), fixed in stage 2
        self.part_text_features: Optional[torch.Tensor] = None  # (C, P, E)
        self.prompt_learner = self.text_model = None
        if config.eval_only:
            return
        self.text_model, tokenizer = load_text_side(config.text_model)
        width = self.text_model.config.projection_dim
        if width != model.config.projection_dim:
            raise ValueError(f'text_model {config.text_model}: its projection is {width}-d, the image tower\'s '
                             f'{model.config.projection_dim}-d; they must be the same CLIP')
        torch.manual_seed(config.seed)  # the identity tokens' initialisation
        self.prompt_learner = PromptLearner(
            tokenizer, self.text_model.text_model.embeddings.token_embedding, num_classes,
            self.text_model.config.max_position_embeddings, config.num_context_tokens,
            part_words=LIP_PART_WORDS if self.parsing else None, identity_parts=config.part_prompts == 'identity')
        self.stage1_optimizer = torch.optim.Adam(
            self.prompt_learner.parameters(), lr=config.stage1_lr, weight_decay=config.stage1_weight_decay)

    def optimizer_target(self) -> nn.Module:
        return self.trainable

    def prepare(self, accelerator: Accelerator) -> None:
        if self.prompt_learner is None:
            return
        if self.teacher is not self.reid_model:  # not prepared with the trainable module: stage 1 still needs it
            self.teacher.to(accelerator.device)
        self.text_model.to(accelerator.device)
        # the learner is a model of its own (DDP averages its gradients); checkpoints save it and its optimiser
        self.prompt_learner, self.stage1_optimizer = accelerator.prepare(self.prompt_learner, self.stage1_optimizer)
        self.accelerator = accelerator

    # ---- stage 1 ----

    def _stage1_sampler(self, labels: Sequence[int]) -> PKSampler:
        accelerator, config = self.accelerator, self.config
        if config.stage1_batch_size % (config.num_instances * accelerator.num_processes):
            raise ValueError(f'stage1_batch_size ({config.stage1_batch_size}) must be divisible by num_instances x '
                             f'processes ({config.num_instances} x {accelerator.num_processes})')
        return PKSampler(labels, config.stage1_batch_size // accelerator.num_processes, config.num_instances,
                         seed=config.seed + 1, num_replicas=accelerator.num_processes,
                         rank=accelerator.process_index)

    def before_epochs(self, run: RunContext) -> None:
        config, state = self.config, run.state
        state.setdefault('stage', 1)
        for key in ('stage1_epoch', 'stage1_step_in_epoch', 'stage1_step'):
            state.setdefault(key, 0)
        total = config.stage1_epochs + config.stage1_part_epochs
        if state['stage'] == 1 and state['stage1_epoch'] < total:
            self._stage1(run, total)
        state['stage'] = 2
        self._fix_text_features(run)
        if self.teacher is not self.reid_model:
            self.teacher.to('cpu')  # a student's teacher has done its work: free the accelerator's memory

    def _stage1(self, run: RunContext, total: int) -> None:
        accelerator, config, state = run.accelerator, self.config, run.state
        cache = self.cache_image_features(run, with_patches=config.stage1_part_epochs > 0)
        sampler = self._stage1_sampler(cache['labels'].tolist())
        per_process = config.stage1_batch_size // accelerator.num_processes
        steps = len(sampler) // per_process

        # CLIP-ReID's stage-1 schedule over all stage-1 epochs, set from the step count alone (so a resume needs no
        # scheduler state)
        scheduler = make_scheduler(self.stage1_optimizer, steps, schedule='cosine', epochs=total,
                                   warmup_epochs=config.stage1_warmup_epochs, warmup_lr=config.stage1_warmup_lr,
                                   min_lr=config.stage1_min_lr)
        every_steps = config.checkpoint_every_steps
        progress = tqdm(total=total * steps, initial=state['stage1_step'], desc='stage 1 (prompts)',
                        disable=quiet_bars(accelerator))
        self.prompt_learner.train()
        for epoch in range(state['stage1_epoch'], total):
            sampler.set_epoch(epoch)
            order = list(sampler)
            with_parts = epoch >= config.stage1_epochs
            for step in range(state['stage1_step_in_epoch'], steps):
                index = torch.tensor(order[step * per_process:(step + 1) * per_process])
                scheduler.step_update(state['stage1_step'])
                lr = self.stage1_optimizer.param_groups[0]['lr']
                losses = self.stage1_losses(cache, index, with_parts)
                # stage 1 does not accumulate; accelerate divides by gradient_accumulation_steps (a stage-2 setting)
                accelerator.backward(losses['loss'] * config.gradient_accumulation_steps)
                check_finite_losses(losses, state['stage1_step'] + 1, epoch, step)
                self.stage1_optimizer.step()
                self.stage1_optimizer.zero_grad(set_to_none=True)
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
                                    | {'stage1/lr': lr}, step=state['stage1_step'])
                if every_steps and state['stage1_step'] % every_steps == 0:
                    run.save_checkpoint(f'stage1_step_{state["stage1_step"]}')
            state['stage1_epoch'], state['stage1_step_in_epoch'] = epoch + 1, 0
            if config.checkpointing_steps == 'epoch':
                run.save_checkpoint(f'stage1_epoch_{epoch + 1}')
        progress.close()

    @torch.no_grad()
    def cache_image_features(self, run: RunContext, with_patches: bool) -> Dict[str, torch.Tensor]:
        """Every training image's projected CLS (and, for the part epochs, its projected patch features and parsing
        labels on the patch grid), computed once without augmentation; identical on every process."""
        accelerator, trunk = run.accelerator, self.teacher.timm_model
        loader = accelerator.prepare(eval_loader(
            run.data['train'], build_transforms(run.pretrained_cfg, train=False), self.config.eval_batch_size,
            run.workers, parsing=with_patches))
        was_training = trunk.training
        trunk.eval()
        cameras = self.teacher.config.num_cameras > 0
        columns: Dict[str, list] = {'image': [], 'labels': [], 'patches': [], 'cells': [], 'has_parsing': []}
        for batch in tqdm(loader, desc='stage 1: caching image features', leave=False,
                          disable=quiet_bars(accelerator)):
            pixels, pids, cams = batch[:3]
            with accelerator.autocast():
                tokens, _ = trunk.forward_tokens(pixels, camera_ids=cams if cameras else None)
                image = trunk.proj(tokens[:, 0]).float()
                row = {'image': image, 'labels': pids}
                if with_patches:
                    grid = trunk.patch_embed.dynamic_feat_size(pixels.shape[-2:])
                    # CLIP's final norm and projection applied to every patch token (as DenseCLIP / MaskCLIP do; the
                    # paper does not say how its patch features reach the text space); stored in fp16 to halve memory
                    row['patches'] = trunk.proj(tokens[:, trunk.num_prefix_tokens:]).half()
                    row['cells'] = parsing_on_grid(batch[3], grid)[0]
                    row['has_parsing'] = batch[4]
            for key, value in accelerator.gather_for_metrics(row).items():
                columns[key].append(value.cpu())
        trunk.train(was_training)
        return {key: torch.cat(value) for key, value in columns.items() if value}

    def _encode(self, labels: torch.Tensor, parts: Optional[torch.Tensor] = None) -> torch.Tensor:
        with self.accelerator.autocast():
            embeddings, eos = self.prompt_learner(labels, parts)
            return encode_prompt_embeddings(self.text_model, embeddings, eos).float()

    def stage1_losses(self, cache: Dict[str, torch.Tensor], index: torch.Tensor, with_parts: bool
                      ) -> Dict[str, torch.Tensor]:
        """CLIP-ReID's L_i2t + L_t2i on the batch's cached projected CLS (Eq. 2); with the part epochs also
        π-VL's L_part (Eq. 7) over the batch's pixels, L_prompt = L_stage1 + L_part (Eq. 8)."""
        device = self.accelerator.device
        labels, images = cache['labels'][index].to(device), cache['image'][index].to(device)
        if not with_parts:
            texts = self._encode(labels)
            loss = supcon_loss(images, texts, labels, labels) + supcon_loss(texts, images, labels, labels)
            return {'loss': loss, 'stage1_loss': loss}
        keep = cache['has_parsing'][index].to(device).bool()
        cells = cache['cells'][index].to(device)[keep].flatten(1)  # (B', h*w) parsing labels
        pixels = cache['patches'][index].to(device)[keep].float().flatten(0, 1)  # (B' * h*w, E)
        pixel_keys = (labels[keep, None] * NUM_PARSING_CLASSES + cells).flatten()  # (identity, part) of each pixel
        keys = pixel_keys.unique()
        # one call for the identity prompts and the distinct part prompts (DDP wants one forward per step)
        texts = self._encode(torch.cat([labels, keys // NUM_PARSING_CLASSES]),
                             torch.cat([torch.full_like(labels, -1), keys % NUM_PARSING_CLASSES]))
        identity_texts, part_texts = texts[:len(labels)], texts[len(labels):]
        stage1 = supcon_loss(images, identity_texts, labels, labels) + \
            supcon_loss(identity_texts, images, labels, labels)
        part = part_infonce_loss(pixels, pixel_keys, part_texts, keys, self.config.part_temperature) if len(keys) \
            else identity_texts.sum() * 0
        return {'loss': stage1 + part, 'stage1_loss': stage1, 'part_loss': part}

    # ---- stage 2 ----

    @torch.no_grad()
    def _fix_text_features(self, run: RunContext) -> None:
        """Every identity's prompt feature (C, E) and, with part prompts, every identity's part-prompt features
        (C, P, E), from the tuned tokens; computed once and fixed for stage 2, and written beside the model."""
        learner = run.accelerator.unwrap_model(self.prompt_learner)
        learner.eval()
        device, classes = run.accelerator.device, torch.arange(self.num_classes, device=run.accelerator.device)
        self.text_features = torch.cat([self._encode(c) for c in classes.split(TEXT_BATCH)])
        saved = {'identity': self.text_features}
        if self.parsing:
            parts = torch.arange(NUM_PARSING_CLASSES, device=device)
            if self.config.part_prompts == 'identity':
                labels, part = classes.repeat_interleave(len(parts)), parts.repeat(len(classes))
                flat = torch.cat([self._encode(lab, par) for lab, par in zip(labels.split(TEXT_BATCH),
                                                                               part.split(TEXT_BATCH))])
                self.part_text_features = flat.view(len(classes), len(parts), -1)
            else:  # label-only prompts: the same for every identity
                self.part_text_features = self._encode(torch.zeros_like(parts), parts).expand(len(classes), -1, -1)
            saved['parts'] = self.part_text_features.contiguous()
        if run.accelerator.is_main_process:
            save_file({k: v.cpu().contiguous() for k, v in saved.items()}, run.output_dir / 'text_features.safetensors',
                      metadata={'text_model': self.config.text_model, 'part_prompts': self.config.part_prompts})

    def losses(self, trainable: nn.Module, batch: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        pixels, pids, cams = batch[:3]
        logits, features, aligned = trainable(pixels, cams if self.uses_cameras else None)
        alignment = None
        if aligned is not None:
            parsing, keep = batch[3], batch[4].bool()
            cells, share = parsing_on_grid(parsing, aligned.shape[-2:])
            target = text_embedding_map(self.part_text_features, pids, cells)
            if bool(keep.any()):
                alignment = alignment_loss(aligned[keep], target[keep],
                                           share[keep] if self.config.align_confidence else None)
            else:  # no image of this batch has a parsing map (parsing_missing='keep')
                alignment = aligned.sum() * 0
        return self.criterion(logits, features, pids, self.text_features, alignment)
