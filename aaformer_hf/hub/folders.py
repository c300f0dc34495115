# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""What a saved model folder holds, read and checked: a family's transformers config (or a plain timm model's
config), its preprocessing files agreeing, no pickles, and the training run's metrics around it. The Hub code and the
card code both read folders through here (neither imports the other's internals)."""
import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ['WEIGHTS_NAME', 'folder_config', 'timm_folder_config', 'check_folder_preprocessing', 'read_json',
           'refuse_pickles', 'family_of_config', 'run_metrics', 'read_metrics']

WEIGHTS_NAME = 'model.safetensors'
_PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.pkl', '.pickle', '.ckpt')
_BEST_SELECTION = ('the epoch with the best mAP on the evaluation set (epoch {epoch}); the re-ID benchmarks have no '
                   'separate validation split, so this choice looked at the test identities')


def timm_folder_config(folder: Path) -> Optional[Dict[str, Any]]:
    """The timm ``config.json`` of a folder that holds a plain timm model (π-VL's Table 5 student, saved in timm's
    own format: ``architecture`` and ``pretrained_cfg``, no transformers ``model_type``); None for a family's folder."""
    path = Path(folder) / 'config.json'
    if not path.is_file():
        return None  # folder_config names what is missing
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f'{path}: unreadable config ({error})') from error
    if not isinstance(config, dict) or 'model_type' in config or 'architecture' not in config:
        return None
    if not isinstance(config.get('pretrained_cfg'), dict):
        raise ValueError(f'{path}: a timm config without pretrained_cfg (timm would read the whole file as one); '
                         'save the model with timm.models.save_for_hf')
    return config


def folder_config(folder: Path):
    """The transformers config of a saved model folder of a registered family; errors name the folder and file."""
    from transformers import AutoConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder}: model folder not found')
    refuse_pickles(folder)
    for name in ('config.json', WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f'{folder / name}: missing; save the model with save_pretrained first')
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f'{folder / "config.json"}: not a model config aaformer-hf can read ({error})') from error
    family_of_config(config)
    check_folder_preprocessing(folder, config.preprocessing_cfg())
    return config


_RESAMPLE_NAMES = {2: 'bilinear', 3: 'bicubic'}  # PILImageResampling values the processors save


def check_folder_preprocessing(folder: Path, expected: Optional[Dict[str, Any]] = None) -> None:
    """A model folder's ``preprocessor_config.json`` and config.json (its ``pretrained_cfg``, or ``expected``: a
    config's ``preprocessing_cfg()``) must describe the same pixels: transformers reads one or the other depending
    on its version, timm reads config.json. A disagreement is an error naming both files and the values."""
    folder = Path(folder)
    processor_path, config_path = folder / 'preprocessor_config.json', folder / 'config.json'
    if not processor_path.is_file():
        return
    if expected is None:
        expected = read_json(config_path).get('pretrained_cfg') if config_path.is_file() else None
        if not isinstance(expected, dict):
            return
    processor = read_json(processor_path)
    size = processor.get('size') or {}
    found = dict(input_size=(size.get('height'), size.get('width')), mean=processor.get('image_mean'),
                 std=processor.get('image_std'), interpolation=_RESAMPLE_NAMES.get(processor.get('resample')))
    wanted = dict(input_size=tuple(expected['input_size'][-2:]), mean=expected.get('mean'), std=expected.get('std'),
                  interpolation=expected.get('interpolation'))
    differ = [f'{key} {found[key]} vs {wanted[key]}' for key in wanted if not _same(found[key], wanted[key])]
    if differ:
        raise ValueError(
            f'{processor_path} and {config_path} describe different preprocessing ({"; ".join(differ)}); '
            'transformers reads one or the other depending on its version. Set image_mean / image_std / '
            'interpolation in config.json to the values meant and write the processor from them '
            '(ImageProcessor.from_config(config).save_pretrained(folder)), or delete preprocessor_config.json')


def _same(a, b) -> bool:
    """Equal, numbers to 1e-6 (a JSON round trip of a float)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-6)
    return a == b


def read_json(path: Path) -> Dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f'{path}: unreadable JSON ({error})') from error
    if not isinstance(value, dict):
        raise ValueError(f'{path}: expected a JSON object')
    return value


def refuse_pickles(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f'{folder}: holds pickle files ({", ".join(pickles)}); aaformer-hf distributes safetensors '
                         'only - remove them (the weights must be in model.safetensors)')


def family_of_config(config):
    from ..hf.timm_backed import FAMILIES

    if config.model_type not in FAMILIES:
        raise ValueError(f'model_type {config.model_type!r} is not an aaformer-hf family ({", ".join(FAMILIES)})')
    return FAMILIES[config.model_type]


def run_metrics(folder: Path):
    """What training measured for this folder: ``../metrics.json`` (the final evaluation, or for ``best_model`` the
    best one) and how the weights were selected; (None, None) when the folder has no run around it."""
    path = folder / '..' / 'metrics.json'
    if not path.is_file():
        return None, None
    metrics = read_metrics(path)
    if folder.resolve().name == 'best_model' and metrics.get('best'):
        best = metrics['best']
        return {**metrics, **best}, _BEST_SELECTION.format(epoch=best.get('epoch', '?'))
    return metrics, f'after the last epoch ({metrics.get("epochs", "?")})'


def read_metrics(path: Path) -> Dict[str, Any]:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f'{path}: unreadable metrics file ({error})') from error
    if not isinstance(metrics, dict):
        raise ValueError(f'{path}: expected a JSON object of metrics')
    return metrics
