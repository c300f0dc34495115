"""Parsing maps written with a transformers segmentation model (aaformer_hf.apps.write_parsing), on a tiny random
SegFormer: every image gets a readable LIP map of its size that add_parsing_column accepts, the labels are the model's
own argmax (computed here with plain interpolation) mapped to LIP, and unmapped labels or existing maps are refused."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

from aaformer_hf.data import load_reid_dataset
from aaformer_hf.data.parsing import add_parsing_column, parsing_path
from aaformer_hf.data.synthetic import generate_market_layout
from aaformer_hf.apps.write_parsing import lip_label_map, main, write_parsing_maps

ID2LABEL = {0: 'bg', 1: 'Hair', 2: 'torso', 3: 'legs'}
MAPPING = {'bg': 'Background', 'Hair': 'Hair', 'torso': 'Upper-clothes', '3': 'Pants'}


@pytest.fixture()
def segformer(tmp_path):
    torch.manual_seed(0)
    config = SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                             hidden_sizes=[8, 16], num_attention_heads=[1, 1], decoder_hidden_size=16,
                             num_labels=4, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})
    folder = tmp_path / 'segformer'
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={'height': 64, 'width': 32}).save_pretrained(folder)
    return folder


def test_label_map_names_what_it_cannot_map():
    assert lip_label_map({0: 'background', 1: 'upper_clothes', 2: 'LEFT-SHOE'}).tolist() == [0, 5, 18]
    assert lip_label_map(ID2LABEL, MAPPING).tolist() == [0, 2, 5, 9]
    with pytest.raises(ValueError, match=r"1 model label\(s\) have no LIP label \(2:torso\)"):
        lip_label_map(ID2LABEL, {k: v for k, v in MAPPING.items() if k != 'torso'})
    with pytest.raises(ValueError, match=r"not LIP label names: \['Trousers'\]"):
        lip_label_map(ID2LABEL, dict(MAPPING, torso='Trousers'))
    with pytest.raises(ValueError, match='its labels are not LIP labels: pass a label map'):
        lip_label_map(ID2LABEL)


def test_maps_are_the_models_argmax_in_lip_labels(tmp_path, segformer):
    root = generate_market_layout(tmp_path / 'market', train_ids=3, test_ids=2, images_per_id=3, seed=2)
    split = load_reid_dataset('market1501', root)['train']
    model = SegformerForSemanticSegmentation.from_pretrained(segformer)
    processor = SegformerImageProcessor.from_pretrained(segformer)
    table = lip_label_map(model.config.id2label, MAPPING)
    assert write_parsing_maps(split, root, model, processor, table, batch_size=4) == len(split)
    checked = add_parsing_column(split, root)  # every map readable, of its image's size, labels 0..19
    assert all(p is not None for p in checked['parsing'])
    # reference for one image: resize to the processor's 64x32, normalise, logits upsampled bilinearly, argmax
    path = split['path'][4]
    image = Image.open(path).convert('RGB')
    pixels = torch.from_numpy(np.asarray(image.resize((32, 64), Image.BILINEAR), dtype=np.float32) / 255)
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    pixels = ((pixels - mean) / std).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    expected = F.interpolate(logits, size=(image.height, image.width), mode='bilinear', align_corners=False)
    expected = table[expected.argmax(1)[0].numpy()]
    written = np.asarray(Image.open(parsing_path(path, root)))
    assert written.shape == (image.height, image.width) and set(np.unique(written)) <= {0, 2, 5, 9}
    assert (written == expected).mean() > 0.99  # resampling differences may move a few boundary pixels
    with pytest.raises(FileExistsError, match=f'{len(split)} parsing map\\(s\\) exist already'):
        write_parsing_maps(split, root, model, processor, table)


def test_command_line(tmp_path, segformer, capsys):
    root = generate_market_layout(tmp_path / 'market', train_ids=2, test_ids=2, images_per_id=2, seed=4)
    (tmp_path / 'labels.json').write_text(json.dumps(MAPPING))
    main(['--dataset', 'market1501', '--root', str(root), '--model', str(segformer), '--label_map',
          str(tmp_path / 'labels.json'), '--splits', 'train', 'query'])
    out = capsys.readouterr().out
    assert 'train: wrote 4 parsing maps' in out and 'query: wrote 2 parsing maps' in out
    with pytest.raises(SystemExit):
        main(['--dataset', 'market1501', '--root', str(root), '--model', str(segformer)])
    assert 'pass a label map' in capsys.readouterr().err
