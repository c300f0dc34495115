"""Write human-parsing maps for a re-ID dataset with any transformers semantic-segmentation model.

π-VL reads LIP-label maps (20 classes, SCHP's order) beside the images (``aaformer_hf.data.parsing``). SCHP itself is
not a transformers model; any ``AutoModelForSemanticSegmentation`` checkpoint with its image processor works here,
with a mapping from its labels to LIP labels. A model whose labels already carry LIP names (any case, '-' / '_' /
' ' alike) needs none; otherwise every label of the model must be mapped (to 'Background' to drop it): nothing is
mapped silently.

    python -m aaformer_hf.apps.write_parsing --dataset market1501 --root /data/Market-1501 \\
        --model ./my-lip-segformer [--label_map labels.json] [--splits train] [--batch_size 16] [--overwrite]

``labels.json``: {"<model label name or id>": "<LIP label name>", ...}.
"""
import argparse
import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import datasets
import numpy as np
import torch
from PIL import Image

from ..data.datasets import ReIDDatasetError, load_reid_dataset
from ..data.parsing import _listed, parsing_path
from ..data.synthetic import LIP_LABELS

__all__ = ['lip_label_map', 'write_parsing_maps', 'main']


def _canonical(name: str) -> str:
    return str(name).lower().replace('-', ' ').replace('_', ' ').strip()


_LIP = {_canonical(name): i for i, name in enumerate(LIP_LABELS)}


def lip_label_map(id2label: Mapping[int, str], mapping: Optional[Mapping[str, str]] = None) -> np.ndarray:
    """A lookup table model label id -> LIP label id.

    Args:
        id2label: the model's labels (``model.config.id2label``).
        mapping: model label (name or id, as a string) -> LIP label name; None: the model's names must be LIP names.
    """
    table = np.zeros(max(int(i) for i in id2label) + 1, dtype=np.uint8)
    unmapped, unknown = [], []
    for index, name in id2label.items():
        if mapping is None:  # the model's own names, when they are LIP names
            target = name if _canonical(name) in _LIP else None
        else:
            target = mapping.get(str(name), mapping.get(str(index)))
        if target is None:
            unmapped.append(f'{index}:{name}')
        elif _canonical(target) not in _LIP:
            unknown.append(str(target))
        else:
            table[int(index)] = _LIP[_canonical(target)]
    if unknown:
        raise ValueError(f'not LIP label names: {sorted(set(unknown))}; LIP labels are {", ".join(LIP_LABELS)}')
    if unmapped:
        hint = ('its labels are not LIP labels: pass a label map' if mapping is None
                else 'map each of them (to "Background" to drop it)')
        raise ValueError(f'{len(unmapped)} model label(s) have no LIP label ({", ".join(unmapped[:8])}'
                         f'{" ..." if len(unmapped) > 8 else ""}): {hint}')
    return table


@torch.no_grad()
def write_parsing_maps(split: datasets.Dataset, root: Union[str, Path], model, processor, table: np.ndarray,
                       batch_size: int = 16, overwrite: bool = False) -> int:
    """Segment every image of ``split`` (its ``image`` and ``path`` columns) and write its LIP map beside the data;
    returns the number written. Existing maps are an error unless ``overwrite``."""
    if 'path' not in split.column_names:
        raise ReIDDatasetError('parsing maps are written beside image files; this dataset has no path column')
    targets = [parsing_path(path, root) for path in split['path']]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f'{len(existing)} parsing map(s) exist already ({_listed(existing)}); pass '
                              'overwrite=True / --overwrite to replace')
    model.eval()
    device = next(model.parameters()).device

    def segment(batch: Dict[str, list], indices: Sequence[int]) -> Dict[str, list]:
        images = batch['image']
        inputs = processor(images=images, return_tensors='pt').to(device)
        outputs = model(**inputs)
        sizes = [(image.height, image.width) for image in images]
        labels = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        for index, predicted in zip(indices, labels):
            target = targets[index]
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(table[predicted.cpu().numpy()], mode='L').save(target)
        return {'parsing': [str(targets[i]) for i in indices]}

    split.map(segment, batched=True, batch_size=batch_size, with_indices=True, desc='writing parsing maps',
              remove_columns=split.column_names, load_from_cache_file=False)
    return len(targets)


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', required=True, help='a load_reid_dataset name (market1501, msmt17, ...)')
    parser.add_argument('--root', required=True, type=Path)
    parser.add_argument('--model', required=True, help='a folder or Hub id of a semantic-segmentation model')
    parser.add_argument('--label_map', type=Path, help='JSON: model label name or id -> LIP label name')
    parser.add_argument('--splits', nargs='+', default=['train'], help='splits to write maps for (default: train)')
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    try:
        mapping = json.loads(args.label_map.read_text()) if args.label_map else None
        model = AutoModelForSemanticSegmentation.from_pretrained(args.model).to(args.device)
        processor = AutoImageProcessor.from_pretrained(args.model)
        table = lip_label_map(model.config.id2label, mapping)
        data = load_reid_dataset(args.dataset, args.root)
        for name in args.splits:
            if name not in data:
                raise ValueError(f'no split {name!r} (the dataset has {", ".join(data)})')
            count = write_parsing_maps(data[name], args.root, model, processor, table, args.batch_size,
                                       args.overwrite)
            print(f'{name}: wrote {count} parsing maps under {args.root / "parsing"}')
    except (ValueError, OSError, ReIDDatasetError) as error:
        parser.error(str(error))


if __name__ == '__main__':
    main()
