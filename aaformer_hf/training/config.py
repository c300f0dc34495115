"""The training configuration: one dataclass, filled from a YAML file and command-line flags (flags win).

Defaults are AAformer's recipe (§IV-A): SGD (momentum 0.9, weight decay 1e-4), 10 warm-up epochs rising linearly from
8e-4 to 8e-3, then cosine decay, 120 epochs, batches of 16 identities x 4 images at 256x128, an ImageNet-pretrained
ViT-B/16 from timm. Fields the paper does not state say so.
"""
import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import yaml

__all__ = ['TrainConfig', 'BASELINES', 'parse_config']

# The paper's ablation baselines as model arguments (Table IV: [PART]s on fixed partitions; Table V: nearest
# neighbour instead of optimal transport; the ViT-baseline has no [PART]s).
BASELINES: Dict[str, Dict[str, Any]] = {
    'vit': dict(part_groups=()),
    'pcb': dict(assignment='stripes', part_groups=(6,)),
    'mgn': dict(assignment='stripes', part_groups=(2, 3)),
    'nearest': dict(assignment='nearest'),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything ``examples/train.py`` needs. Every field is also a ``--flag``; dict fields take JSON on the
    command line (``--model_args '{"part_groups": [6]}'``)."""

    # model
    model: str = 'aaformer_base'  # a timm model name registered by aaformer_hf
    model_args: Dict[str, Any] = dataclasses.field(default_factory=dict)  # constructor arguments, e.g. part_groups
    baseline: Optional[str] = None  # one of BASELINES: vit, pcb, mgn, nearest (None: AAformer itself)
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

    # optimisation (AAformer §IV-A)
    epochs: int = 120
    batch_size: int = 64  # identities x num_instances per step, over all processes
    num_instances: int = 4  # K images per identity
    lr: float = 8e-3
    warmup_epochs: int = 10
    warmup_lr: float = 8e-4
    min_lr: float = 1.6e-5  # end of the cosine decay; not stated by the paper (TransReID's 0.002 x lr)
    momentum: float = 0.9
    weight_decay: float = 1e-4  # not applied to biases, norms and tokens (timm's convention; the paper is silent)
    label_smoothing: float = 0.1
    triplet_margin: Optional[float] = 0.3  # None: soft-margin triplet
    id_loss_weight: float = 1.0
    triplet_loss_weight: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: Optional[str] = None  # 'no' | 'fp16' | 'bf16'; None: whatever `accelerate launch` says
    seed: int = 42

    # evaluation
    eval_every: int = 10  # epochs
    eval_batch_size: int = 128
    eval_metric: str = 'euclidean'  # 'euclidean' | 'cosine'
    eval_normalize: bool = True  # L2-normalise features first (BoT / TransReID; the paper is silent)
    flip_test: bool = False
    # also report metrics after k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) of the same features, as rerank_*;
    # the plain metrics still pick the best model. Re-ranking costs far more than the evaluation itself.
    rerank: bool = False
    eval_only: bool = False  # evaluate the (pretrained / untrained) model without training

    # output, checkpoints, logging
    output_dir: str = 'outputs/train'
    checkpointing_steps: Optional[str] = 'epoch'  # 'epoch', an integer number of optimiser steps, or None
    checkpoints_total_limit: Optional[int] = 2  # keep only the newest N checkpoints (None: all)
    resume_from_checkpoint: Optional[str] = None  # a checkpoint folder or 'latest'
    with_tracking: bool = False
    report_to: str = 'tensorboard'  # any accelerate tracker name, or 'all'
    push_to_hub: bool = False
    hub_model_id: Optional[str] = None

    def __post_init__(self) -> None:
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ValueError(f'baseline must be one of {sorted(BASELINES)}, got {self.baseline!r}')
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
        if self.eval_metric not in ('euclidean', 'cosine'):
            raise ValueError(f"eval_metric must be 'euclidean' or 'cosine', got {self.eval_metric!r}")
        if self.mixed_precision not in (None, 'no', 'fp16', 'bf16'):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        steps = self.checkpointing_steps
        if steps is not None and steps != 'epoch' and not (str(steps).isdigit() and int(steps) > 0):
            raise ValueError(f"checkpointing_steps must be 'epoch' or a positive integer, got {steps!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f'num_workers must be >= 0 or None (automatic), got {self.num_workers}')
        if self.data_root is None:
            raise ValueError('data_root is required (the dataset folder)')

    def model_kwargs(self) -> Dict[str, Any]:
        """Constructor arguments for the timm model: ``model_args`` with the baseline's settings on top."""
        kwargs = dict(self.model_args)
        if self.baseline is not None:
            clash = {k for k in BASELINES[self.baseline] if k in kwargs}
            if clash:
                raise ValueError(f'baseline {self.baseline!r} sets {sorted(clash)}; do not also pass them in model_args')
            kwargs.update(BASELINES[self.baseline])
        return kwargs

    def loader_workers(self, local_processes: int = 1) -> int:
        """``num_workers``, or when it is None: usable CPU cores // processes on this machine, between 1 and 8."""
        if self.num_workers is not None:
            return self.num_workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
        return max(1, min(8, cores // max(1, local_processes)))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _flag_type(field: dataclasses.Field):
    """argparse converter for a field, from its declared type."""
    text = str(field.type)
    if 'Dict' in text:
        return json.loads
    if text in ('bool', "<class 'bool'>"):
        return _boolean
    if 'float' in text:
        return lambda value: None if value.lower() == 'none' else float(value)
    if 'int' in text:
        return lambda value: None if value.lower() == 'none' else int(value)
    return lambda value: None if value.lower() == 'none' else value


def _boolean(value: str) -> bool:
    if value.lower() in ('1', 'true', 'yes', 'on'):
        return True
    if value.lower() in ('0', 'false', 'no', 'off'):
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean, got {value!r}')


def _read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: config file not found')
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f'{path}: expected a mapping of config keys, got {type(loaded).__name__}')
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(loaded) - known)
    if unknown:
        raise ValueError(f'{path}: unknown config key(s) {unknown}; known keys: {", ".join(sorted(known))}')
    return loaded


def parse_config(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """``--config FILE.yaml`` then any ``--field value`` flags (which override the file)."""
    parser = argparse.ArgumentParser(description='Train and evaluate a re-ID model (AAformer and its baselines).')
    parser.add_argument('--config', help='YAML file of TrainConfig fields')
    for field in dataclasses.fields(TrainConfig):
        kind = _flag_type(field)
        if kind is _boolean:  # --flag, --flag true / false
            parser.add_argument(f'--{field.name}', type=_boolean, nargs='?', const=True, default=argparse.SUPPRESS)
        else:
            parser.add_argument(f'--{field.name}', type=kind, default=argparse.SUPPRESS)
    args = vars(parser.parse_args(argv))
    values: Dict[str, Any] = _read_yaml(args.pop('config')) if args.get('config') else {}
    args.pop('config', None)
    values.update(args)
    return TrainConfig(**values)
