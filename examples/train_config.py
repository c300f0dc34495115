"""The training configuration: one dataclass, filled from a YAML file and command-line flags (flags win).

``method`` picks the recipe; fields left None take that method's values (``METHOD_DEFAULTS``):
- 'aaformer' (default, AAformer §IV-A): SGD (momentum 0.9, weight decay 1e-4), 10 warm-up epochs rising linearly from
  8e-4 to 8e-3, then cosine decay, 120 epochs, batches of 16 identities x 4 images at 256x128, an ImageNet-pretrained
  ViT-B/16 from timm.
- 'clipreid' (CLIP-ReID, ViT-B/16) and 'pivl' (π-VL §4.2): two stages. Stage 1 tunes prompt tokens only (Adam 3.5e-4,
  5 warm-up epochs from 1e-5 inside a cosine to 1e-6 over all stage-1 epochs; CLIP-ReID 120 epochs, π-VL 60 identity
  + 20 part-informed epochs); stage 2 trains the image encoder (Adam 5e-6, weight decay 1e-4, 10 warm-up epochs from
  0.1 x lr, x0.1 at epochs 30 and 50 of 60; loss weights ID 0.25, TRI 1, I2T 1 [+ ALIGN 1]). Both stages set the rate
  once per epoch, epochs counted from 1, as CLIP-ReID's code does (``lr_update``).
  With a CLIP ResNet (``--model pivl_resnet50``): CLIP-ReID's CNN config and π-VL's CNN recipe (``CNN_DEFAULTS``):
  stage 1 60 epochs for CLIP-ReID; stage 2 Adam 3.5e-4, weight decay 5e-4, 10 warm-up epochs from 0.01 x lr, x0.1 at
  epochs 40 and 70 of 120, ID loss weight 1.
Fields the papers do not state say so.
"""
import argparse
import dataclasses
import json
import logging
import os
import typing
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, get_args

import yaml

from aaformer_hf.data.sampler import EPOCH_MODES

logger = logging.getLogger(__name__)
__all__ = ['TrainConfig', 'BASELINES', 'METHODS', 'METHOD_DEFAULTS', 'CNN_DEFAULTS', 'PIVL_ABLATIONS', 'parse_config',
           'recipe', 'is_cnn_model']

# The paper's ablation baselines as model arguments (Table IV: [PART]s on fixed partitions or on human-parsing
# regions, and more CLS tokens; Table V: nearest neighbour instead of optimal transport; the ViT-baseline has no
# [PART]s). 'spreid' needs parsing maps for training AND test images (aaformer_hf.data.parsing).
BASELINES: Dict[str, Dict[str, Any]] = {
    'vit': dict(part_groups=()),
    'pcb': dict(assignment='stripes', part_groups=(6,)),
    'mgn': dict(assignment='stripes', part_groups=(2, 3)),
    'spreid': dict(assignment='given', part_groups=(5,)),  # SPReID's 5 regions (SPREID_REGIONS)
    'multi_cls': dict(assignment='global', part_groups=(5,)),  # "6*CLS": CLS + 5 tokens that see everything
    'nearest': dict(assignment='nearest'),
}

# the fields that name one of a few settings: their allowed values are these Literal types (checked by coerce_field)
Method = Literal['aaformer', 'clipreid', 'pivl']
METHODS = get_args(Method)
Baseline = Literal[tuple(BASELINES)]
SamplerEpoch = Literal[EPOCH_MODES]
LrSchedule = Literal['cosine', 'step']
LrUpdate = Literal['step', 'epoch']
WeightDecayScope = Literal['weights', 'all']
Stage1Sampling = Literal['pk', 'shuffle']
MixedPrecision = Literal['no', 'fp16', 'bf16']
PartPrompts = Literal['off', 'label', 'identity']
AlignmentHead = Literal['off', 'linear', 'pyramid']
FusionSum = Literal['all', 'eq10']
EvalMetric = Literal['euclidean', 'cosine']
ParsingMissing = Literal['error', 'keep']

_TWO_STAGE = dict(
    model='pivl_vit_base_patch16', optimizer='adam', lr=5e-6, epochs=60, warmup_epochs=10, warmup_lr=5e-7,
    lr_schedule='step', lr_decay_epochs=[30, 50], lr_update='epoch', weight_decay=1e-4, weight_decay_scope='all',
    bias_lr_factor=2.0, id_loss_weight=0.25)
# a method's recipe: the values of the fields left None
METHOD_DEFAULTS: Dict[str, Dict[str, Any]] = {
    'aaformer': dict(model='aaformer_base', optimizer='momentum', lr=8e-3, epochs=120, warmup_epochs=10,
                     warmup_lr=8e-4, lr_schedule='cosine', lr_decay_epochs=[30, 50], lr_update='step',
                     weight_decay=1e-4, weight_decay_scope='weights', bias_lr_factor=1.0, id_loss_weight=1.0,
                     stage1_epochs=0, stage1_part_epochs=0, stage1_sampling='pk', part_prompts='off',
                     alignment_head='off'),
    'clipreid': dict(_TWO_STAGE, stage1_epochs=120, stage1_part_epochs=0, stage1_sampling='shuffle', part_prompts='off',
                     alignment_head='off'),
    'pivl': dict(_TWO_STAGE, stage1_epochs=60, stage1_part_epochs=20, stage1_sampling='pk', part_prompts='identity',
                 alignment_head='pyramid'),
}
# the two-stage methods with a CLIP ResNet (π-VL's CNN rows): CLIP-ReID's CNN config (configs/person/cnn_clipreid.yml)
# and π-VL §4.2's CNN schedule, over the method's values
_CNN_STAGE2 = dict(lr=3.5e-4, epochs=120, warmup_epochs=10, warmup_lr=3.5e-6, lr_decay_epochs=[40, 70],
                   weight_decay=5e-4, id_loss_weight=1.0)
CNN_DEFAULTS: Dict[str, Dict[str, Any]] = {
    'clipreid': dict(_CNN_STAGE2, stage1_epochs=60),  # its CNN config's stage 1: 60 epochs (the ViT's 120)
    'pivl': dict(_CNN_STAGE2),  # π-VL's stage 1 (60 + 20) is the same for both backbones
}


def is_cnn_model(name: Optional[str]) -> bool:
    """A π-VL CNN (CLIP ResNet) timm name: its recipe is ``CNN_DEFAULTS`` over the method's."""
    import timm

    import aaformer_hf.models  # noqa: F401  (registers the timm models)
    return name is not None and name in timm.list_models(module='pivl_resnet')


def recipe(method: str, model: Optional[str] = None) -> Dict[str, Any]:
    """The values a method gives the fields left None, for this timm model."""
    return {**METHOD_DEFAULTS[method], **(CNN_DEFAULTS.get(method, {}) if is_cnn_model(model) else {})}


# π-VL's Table 3 rows (with --method pivl): B = CLIP-ReID; H = parsing-label prompts (no identity tokens);
# P = identity-aware part prompts; F = hierarchical-fusion alignment head (without F: a 1x1 projection at the patch grid)
PIVL_ABLATIONS: Dict[str, Dict[str, Any]] = {
    'B': dict(part_prompts='off', alignment_head='off', stage1_part_epochs=0),
    'B+H': dict(part_prompts='label', alignment_head='linear', stage1_part_epochs=0),  # nothing to tune in H's prompts
    'B+P': dict(part_prompts='identity', alignment_head='linear'),
    'B+P+F': dict(part_prompts='identity', alignment_head='pyramid'),
}
# what a Table 3 row takes from another method for the fields left unset: B is CLIP-ReID, so its stage 1 is
# CLIP-ReID's (120 epochs for the ViT, 60 for the CNN, every cached feature once an epoch), not π-VL's 60 epochs of
# 16 identities x 4
PIVL_ABLATION_FROM_METHOD: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    'B': ('clipreid', ('stage1_epochs', 'stage1_sampling')),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything ``examples/train.py`` needs. Every field is also a ``--flag``; dict fields take JSON on the
    command line (``--model_args '{"part_groups": [6]}'``)."""

    # method and model
    method: Method = 'aaformer'  # 'aaformer' | 'clipreid' | 'pivl': the recipe of every field left None
    model: Optional[str] = None  # a timm model name (None: aaformer_base / pivl_vit_base_patch16)
    model_args: Dict[str, Any] = dataclasses.field(default_factory=dict)  # constructor arguments, e.g. part_groups
    baseline: Optional[Baseline] = None  # one of BASELINES: vit, pcb, mgn, spreid, multi_cls, nearest (None: AAformer)
    pretrained: bool = True  # the timm pretrained backbone (ImageNet ViT-B/16 for aaformer_base)
    pretrained_file: Optional[str] = None  # a local timm checkpoint (.safetensors) loaded through timm's pretrained path

    # data
    dataset: str = 'market1501'  # a load_reid_dataset name, or 'synthetic' (generated into data_root if missing)
    data_root: Optional[str] = None
    # loader options, e.g. {"include_val": true}; for 'synthetic', generator options, e.g. {"train_ids": 100}
    dataset_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # loader worker processes per training process; None: the CPU cores this process may use divided by the
    # processes on this machine, at most 8 (a worker core prepares ~490 Market-size crops/s: bench_loader.py)
    num_workers: Optional[int] = None

    # optimisation (AAformer §IV-A; CLIP-ReID / π-VL stage 2). None: the method's value (METHOD_DEFAULTS)
    epochs: Optional[int] = None
    batch_size: int = 64  # identities x num_instances per step, over all processes
    num_instances: int = 4  # K images per identity
    # 'images': the toolkits' epoch (BoT / TransReID / CLIP-ReID), about every training image once;
    # 'identities': each identity once, one group of K (4x shorter on Market-1501, 7x on MSMT17). See PKSampler.
    sampler_epoch: SamplerEpoch = 'images'
    optimizer: Optional[str] = None  # a timm optimiser name: 'momentum' (SGD, heavy ball) | 'adam' | 'adamw' ...
    lr: Optional[float] = None
    warmup_epochs: Optional[int] = None
    warmup_lr: Optional[float] = None
    lr_schedule: Optional[LrSchedule] = None  # 'cosine' (to min_lr) | 'step' (x lr_decay_factor at each lr_decay_epochs)
    min_lr: float = 1.6e-5  # end of the cosine decay; not stated by the paper (TransReID's 0.002 x lr)
    lr_decay_epochs: Optional[List[int]] = None  # 'step': [30, 50] (CLIP-ReID's ViT), [40, 70] (its CNN)
    # how the rate follows the schedule: 'step' (at every optimiser step, epochs counted from 0; AAformer, whose paper
    # does not say) or 'epoch' (CLIP-ReID's code: set at the start of each epoch, the n-th epoch counted from 1 runs
    # at the schedule's value for n, so warm-up starts above warmup_lr and a decay at epoch 30 hits the 30th epoch)
    lr_update: Optional[LrUpdate] = None
    lr_decay_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: Optional[float] = None  # 1e-4 (AAformer, CLIP-ReID's ViT), 5e-4 (CLIP-ReID's CNN)
    # 'weights': no decay on biases, norms and tokens (timm's convention; AAformer's paper is silent); 'all': every
    # parameter decays (CLIP-ReID's code, its WEIGHT_DECAY_BIAS equal to WEIGHT_DECAY for the ViT)
    weight_decay_scope: Optional[WeightDecayScope] = None
    bias_lr_factor: Optional[float] = None  # CLIP-ReID's BIAS_LR_FACTOR (2): biases at 2x the rate, with scope 'all'
    label_smoothing: float = 0.1
    triplet_margin: Optional[float] = 0.3  # None: soft-margin triplet
    id_loss_weight: Optional[float] = None  # AAformer 1 (Eq. 8); CLIP-ReID's ViT 0.25
    triplet_loss_weight: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: Optional[MixedPrecision] = None  # 'no' | 'fp16' | 'bf16'; None: whatever `accelerate launch` says
    seed: int = 42

    # CLIP-ReID / π-VL: the text side and stage 1 (prompt tuning on cached image features)
    # a folder or Hub id holding a transformers CLIPTextModelWithProjection and its tokenizer (the image tower's CLIP)
    text_model: str = 'openai/clip-vit-base-patch16'
    num_context_tokens: int = 4  # learnable identity tokens per prompt (X1..X4)
    stage1_epochs: Optional[int] = None  # identity-prompt epochs (CLIP-ReID 120; π-VL 60)
    stage1_part_epochs: Optional[int] = None  # π-VL's part-informed prompt epochs that follow (20)
    stage1_batch_size: int = 64  # over all processes: CLIP-ReID's 64, π-VL's 16 identities x 4 (§4.2)
    # 'shuffle' (CLIP-ReID's code: every cached feature once an epoch, shuffled, in batches of stage1_batch_size, the
    # last the remainder) or 'pk' (π-VL §4.2: identities x num_instances images)
    stage1_sampling: Optional[Stage1Sampling] = None
    stage1_lr: float = 3.5e-4
    stage1_warmup_epochs: int = 5  # CLIP-ReID's stage-1 scheduler (π-VL states only the cosine decay)
    stage1_warmup_lr: float = 1e-5
    stage1_min_lr: float = 1e-6
    stage1_weight_decay: float = 1e-4
    # π-VL (Table 3): 'off' (B), 'label' (H: "A photo of a person's <part>.") or 'identity' (P: identity tokens in
    # every part prompt); and the stage-2 alignment head: 'off', 'linear' (1x1 conv at the patch grid) or 'pyramid'
    # (F: the hierarchical fusion at stride 8). pivl_ablation names a Table 3 row and sets both.
    part_prompts: Optional[PartPrompts] = None
    alignment_head: Optional[AlignmentHead] = None
    pivl_ablation: Optional[str] = None  # 'B' | 'B+H' | 'B+P' | 'B+P+F' (with method 'pivl')
    # τ of the pixel-level InfoNCE (Eq. 7); the paper gives no value. Features are not normalised (CLIP-ReID's form)
    part_temperature: float = 1.0
    align_hidden: int = 256  # the ViT fusion head's width (ViTDet's 256; the paper gives none)
    # the CNN fusion (Eq. 9-10): 'all' sums F2 + F3 + F4; 'eq10' sums F2 + F4 as Eq. 10 is printed (Eq. 9 computes F3
    # and the text fuses "multi-stage" features, so 'all' reads the omission as a typo)
    cnn_fusion_sum: FusionSum = 'all'
    i2t_loss_weight: float = 1.0
    align_loss_weight: float = 1.0  # Eq. 12 adds L_align with weight 1
    # π-VL v2 weights the alignment error by the parsing confidence (softmax over space). The PNG maps carry no
    # parser confidence, so this uses each cell's share of pixels with its majority label. Off by default.
    align_confidence: bool = False
    # images without a parsing map: 'error' (default) lists them; 'keep' trains them without the part losses
    parsing_missing: ParsingMissing = 'error'
    # π-VL Table 5: stage 2 trains this timm backbone (e.g. mobilenetv2_100) instead of the CLIP image tower, taught
    # by the prompts the CLIP teacher (``model``) learned in stage 1. Its own re-ID head is CLIP-ReID's (BNNeck +
    # classifier on the pooled feature and on a linear projection of it to the text width; the paper describes none);
    # it is saved as a plain timm backbone (the pooled feature is the embedding), loadable by timm and by transformers'
    # AutoModel. The alignment head, if any, reads its last feature map (the paper does not say whether its Table 5
    # student used one; its CNN fusion of C2-C4 is not built here).
    student_model: Optional[str] = None
    student_pretrained: bool = True  # timm's pretrained weights for the student (the paper: ImageNet)
    student_pretrained_file: Optional[str] = None  # a local timm checkpoint for the student instead

    # evaluation
    eval_every: int = 10  # epochs
    eval_batch_size: int = 128
    eval_metric: EvalMetric = 'euclidean'  # 'euclidean' | 'cosine'
    eval_normalize: bool = True  # L2-normalise features first (BoT / TransReID; the paper is silent)
    flip_test: bool = False
    log_every: int = 50  # without a terminal (no progress bar): a log line every N optimiser steps (0: none)
    # also report metrics after k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) of the same features, as rerank_*;
    # the plain metrics still pick the best model. Re-ranking costs far more than the evaluation itself.
    rerank: bool = False
    eval_only: bool = False  # evaluate the (pretrained / untrained) model without training

    # output, checkpoints, logging
    output_dir: str = 'outputs/train'
    # a fresh run refuses an output_dir holding an earlier run (checkpoints, metrics.json, model folders) unless this
    # is set; it then deletes them first
    overwrite_output_dir: bool = False
    checkpointing_steps: Optional[str] = 'epoch'  # 'epoch', an integer number of optimiser steps, or None
    checkpoints_total_limit: Optional[int] = 2  # keep only the newest N checkpoints (None: all)
    resume_from_checkpoint: Optional[str] = None  # a checkpoint folder or 'latest'
    with_tracking: bool = False
    report_to: str = 'tensorboard'  # any accelerate tracker name, or 'all'
    push_to_hub: bool = False  # push the best model (else the final one) with a generated card; see aaformer_hf.hub
    hub_model_id: Optional[str] = None
    hub_private: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # YAML and Python callers get the same typed values as flags
            setattr(self, field.name, coerce_field(field, getattr(self, field.name)))
        if self.pivl_ablation is not None:
            if self.method != 'pivl' or self.pivl_ablation not in PIVL_ABLATIONS:
                raise ValueError(f'pivl_ablation must be one of {sorted(PIVL_ABLATIONS)} with method pivl, got '
                                 f'{self.pivl_ablation!r} with method {self.method!r}')
            for name, value in PIVL_ABLATIONS[self.pivl_ablation].items():
                if name == 'stage1_part_epochs' and getattr(self, name):  # one YAML file serves every row
                    logger.warning('pivl_ablation %s has no part prompts to tune: stage1_part_epochs %s -> 0',
                                   self.pivl_ablation, getattr(self, name))
                elif getattr(self, name) is not None and getattr(self, name) != value:
                    raise ValueError(f'pivl_ablation {self.pivl_ablation!r} sets {name}={value!r}; '
                                     f'do not also pass {name}={getattr(self, name)!r}')
                setattr(self, name, value)
            if self.pivl_ablation in PIVL_ABLATION_FROM_METHOD:
                method, names = PIVL_ABLATION_FROM_METHOD[self.pivl_ablation]
                for name in names:
                    if getattr(self, name) is None:
                        setattr(self, name, recipe(method, self.model)[name])
        for name, value in recipe(self.method, self.model).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.batch_size < 1 or self.num_instances < 1 or self.batch_size % self.num_instances:
            raise ValueError(f'batch_size ({self.batch_size}) must be a positive multiple of num_instances '
                             f'({self.num_instances})')
        for name in ('epochs', 'eval_every', 'eval_batch_size', 'gradient_accumulation_steps'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.lr <= 0 or self.warmup_lr < 0 or self.min_lr < 0:
            raise ValueError('lr must be > 0, warmup_lr and min_lr >= 0')
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f'warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}')
        steps = self.checkpointing_steps
        if steps is not None and steps != 'epoch' and not (str(steps).isdigit() and int(steps) > 0):
            raise ValueError(f"checkpointing_steps must be 'epoch' or a positive integer, got {steps!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f'num_workers must be >= 0 or None (automatic), got {self.num_workers}')
        if self.log_every < 0:
            raise ValueError(f'log_every must be >= 0 (0: no progress lines), got {self.log_every}')
        if self.data_root is None:
            raise ValueError('data_root is required (the dataset folder)')
        if (self.part_prompts == 'off') != (self.alignment_head == 'off'):
            raise ValueError(f'part_prompts={self.part_prompts!r} and alignment_head={self.alignment_head!r}: the '
                             'alignment head regresses the part prompts, so both are used or neither')
        if self.method == 'aaformer' and (self.part_prompts != 'off' or self.stage1_epochs or self.stage1_part_epochs):
            raise ValueError('part prompts and stage 1 belong to --method clipreid / pivl')
        if self.stage1_part_epochs and self.part_prompts != 'identity':
            raise ValueError('stage1_part_epochs tunes identity-aware part prompts (part_prompts identity)')
        if self.stage1_epochs < 0 or self.stage1_part_epochs < 0:
            raise ValueError('stage1_epochs and stage1_part_epochs must be >= 0')
        if self.stage1_sampling == 'pk' and self.stage1_batch_size % self.num_instances:
            raise ValueError(f'stage1_batch_size ({self.stage1_batch_size}) must be a multiple of num_instances '
                             f'({self.num_instances})')
        if self.part_temperature <= 0:
            raise ValueError(f'part_temperature must be > 0, got {self.part_temperature}')
        if self.student_model is not None and self.method == 'aaformer':
            raise ValueError('student_model (Table 5) is a stage-2 option of --method clipreid / pivl')
        if self.student_pretrained_file is not None and self.student_model is None:
            raise ValueError('student_pretrained_file needs student_model')
        if sorted(self.lr_decay_epochs) != list(self.lr_decay_epochs) or any(e < 0 for e in self.lr_decay_epochs):
            raise ValueError(f'lr_decay_epochs must be increasing epochs >= 0, got {self.lr_decay_epochs}')

    def model_kwargs(self) -> Dict[str, Any]:
        """Constructor arguments for the timm model: ``model_args`` with the baseline's settings on top."""
        kwargs = dict(self.model_args)
        if self.baseline is not None:
            clash = {k for k in BASELINES[self.baseline] if k in kwargs}
            if clash:
                raise ValueError(f'baseline {self.baseline!r} sets {sorted(clash)}; do not also pass them in model_args')
            kwargs.update(BASELINES[self.baseline])
        return kwargs

    @property
    def checkpoint_every_steps(self) -> Optional[int]:
        """``checkpointing_steps`` as a step count, None when checkpoints are per epoch or off."""
        return None if self.checkpointing_steps in (None, 'epoch') else int(self.checkpointing_steps)

    def loader_workers(self, local_processes: int = 1) -> int:
        """``num_workers``, or when it is None: usable CPU cores // processes on this machine, between 1 and 8."""
        if self.num_workers is not None:
            return self.num_workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
        return max(1, min(8, cores // max(1, local_processes)))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def tracker_values(self) -> Dict[str, Any]:
        """The fields as experiment trackers take them (scalars; mappings, lists and None as JSON text)."""
        return {k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) or v is None else v)
                for k, v in self.to_dict().items()}


_TRUE, _FALSE = ('1', 'true', 'yes', 'on'), ('0', 'false', 'no', 'off')


def coerce_field(field: dataclasses.Field, value: Any) -> Any:
    """``value`` as the field's declared type, or a ValueError naming the field. Strings are parsed (YAML reads
    ``1e-3`` as a string; a flag is always one): numbers as numbers, 'true'/'false'/'yes'/'no'/'on'/'off'/'1'/'0' as
    booleans, 'none'/'null' as None where the field is optional. Nothing else is converted: a boolean is not a number,
    a number not a boolean, a list not a mapping."""
    kind, optional = field.type, False
    if typing.get_origin(kind) is Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind, optional = args[0], len(args) < len(typing.get_args(kind))
    base = typing.get_origin(kind) or kind
    if base is Literal:  # one of a few names
        if value is None and optional or value in typing.get_args(kind):
            return value
        if not (optional and isinstance(value, str) and value.lower() in ('none', 'null')):
            raise ValueError(f'{field.name} must be one of {typing.get_args(kind)}{" or none" if optional else ""}, '
                             f'got {value!r}')
        return None
    wanted = {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string', dict: 'a mapping',
              list: 'a list of integers'}[base]
    if value is None or (optional and isinstance(value, str) and value.lower() in ('none', 'null')):
        if optional:
            return None
    elif base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
    elif base is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if isinstance(value, dict):
            return dict(value)
    elif base is list:  # List[int]: a YAML / JSON list, or '30,50' on the command line
        if isinstance(value, str):
            text = value.strip()
            try:
                value = json.loads(text) if text.startswith('[') else [v for v in text.split(',') if v.strip()]
            except ValueError:
                pass
        if isinstance(value, (list, tuple)):
            items = [int(v) if isinstance(v, str) and v.strip().lstrip('-').isdigit() else v for v in value]
            if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                return items
    elif base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):  # e.g. checkpointing_steps: 500
            return str(value)
    elif not isinstance(value, bool):  # int, float
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            number = None
        if isinstance(number, (int, float)):
            if base is float:
                return float(number)
            if float(number).is_integer():
                return int(number)
    raise ValueError(f'{field.name} must be {wanted}{" or none" if optional else ""}, got {value!r}')


def _read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: config file not found')
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:  # names the line and column, not the file
        raise ValueError(f'{path}: not valid YAML ({" ".join(str(error).split())})') from None
    if not isinstance(loaded, dict):
        raise ValueError(f'{path}: expected a mapping of config keys, got {type(loaded).__name__}')
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(loaded) - known)
    if unknown:
        raise ValueError(f'{path}: unknown config key(s) {unknown}; known keys: {", ".join(sorted(known))}')
    return loaded


def parse_config(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """``--config FILE.yaml`` then any ``--field value`` flags (which override the file). Flags must be spelled out
    (no abbreviations); a bad value names its field, and the file when it came from there.

    Not transformers' ``HfArgumentParser``, though it makes flags from a dataclass too: it reads YAML without checking
    a value against its field's type (``parse_yaml_file`` hands ``lr: true`` or ``epochs: ten`` to the dataclass as
    they are), takes no ``none`` for an optional field and wants lists as separate words. ``coerce_field`` gives the
    flags, the YAML file and Python callers the same typed checks."""
    parser = argparse.ArgumentParser(description='Train and evaluate a re-ID model: AAformer and its baselines, CLIP-ReID, π-VL.',
                                     allow_abbrev=False)
    parser.add_argument('--config', help='YAML file of TrainConfig fields')
    for field in dataclasses.fields(TrainConfig):
        converter = _flag_converter(field)
        choices = _choices(field)
        metavar = '{' + ','.join(choices) + '}' if choices else None
        if field.type is bool:  # --flag, --flag true / false
            parser.add_argument(f'--{field.name}', type=converter, nargs='?', const=True, default=argparse.SUPPRESS)
        else:
            parser.add_argument(f'--{field.name}', type=converter, default=argparse.SUPPRESS, metavar=metavar)
    args = vars(parser.parse_args(argv))
    config_file = args.pop('config', None)
    values: Dict[str, Any] = _read_yaml(config_file) if config_file else {}
    if config_file:  # name the file for a bad value that came from it
        fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
        for name, value in values.items():
            if name not in args:
                try:
                    values[name] = coerce_field(fields[name], value)
                except ValueError as error:
                    raise ValueError(f'{config_file}: {error}') from None
    values.update(args)
    return TrainConfig(**values)


def _choices(field: dataclasses.Field) -> Sequence[str]:
    """A Literal field's names (shown by --help), else ()."""
    kind = field.type
    if typing.get_origin(kind) is Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else ()


def _flag_converter(field: dataclasses.Field):
    def convert(text: str):
        try:
            return coerce_field(field, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = field.name  # argparse names the converter in its message
    return convert
