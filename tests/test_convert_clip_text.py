"""The CLIP text-tower converter, checked against CLIP's ``encode_text`` written here from OpenAI's model code (token
and position embeddings, pre-norm causal transformer with QuickGELU, final norm, the end-of-text state - the
highest token id - times ``text_projection``) in plain tensor operations on the checkpoint's own tensors."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPTextModelWithProjection

from aaformer_hf.hf.convert_clip_text import convert_clip_text_checkpoint, convert_clip_text_state_dict, main

VOCAB, CONTEXT, WIDTH, LAYERS, PROJ = 49408, 12, 128, 2, 48


def clip_text_state_dict(seed=0, with_visual=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.05, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    sd = {'token_embedding.weight': r(VOCAB, WIDTH, std=0.02), 'positional_embedding': r(CONTEXT, WIDTH, std=0.01),
          'ln_final.weight': r(WIDTH, mean=1.0), 'ln_final.bias': r(WIDTH), 'text_projection': r(WIDTH, PROJ),
          'logit_scale': torch.tensor(4.6)}
    for i in range(LAYERS):
        b = f'transformer.resblocks.{i}.'
        sd.update({b + 'attn.in_proj_weight': r(3 * WIDTH, WIDTH, std=0.1), b + 'attn.in_proj_bias': r(3 * WIDTH),
                   b + 'attn.out_proj.weight': r(WIDTH, WIDTH, std=0.1), b + 'attn.out_proj.bias': r(WIDTH),
                   b + 'ln_1.weight': r(WIDTH, mean=1.0), b + 'ln_1.bias': r(WIDTH),
                   b + 'mlp.c_fc.weight': r(4 * WIDTH, WIDTH, std=0.1), b + 'mlp.c_fc.bias': r(4 * WIDTH),
                   b + 'mlp.c_proj.weight': r(WIDTH, 4 * WIDTH, std=0.05), b + 'mlp.c_proj.bias': r(WIDTH),
                   b + 'ln_2.weight': r(WIDTH, mean=1.0), b + 'ln_2.bias': r(WIDTH)})
    if with_visual:  # an image tower the converter leaves out
        sd['visual.conv1.weight'] = r(8, 3, 3, 3)
    return sd


def encode_text(sd, ids):
    """OpenAI CLIP's encode_text in plain operations."""
    def ln(t, name):
        return F.layer_norm(t, (WIDTH,), sd[name + '.weight'], sd[name + '.bias'], eps=1e-5)

    x = sd['token_embedding.weight'][ids] + sd['positional_embedding']
    n, heads = ids.shape[1], WIDTH // 64
    causal = torch.full((n, n), float('-inf')).triu(1)
    for i in range(LAYERS):
        b = f'transformer.resblocks.{i}.'
        q, k, v = (ln(x, b + 'ln_1') @ sd[b + 'attn.in_proj_weight'].t() + sd[b + 'attn.in_proj_bias']).chunk(3, -1)
        q, k, v = (z.reshape(len(ids), n, heads, 64).transpose(1, 2) for z in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(64) + causal, dim=-1)
        x = x + (attn @ v).transpose(1, 2).reshape(len(ids), n, WIDTH) @ sd[b + 'attn.out_proj.weight'].t() \
            + sd[b + 'attn.out_proj.bias']
        h = ln(x, b + 'ln_2') @ sd[b + 'mlp.c_fc.weight'].t() + sd[b + 'mlp.c_fc.bias']
        x = x + (h * torch.sigmoid(1.702 * h)) @ sd[b + 'mlp.c_proj.weight'].t() + sd[b + 'mlp.c_proj.bias']
    x = ln(x, 'ln_final')
    return x[torch.arange(len(ids)), ids.argmax(-1)] @ sd['text_projection']


def test_converted_text_tower_is_clips_encode_text(tmp_path, capsys):
    sd = clip_text_state_dict()
    save_file(sd, tmp_path / 'open_clip_model.safetensors')
    main([str(tmp_path / 'open_clip_model.safetensors'), str(tmp_path / 'text')])
    assert 'CLIP text tower, 2 layers x 128, projection 48-d; no tokenizer' in capsys.readouterr().out
    model = CLIPTextModelWithProjection.from_pretrained(tmp_path / 'text').eval()
    # <|startoftext|> words <|endoftext|> then padding (OpenAI pads with 0, after the end of text)
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 49407, 0, 0, 0, 0, 0, 0],
                        [49406, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 49407]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).text_embeds, encode_text(sd, ids), rtol=1e-5, atol=1e-5)


def test_bad_checkpoints_are_named(tmp_path):
    sd = clip_text_state_dict(with_visual=False)
    with pytest.raises(ValueError, match=r'does not know: transformer\.resblocks\.0\.attn\.extra'):
        convert_clip_text_state_dict({**sd, 'transformer.resblocks.0.attn.extra': torch.zeros(1)})
    with pytest.raises(ValueError, match='not an OpenAI-layout CLIP checkpoint'):
        convert_clip_text_state_dict({'visual.conv1.weight': torch.zeros(1)})
    torch.save({'weights': sd, 'args': argparse.Namespace(lr=1.0)}, tmp_path / 'pickled.pt')  # refused: a class
    with pytest.raises(ValueError, match='pickled.pt: not a plain state dict'):
        convert_clip_text_checkpoint(tmp_path / 'pickled.pt', tmp_path / 'out')
    save_file(sd, tmp_path / 'ok.safetensors')
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'keep.txt').write_text('x')
    with pytest.raises(FileExistsError, match='full: exists and is not an empty folder'):
        convert_clip_text_checkpoint(tmp_path / 'ok.safetensors', tmp_path / 'full')
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / 'missing.safetensors'), str(tmp_path / 'out')])
    assert exit_info.value.code == 2
