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
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch.nn as nn

from .cards import model_card, student_card_for_folder, write_card
from .folders import (
    WEIGHTS_NAME, family_of_config, folder_config, refuse_pickles, run_metrics, timm_folder_config,
)

__all__ = ['push_to_hub', 'prepare_folder', 'check_push_supported', 'push_model_folder', 'check_folder_loads']


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
            metrics, selection = run_metrics(source)
    # written from the config, as timm's pretrained_cfg is: one truth in both files
    family_of_config(config).image_processor_class.from_config(config).save_pretrained(out)
    if not (out / 'README.md').is_file():
        write_card(model_card(config, repo_id or (source.name if source else 'org/name'), metrics=metrics,
                              selection=selection), out / 'README.md')
    return out


def _prepare_timm_folder(source: Path, out: Path, timm_config: Dict[str, Any], repo_id: Optional[str],
                         metrics: Optional[Dict[str, Any]]) -> Path:
    """A plain timm model folder staged as it is (timm's format, which transformers' timm wrapper reads too; its
    preprocessing lives in config.json's pretrained_cfg) with a card."""
    refuse_pickles(source)
    if not (source / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f'{source / WEIGHTS_NAME}: missing; timm folders are pushed as safetensors only')
    for name in ('config.json', WEIGHTS_NAME, 'README.md'):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    if not (out / 'README.md').is_file():
        selection = None
        if metrics is None:
            metrics, selection = run_metrics(source)
        write_card(student_card_for_folder(source, timm_config, repo_id or source.name, metrics, selection),
                   out / 'README.md')
    return out


def _transformers_model(model: nn.Module):
    """A family's transformers model as is; a family's timm module wrapped (same weights, no copy of the code)."""
    from ..hf.timm_backed import TimmBackedPreTrainedModel, wrap_timm_model

    return model if isinstance(model, TimmBackedPreTrainedModel) else wrap_timm_model(model)
