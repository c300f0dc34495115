# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Hub distribution: one repo that both libraries load.

``push_to_hub(model_or_folder, 'org/name')`` uploads ``config.json`` (transformers' fields and timm's keys, see
``TimmBackedConfig``), ``model.safetensors``, ``preprocessor_config.json`` and a generated model card, so that

    import aaformer_hf
    AutoModel.from_pretrained('org/name')                       # transformers, no trust_remote_code
    timm.create_model('hf-hub:org/name', pretrained=True)       # timm

give the same model; ``revision=`` / ``hf-hub:org/name@rev`` pin a version. A local folder prepared the same way
(``prepare_folder``) loads with ``from_pretrained(folder)`` and ``timm.create_model('local-dir:folder')``.
A plain timm backbone (π-VL's Table 5 student, ``examples/train.py --student_model``) is pushed in timm's own format,
which timm and transformers' timm wrapper load without this package. Weights travel as safetensors only: a folder
holding pickle files is refused.
"""
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch.nn as nn

__all__ = ['push_to_hub', 'prepare_folder', 'card_for_folder', 'check_push_supported', 'push_model_folder',
           'check_folder_preprocessing', 'check_folder_loads', 'read_json']

WEIGHTS_NAME = 'model.safetensors'
_PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.pkl', '.pickle', '.ckpt')
_BEST_SELECTION = ('the epoch with the best mAP on the evaluation set (epoch {epoch}); the re-ID benchmarks have no '
                   'separate validation split, so this choice looked at the test identities')


def check_push_supported(repo_id: Optional[str]) -> None:
    """Fail before any training when a push could not happen: no repo id, or one the Hub would refuse."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id:
        raise ValueError('push_to_hub needs hub_model_id ("org/name")')
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f'hub_model_id {repo_id!r}: {error}') from error


def push_to_hub(model_or_folder: Union[nn.Module, str, Path], repo_id: str, *, revision: Optional[str] = None,
                private: Optional[bool] = None, token: Optional[str] = None, commit_message: Optional[str] = None,
                create_pr: bool = False, metrics: Optional[Dict[str, Any]] = None):
    """Upload a model (a family's transformers model, or its timm module) or a saved folder as one repo that loads in
    both libraries. ``revision``: the branch to commit to (created when missing); ``metrics``: a ``metrics.json``
    dict for the card (for a folder, ``FOLDER/../metrics.json`` is read when present). Returns huggingface_hub's
    ``CommitInfo``."""
    from huggingface_hub import HfApi

    check_push_supported(repo_id)
    with tempfile.TemporaryDirectory(prefix='aaformer-hf-push-') as stage:
        folder = prepare_folder(model_or_folder, Path(stage) / 'repo', repo_id=repo_id, metrics=metrics)
        check_folder_loads(folder, name=model_or_folder if not isinstance(model_or_folder, nn.Module) else None)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message or 'Upload a re-ID model with aaformer-hf')


def check_folder_loads(folder: Path, name=None) -> None:
    """Before anything is uploaded: the staged folder loads as timm loads a Hub repo (every weight read, checked
    against the config's architecture). A truncated ``model.safetensors`` or weights of another shape stop the push,
    naming the source (``name``) and the file."""
    import timm

    import aaformer_hf.models  # noqa: F401  (registers the families' timm entrypoints)

    source = Path(name) if name is not None else Path(folder)
    try:
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    except Exception as error:  # safetensors', timm's and torch's errors alike: nothing is uploaded
        detail = ' '.join(str(error).replace(str(folder), str(source)).split())
        raise ValueError(f'{source / WEIGHTS_NAME}: not uploaded: the weights do not load ({detail})') from error


def push_model_folder(folder: Path, repo_id: Optional[str], private: Optional[bool] = None):
    """The trainer's ``--push_to_hub``: the saved folder with a card from the run's ``metrics.json``."""
    return push_to_hub(folder, repo_id, private=private)


def prepare_folder(model_or_folder: Union[nn.Module, str, Path], out: Union[str, Path], repo_id: Optional[str] = None,
                   metrics: Optional[Dict[str, Any]] = None) -> Path:
    """Write the repo's files to ``out`` (a new folder): config.json with both libraries' keys regenerated from the
    config, model.safetensors, preprocessor_config.json (the family's processor from the config when the source has
    none) and README.md (the source's own card is kept; else one is generated)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f'{out}: already exists; prepare_folder writes a new folder')
    out.mkdir(parents=True)
    source, selection = None, None
    if isinstance(model_or_folder, nn.Module):
        model = _transformers_model(model_or_folder)
        model.save_pretrained(out)
        config = model.config
    else:
        source = Path(model_or_folder)
        timm_config = timm_folder_config(source)
        if timm_config is not None:
            return _prepare_timm_folder(source, out, timm_config, repo_id, metrics)
        config = folder_config(source)  # also checks that its two preprocessing files agree
        config.save_pretrained(out)  # regenerates timm's keys from the fields (a stale copy is never carried over)
        shutil.copy2(source / WEIGHTS_NAME, out / WEIGHTS_NAME)
        if (source / 'README.md').is_file():
            shutil.copy2(source / 'README.md', out / 'README.md')
        if metrics is None:
            metrics, selection = _run_metrics(source)
    # written from the config, as timm's pretrained_cfg is: one truth in both files
    _family(config).image_processor_class.from_config(config).save_pretrained(out)
    if not (out / 'README.md').is_file():
        from .cards import model_card, write_card
        write_card(model_card(config, repo_id or (source.name if source else 'org/name'), metrics=metrics,
                              selection=selection), out / 'README.md')
    return out


def card_for_folder(folder: Union[str, Path], repo_id: Optional[str] = None, metrics_file: Optional[Path] = None):
    """The generated card of a saved model folder (``python -m aaformer_hf.cards FOLDER``)."""
    from .cards import model_card

    folder = Path(folder)
    timm_config = timm_folder_config(folder)
    config = folder_config(folder) if timm_config is None else None
    if metrics_file is not None:
        metrics, selection = _read_metrics(Path(metrics_file)), None
    else:
        metrics, selection = _run_metrics(folder)
    if timm_config is not None:
        return _student_card(folder, timm_config, repo_id or folder.resolve().name, metrics, selection)
    return model_card(config, repo_id or folder.resolve().name, metrics=metrics, selection=selection)


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


def _prepare_timm_folder(source: Path, out: Path, timm_config: Dict[str, Any], repo_id: Optional[str],
                         metrics: Optional[Dict[str, Any]]) -> Path:
    """A plain timm model folder staged as it is (timm's format, which transformers' timm wrapper reads too; its
    preprocessing lives in config.json's pretrained_cfg) with a card."""
    _refuse_pickles(source)
    if not (source / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f'{source / WEIGHTS_NAME}: missing; timm folders are pushed as safetensors only')
    for name in ('config.json', WEIGHTS_NAME, 'README.md'):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    if not (out / 'README.md').is_file():
        selection = None
        if metrics is None:
            metrics, selection = _run_metrics(source)
        from .cards import write_card
        write_card(_student_card(source, timm_config, repo_id or source.name, metrics, selection), out / 'README.md')
    return out


def _student_card(folder: Path, timm_config: Dict[str, Any], repo_id: str, metrics, selection):
    from .cards import student_card

    if not (metrics or {}).get('student_model'):
        raise ValueError(f'{folder}: a plain timm model, but not one examples/train.py trained as a student (no '
                         'metrics.json naming a student_model beside it); add a README.md model card to the folder '
                         'or give the run\'s metrics')
    return student_card(timm_config, repo_id, metrics=metrics, selection=selection)


def folder_config(folder: Path):
    """The transformers config of a saved model folder of a registered family; errors name the folder and file."""
    from transformers import AutoConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder}: model folder not found')
    _refuse_pickles(folder)
    for name in ('config.json', WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f'{folder / name}: missing; save the model with save_pretrained first')
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f'{folder / "config.json"}: not a model config aaformer-hf can read ({error})') from error
    _family(config)
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
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(
            x == y if not isinstance(x, float) and not isinstance(y, float) else abs(x - y) <= 1e-6
            for x, y in zip(a, b))
    return a == b


def read_json(path: Path) -> Dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f'{path}: unreadable JSON ({error})') from error
    if not isinstance(value, dict):
        raise ValueError(f'{path}: expected a JSON object')
    return value


def _refuse_pickles(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f'{folder}: holds pickle files ({", ".join(pickles)}); aaformer-hf distributes safetensors '
                         'only - remove them (the weights must be in model.safetensors)')


def _family(config):
    from .hf.timm_backed import FAMILIES

    if config.model_type not in FAMILIES:
        raise ValueError(f'model_type {config.model_type!r} is not an aaformer-hf family ({", ".join(FAMILIES)})')
    return FAMILIES[config.model_type]


def _transformers_model(model: nn.Module):
    """A family's transformers model as is; a family's timm module wrapped (same weights, no copy of the code)."""
    from .hf.timm_backed import TimmBackedPreTrainedModel, wrap_timm_model

    return model if isinstance(model, TimmBackedPreTrainedModel) else wrap_timm_model(model)


def _run_metrics(folder: Path):
    """What training measured for this folder: ``../metrics.json`` (the final evaluation, or for ``best_model`` the
    best one) and how the weights were selected; (None, None) when the folder has no run around it."""
    path = folder / '..' / 'metrics.json'
    if not path.is_file():
        return None, None
    metrics = _read_metrics(path)
    if folder.resolve().name == 'best_model' and metrics.get('best'):
        best = metrics['best']
        return {**metrics, **best}, _BEST_SELECTION.format(epoch=best.get('epoch', '?'))
    return metrics, f'after the last epoch ({metrics.get("epochs", "?")})'


def _read_metrics(path: Path) -> Dict[str, Any]:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f'{path}: unreadable metrics file ({error})') from error
    if not isinstance(metrics, dict):
        raise ValueError(f'{path}: expected a JSON object of metrics')
    return metrics
