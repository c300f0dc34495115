"""The embedded stand-in for CLIP (examples/pretrain_tiny_clip.py): captions from the synthetic generator, a tokenizer
in CLIP's format, a short pretraining whose outputs the trainer reads through its real loading paths."""
import json

import pytest
import timm
import torch
from transformers import AutoTokenizer, CLIPTextModelWithProjection

from aaformer_hf.data.synthetic import CAPTIONS_FILE, COLOUR_NAMES, caption, colour_name, generate_market_layout
from pretrain_tiny_clip import PretrainConfig, build_clip_tokenizer, clip_loss, pretrain, prompt_corpus


def test_captions_name_each_part_with_its_nearest_colour(tmp_path):
    assert colour_name((250, 10, 5)) == 'red' and colour_name((25, 30, 95)) == 'navy'
    assert all(colour_name(rgb) == name for name, rgb in COLOUR_NAMES.items())
    from aaformer_hf.data.synthetic import _Identity
    person = _Identity(hair=(20, 20, 20), upper=(200, 30, 30), upper_pattern='stripes', pattern_colour=(235, 235, 235),
                       pants=(30, 60, 200), shoes=(128, 128, 128), bag='left', bag_colour=(40, 170, 50))
    assert caption(person) == ('a person with black hair, a red striped top with white stripes, blue trousers and grey '
                               'shoes, carrying a green bag on the left.')
    root = generate_market_layout(tmp_path / 'm', train_ids=2, test_ids=2, images_per_id=3, distractors=1, junk=1)
    captions = json.loads((root / CAPTIONS_FILE).read_text())
    images = sorted(str(p.relative_to(root)) for p in root.rglob('*.jpg'))
    assert sorted(captions) == images  # one caption per image, junk and distractors included
    train = [c for p, c in captions.items() if p.startswith('bounding_box_train/0001')]
    assert len(set(train)) == 1  # an identity's images share its description


def test_tokenizer_is_clip_format_and_keeps_prompt_words_whole():
    from transformers import CLIPTokenizer
    texts = ['a person with black hair, a red plain top, blue trousers and grey shoes.'] + prompt_corpus()
    tokenizer = build_clip_tokenizer(texts, vocab_size=400)
    assert isinstance(tokenizer, CLIPTokenizer)
    ids = tokenizer("A photo of a X X X X person's left shoe.")['input_ids']
    # CLIP's pipeline: lower-cased words with the end-of-word suffix, "'s" split off, start/end-of-text around
    assert tokenizer.convert_ids_to_tokens(ids) == [
        '<|startoftext|>', 'a</w>', 'photo</w>', 'of</w>', 'a</w>', 'x</w>', 'x</w>', 'x</w>', 'x</w>', 'person</w>',
        "'s</w>", 'left</w>', 'shoe</w>', '.</w>', '<|endoftext|>']
    # an unseen word still tokenises (byte-level BPE), into pieces
    assert len(tokenizer('zebra', add_special_tokens=False)['input_ids']) > 1


def test_tokenizer_ids_are_the_same_in_every_process():
    # the BPE trainer numbers end-of-word symbols in hash-map order, which changes per process: build the same
    # tokenizer in three fresh interpreters and compare the full vocabulary and an encoding
    import subprocess
    import sys
    from pathlib import Path
    script = ("import json, sys; sys.path.insert(0, 'examples'); "
              "from pretrain_tiny_clip import build_clip_tokenizer, prompt_corpus; "
              "texts = ['a person with black hair, a red plain top, blue trousers and grey shoes.', "
              "'a person with brown hair, a navy striped top with white stripes, black shorts and red shoes.'] "
              "+ prompt_corpus(); "
              "t = build_clip_tokenizer(texts, 400); "
              "print(json.dumps([sorted(t.get_vocab().items()), t(texts)['input_ids']]))")
    root = Path(__file__).resolve().parents[1]
    runs = {subprocess.run([sys.executable, '-c', script], cwd=root, check=True, capture_output=True,
                           text=True).stdout for _ in range(3)}
    assert len(runs) == 1


def test_clip_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 3.0]])
    pids = torch.tensor([7, 8, 7])
    rows = torch.log_softmax(logits, 1)
    cols = torch.log_softmax(logits.t(), 1)
    # identity 7 (items 0 and 2): two positives of weight 1/2 each
    by_hand = -(0.5 * (rows[0, 0] + rows[0, 2]) + rows[1, 1] + 0.5 * (rows[2, 0] + rows[2, 2])) / 3 \
        - (0.5 * (cols[0, 0] + cols[0, 2]) + cols[1, 1] + 0.5 * (cols[2, 0] + cols[2, 2])) / 3
    torch.testing.assert_close(clip_loss(logits, pids), by_hand / 2)


def test_a_short_pretraining_writes_what_the_trainer_loads(tmp_path):
    out = pretrain(PretrainConfig(output_dir=str(tmp_path / 'clip'), identities=16, images_per_id=4, epochs=2,
                                  batch_size=16, num_workers=0))
    record = json.loads((out / 'pretraining.json').read_text())
    assert record['steps'] == 2 * 4 and len(record['epoch_losses']) == 2
    assert all(0 < loss < float('inf') for loss in record['epoch_losses'])
    assert not (out / 'data').exists()
    # the image tower loads through timm's pretrained path as a CLIP checkpoint (projection in, BNNecks fresh)
    model = timm.create_model('pivl_vit_tiny', pretrained=True, num_classes=5,
                              pretrained_cfg_overlay=dict(file=str(out / 'image' / 'model.safetensors')))
    from safetensors.torch import load_file
    saved = load_file(out / 'image' / 'model.safetensors')
    torch.testing.assert_close(model.proj.weight, saved['head.weight'])
    torch.testing.assert_close(model.blocks[3].mlp.fc2.weight, saved['blocks.3.mlp.fc2.weight'])
    text = CLIPTextModelWithProjection.from_pretrained(out / 'text')
    tokenizer = AutoTokenizer.from_pretrained(out / 'text')
    assert text.config.projection_dim == model.proj_dim and text.config.eos_token_id == tokenizer.eos_token_id
    # a finished folder is reused, an unfinished one is not silently replaced
    assert pretrain(PretrainConfig(output_dir=str(out))) == out
    (tmp_path / 'half').mkdir()
    (tmp_path / 'half' / 'something').write_text('x')
    with pytest.raises(FileExistsError, match='holds no finished pretraining'):
        pretrain(PretrainConfig(output_dir=str(tmp_path / 'half')))


def test_a_tiny_clip_resnet_pretrains_into_timms_resnet_clip_layout(tmp_path):
    """π-VL's CNN demo: a CLIP ResNet tower, saved as timm's resnet50_clip layout (attention pool as `head`), loads
    into pivl_resnet_tiny through timm's pretrained path with its pool (and CLIP's whole image embedding) intact."""
    out = pretrain(PretrainConfig(output_dir=str(tmp_path / 'clip'), image_model='pivl_resnet_tiny', identities=8,
                                  images_per_id=4, epochs=1, batch_size=16, num_workers=0))
    from safetensors.torch import load_file
    saved = load_file(out / 'image' / 'model.safetensors')
    assert 'head.pos_embed' in saved and not [k for k in saved if k.startswith(('attn_pool', 'bnneck'))]
    model = timm.create_model('pivl_resnet_tiny', pretrained=True, num_classes=5,
                              pretrained_cfg_overlay=dict(file=str(out / 'image' / 'model.safetensors'))).eval()
    torch.testing.assert_close(model.attn_pool.proj.weight, saved['head.proj.weight'])
    torch.testing.assert_close(model.attn_pool.pos_embed, saved['head.pos_embed'])  # pretrained at 256x128 already
    text = CLIPTextModelWithProjection.from_pretrained(out / 'text')
    assert text.config.projection_dim == model.proj_dim == 64


def test_pretraining_is_reproducible(tmp_path):
    from safetensors.torch import load_file
    config = dict(identities=8, images_per_id=4, epochs=1, batch_size=16, num_workers=0)
    a = pretrain(PretrainConfig(output_dir=str(tmp_path / 'a'), **config))
    b = pretrain(PretrainConfig(output_dir=str(tmp_path / 'b'), **config))
    for part in ('image/model.safetensors', 'text/model.safetensors'):
        first, second = load_file(a / part), load_file(b / part)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), part
    vocabularies = [AutoTokenizer.from_pretrained(folder / 'text').get_vocab() for folder in (a, b)]
    assert vocabularies[0] == vocabularies[1]


def test_cli_writes_no_library_progress_bars_into_a_log(tmp_path):
    # stderr is a pipe here, as in `... 2> log`: transformers' "Writing model shards" bar must stay off it
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, 'examples/pretrain_tiny_clip.py', '--output_dir', str(tmp_path / 'clip'),
                           '--identities', '8', '--images_per_id', '4', '--epochs', '1', '--batch_size', '16',
                           '--num_workers', '0'], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'tiny CLIP:' in done.stdout
    assert '\r' not in done.stderr and 'it/s]' not in done.stderr, done.stderr[-2000:]
