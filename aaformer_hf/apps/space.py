# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""A Hugging Face Space of the web app (``aaformer-hf space``): a folder that Spaces runs as it is -

    README.md          Spaces' front matter (sdk: gradio, its version, app_file) and the intended-use note
    app.py             three lines: ``serve(...)`` of this module
    requirements.txt   this package, pinned, with its app extra
    model/             a local model folder, copied (safetensors only); a Hub id or timm name is referenced instead
    gallery/           the gallery's crops; queries/ the example queries, when there are any

Crops whose identities are known (a re-ID dataset, an embeddings file with labels, or Market/Duke-style file names)
are written under Market-1501-style names (``PID_cCAMs1_NNNNNN_00``), so the Space reads the identities back from
them. The Space embeds ``gallery/`` when it starts (cached as ``aaformer-hf app`` caches) and serves where Spaces
says (``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT``; 127.0.0.1:7860 when run elsewhere).
"""
import json
import os
import shutil
from pathlib import Path
from typing import List, Optional, Tuple


__all__ = ['write_space', 'push_space', 'serve']

_MODEL_FILES = ('config.json', 'preprocessor_config.json', 'README.md')


def write_space(model: str, out: Path, gallery: Optional[Path] = None, queries: Optional[Path] = None,
                dataset: Optional[str] = None, root: Optional[Path] = None, pretrained: bool = False,
                flip: bool = False, title: str = 'Person re-identification', overwrite: bool = False) -> Path:
    """Write the Space folder ``out`` for ``model`` and a gallery (crops, an embeddings file, or a re-ID dataset's
    gallery and queries). An existing ``out`` is replaced only with ``overwrite``; nothing is written until every
    input has been read."""
    import aaformer_hf

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f'{out}: exists; pass --overwrite to replace it')
    gallery_crops, query_crops = _crops(gallery, queries, dataset, root)
    model_ref, model_folder = _model_reference(model)
    stage = out.with_name(out.name + '.partial')
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        if model_folder is not None:
            (stage / 'model').mkdir()
            for name in _MODEL_FILES:
                if (model_folder / name).is_file():
                    shutil.copy2(model_folder / name, stage / 'model' / name)
            for weights in model_folder.glob('*.safetensors'):
                shutil.copy2(weights, stage / 'model' / weights.name)
        _copy_crops(gallery_crops, stage / 'gallery')
        if query_crops:
            _copy_crops(query_crops, stage / 'queries')
        (stage / 'app.py').write_text(_APP.format(model=repr(model_ref), pretrained=pretrained, flip=flip,
                                                  queries=repr('queries' if query_crops else None)))
        (stage / 'requirements.txt').write_text(f'aaformer-hf[app]=={aaformer_hf.__version__}\n')
        (stage / 'README.md').write_text(_readme(title, model, model_ref, model_folder, len(gallery_crops),
                                                 len(query_crops)))
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def push_space(folder: Path, repo_id: str, private: bool = False, token: Optional[str] = None) -> str:
    """Upload a Space folder to ``repo_id`` (a Gradio Space, created when missing). Returns the Space's address."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f'--push {repo_id!r}: {error}') from error
    if not (Path(folder) / 'app.py').is_file():
        raise FileNotFoundError(f'{folder}: not a Space folder (no app.py); write it with aaformer-hf space')
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type='space', space_sdk='gradio', private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type='space',
                      commit_message='Upload a re-ID demo with aaformer-hf space')
    return f'https://huggingface.co/spaces/{repo_id}'


def serve(model: str, gallery: str = 'gallery', queries: Optional[str] = None, pretrained: bool = False,
          flip: bool = False, here: Optional[Path] = None) -> None:
    """What a Space's ``app.py`` runs: the app on ``model`` and the crops in ``gallery`` (folders relative to
    ``here``, the Space's folder), served where Spaces says."""
    from .app import ReIDDemo, launch, model_card_text
    from .extract import load_inference_model
    from .gallery import gallery_from_images

    here = Path(here) if here is not None else Path.cwd()
    spec = str(here / model) if (here / model).is_dir() else model
    loaded = load_inference_model(spec, pretrained)
    crops = gallery_from_images(loaded, model, here / gallery, here / queries if queries else None,
                                cache_dir=here / '.cache' / 'galleries', flip=flip)
    demo = ReIDDemo(loaded, model, crops, model_card_text(spec, loaded))
    launch(demo, host=os.environ.get('GRADIO_SERVER_NAME', '127.0.0.1'),
           port=int(os.environ.get('GRADIO_SERVER_PORT', '7860')))


def _model_reference(model: str) -> Tuple[str, Optional[Path]]:
    """How the Space names the model: ``model`` (its copied folder), a Hub id or a timm name."""
    from ..hub.folders import refuse_pickles

    path = Path(model)
    if path.is_dir():
        if not (path / 'config.json').is_file():
            raise FileNotFoundError(f'{path}: not a model folder (no config.json)')
        refuse_pickles(path)
        if not list(path.glob('*.safetensors')):
            raise FileNotFoundError(f'{path}: no .safetensors weights to copy into the Space')
        return 'model', path
    if path.exists() or model.startswith(('.', '/', '~')):
        raise FileNotFoundError(f'{model}: not a model folder (a timm name, a saved folder or a Hub id is expected)')
    return model.removeprefix('hf-hub:'), None


def _crops(gallery, queries, dataset, root) -> Tuple[List[Tuple[Path, Optional[Tuple[int, int]]]], list]:
    """(path, (pid, camid) or None) of the gallery's crops and of the example queries."""
    from .extract import collect_images
    from .gallery import dataset_split, embeddings_with_crops, labelled_crops

    if dataset is not None:
        from ..data import load_reid_dataset
        data = load_reid_dataset(dataset, root)
        splits = [dataset_split(data[name]) for name in ('gallery', 'query')]
        return tuple(labelled_crops(paths, labels) for paths, *labels in splits)
    if Path(gallery).suffix == '.safetensors':
        saved = embeddings_with_crops(gallery)
        known = (saved['pids'].tolist(), saved['camids'].tolist()) if 'pids' in saved else None
        crops = labelled_crops(saved['paths'], known)
    else:
        crops = labelled_crops(collect_images(Path(gallery)))
    return crops, labelled_crops(collect_images(queries)) if queries is not None else []


def _copy_crops(crops, folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, (path, label) in enumerate(crops):
        if label is not None:  # Market-1501's naming, which names_to_labels reads back (cameras from 1)
            name = f'{label[0]:04d}_c{label[1] + 1}s1_{i:06d}_00{path.suffix.lower()}'
        else:
            name = f'{i:06d}_{path.name}'
        shutil.copy2(path, folder / name)


def _readme(title: str, model: str, model_ref: str, model_folder: Optional[Path], crops: int, queries: int) -> str:
    import gradio

    from .app import INTENDED_USE

    front = ['---', f'title: {json.dumps(title)}', 'emoji: 🚶', 'colorFrom: blue', 'colorTo: green', 'sdk: gradio',
             f'sdk_version: {gradio.__version__}', 'app_file: app.py', 'pinned: false', 'license: apache-2.0',
             'tags:', '- person-reid', '- aaformer-hf']
    if model_folder is None and '/' in model_ref:
        front += ['models:', f'- {model_ref.split("@")[0]}']
    front.append('---')
    source = f'the model folder `{model}` (copied into `model/`)' if model_folder is not None else f'`{model_ref}`'
    body = (f'# {title}\n\nA person re-identification demo made with `aaformer-hf space`: upload a crop of a person '
            f'(or pick one of the {queries} example queries) and see the {crops} gallery crops ranked by distance, '
            f'and what the model looked at. Model: {source}. The gallery is embedded when the Space starts.\n\n'
            f'## Intended use and limitations\n\n{INTENDED_USE}\n')
    return '\n'.join(front) + '\n\n' + body


_APP = '''"""A person re-identification demo: the aaformer-hf web app (written by `aaformer-hf space`)."""
from pathlib import Path

from aaformer_hf.apps.space import serve

serve(model={model}, gallery='gallery', queries={queries}, pretrained={pretrained}, flip={flip},
      here=Path(__file__).parent)
'''
