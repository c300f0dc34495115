"""The training configuration: one dataclass, filled from a YAML file and command-line flags (flags win).

Defaults are AAformer's recipe (§IV-A): SGD (momentum 0.9, weight decay 1e-4), 10 warm-up epochs rising linearly from
8e-4 to 8e-3, then cosine decay, 120 epochs, batches of 16 identities x 4 images at 256x128, an ImageNet-pretrained
ViT-B/16 from timm. Fields the paper does not state say so.
"""
import argparse
import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import yaml

from aaformer_hf.data.sampler import EPOCH_MODES

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
    # 'images': the toolkits' epoch (BoT / TransReID / CLIP-ReID), about every training image once;
    # 'identities': each identity once, one group of K (4x shorter on Market-1501, 7x on MSMT17). See PKSampler.
    sampler_epoch: str = 'images'
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
    # a fresh run refuses an output_dir holding an earlier run (checkpoints, metrics.json, model folders) unless this
    # is set; it then deletes them first
    overwrite_output_dir: bool = False
    checkpointing_steps: Optional[str] = 'epoch'  # 'epoch', an integer number of optimiser steps, or None
    checkpoints_total_limit: Optional[int] = 2  # keep only the newest N checkpoints (None: all)
    resume_from_checkpoint: Optional[str] = None  # a checkpoint folder or 'latest'
    with_tracking: bool = False
    report_to: str = 'tensorboard'  # any accelerate tracker name, or 'all'
    push_to_hub: bool = False
    hub_model_id: Optional[str] = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # YAML and Python callers get the same typed values as flags
            setattr(self, field.name, coerce_field(field, getattr(self, field.name)))
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
        if self.sampler_epoch not in EPOCH_MODES:
            raise ValueError(f'sampler_epoch must be one of {EPOCH_MODES}, got {self.sampler_epoch!r}')
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
    wanted = {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string', dict: 'a mapping'}[base]
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
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f'{path}: expected a mapping of config keys, got {type(loaded).__name__}')
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(loaded) - known)
    if unknown:
        raise ValueError(f'{path}: unknown config key(s) {unknown}; known keys: {", ".join(sorted(known))}')
    return loaded


def parse_config(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """``--config FILE.yaml`` then any ``--field value`` flags (which override the file). Flags must be spelled out
    (no abbreviations); a bad value names its field, and the file when it came from there."""
    parser = argparse.ArgumentParser(description='Train and evaluate a re-ID model (AAformer and its baselines).',
                                     allow_abbrev=False)
    parser.add_argument('--config', help='YAML file of TrainConfig fields')
    for field in dataclasses.fields(TrainConfig):
        converter = _flag_converter(field)
        if field.type is bool:  # --flag, --flag true / false
            parser.add_argument(f'--{field.name}', type=converter, nargs='?', const=True, default=argparse.SUPPRESS)
        else:
            parser.add_argument(f'--{field.name}', type=converter, default=argparse.SUPPRESS)
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


def _flag_converter(field: dataclasses.Field):
    def convert(text: str):
        try:
            return coerce_field(field, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = field.name  # argparse names the converter in its message
    return convert
