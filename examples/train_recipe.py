"""The pieces of examples/train.py's loop that a training method plugs into (``Recipe``), and small helpers the
methods share (timm's learning-rate schedule, the divergence check, progress-bar rules)."""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn
from accelerate import Accelerator
from timm.scheduler import MultiStepLRScheduler, create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from aaformer_hf.data.parsing import region_masks
from train_config import TrainConfig
from train_losses import AAformerLoss

__all__ = ['Recipe', 'ParsingPartsRecipe', 'part_masks', 'RunContext', 'make_scheduler', 'check_finite_losses',
           'quiet_bars', 'library_bars_only_on_a_terminal']


class Recipe:
    """What a training method adds to the shared loop (data, schedule, checkpoints, evaluation, saving).

    AAformer's recipe: the re-ID model is what the optimiser trains; each batch's loss is Eq. 8. CLIP-ReID and π-VL
    (train_clipreid.py) train a wrapper holding the re-ID model and an alignment head, run their stage 1 before the
    epochs, and add parsing maps to the batches.
    """
    parsing = False  # the training items carry their parsing maps
    eval_parsing = False  # so do the query and gallery items (a model whose [PART]s come from them)
    # the pretrained config the trained model's images are prepared with, when not the model's own (a Table 5
    # student: its mean/std); such a model saves its preprocessing itself (no image processor is written)
    input_cfg: Optional[Dict[str, Any]] = None

    def __init__(self, config: TrainConfig, model: nn.Module) -> None:
        self.config, self.reid_model, self.trainable = config, model, model
        self.criterion = AAformerLoss(
            label_smoothing=config.label_smoothing, margin=config.triplet_margin, id_weight=config.id_loss_weight,
            triplet_weight=config.triplet_loss_weight)

    def optimizer_target(self) -> nn.Module:
        """The module whose parameters the optimiser gets (timm's parameter groups need the timm model)."""
        return self.trainable.timm_model

    def prepare(self, accelerator: Accelerator) -> None:
        """Prepare and register this method's own objects, after the trainable module and its optimiser."""

    def before_epochs(self, run: "RunContext") -> None:
        """Work before (or, resumed, instead of part of) the training epochs: CLIP-ReID's stage 1."""

    def model_inputs(self, batch: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """What the trained model is called with for a training batch."""
        return {'pixel_values': batch[0]}

    def losses(self, trainable: nn.Module, batch: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = trainable(**self.model_inputs(batch))
        return self.criterion(out.logits, out.features, batch[1])


class ParsingPartsRecipe(Recipe):
    """AAformer with [PART]s on human-parsing regions (``assignment='given'``, Table IV's SPReID row): every batch,
    training and test, carries its parsing maps, turned into each [PART]'s patches by ``part_masks``."""
    parsing = eval_parsing = True

    def model_inputs(self, batch: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {'pixel_values': batch[0], 'part_masks': part_masks(self.reid_model, batch[3])}


def part_masks(model: nn.Module, parsing: torch.Tensor) -> torch.Tensor:
    """(B, P, N) patch masks of the model's [PART]s from (B, H, W) parsing maps: SPReID's regions on its patch grid."""
    timm_model = getattr(model, 'timm_model', model)
    masks = region_masks(parsing, timm_model.patch_embed.grid_size)
    if masks.shape[1] != timm_model.num_parts:
        raise ValueError(f'{masks.shape[1]} parsing regions for a model with {timm_model.num_parts} [PART]s')
    return masks


@dataclass
class RunContext:
    """What a recipe's stage before the epochs needs of the run."""
    accelerator: Accelerator
    data: Dict[str, Any]
    pretrained_cfg: Dict[str, Any]
    state: Dict[str, Any]
    save_checkpoint: Callable[[str], None]
    workers: int
    output_dir: Path


def make_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, *, schedule: str, epochs: int,
                   warmup_epochs: int, warmup_lr: float, min_lr: float = 0.0, decay_epochs: Sequence[int] = (),
                   decay_factor: float = 0.1) -> Scheduler:
    """timm's scheduler for a linear warm-up from ``warmup_lr`` to the optimiser's lr over ``warmup_epochs``, then
    'cosine' to ``min_lr`` at ``epochs`` (the cosine starts after the warm-up: timm's ``warmup_prefix``) or 'step':
    x ``decay_factor`` from each of ``decay_epochs`` on. Updated per optimiser step: call ``step_update(steps_done)``;
    the rate of step 0 is set here."""
    warmup = dict(warmup_t=warmup_epochs * steps_per_epoch, warmup_lr_init=warmup_lr, t_in_epochs=False)
    if schedule == 'step':
        # timm's multistep scheduler applies milestone m at update m - 1 (its documented convention, kept on
        # purpose); m + 1 makes the rate change at the milestone itself, as the closed form and torch's MultiStepLR
        scheduler = MultiStepLRScheduler(
            optimizer, decay_t=[m * steps_per_epoch + 1 for m in decay_epochs], decay_rate=decay_factor,
            warmup_prefix=False, **warmup)  # milestones count from epoch 0, warm-up included
    else:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched='cosine', min_lr=min_lr, warmup_lr=warmup_lr, warmup_epochs=warmup_epochs,
            warmup_prefix=True, step_on_epochs=False, updates_per_epoch=steps_per_epoch,
            # a warm-up as long as training never reaches the cosine; timm needs a positive length all the same
            num_epochs=max(epochs - warmup_epochs, 1))
    scheduler.step_update(0)
    return scheduler


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
