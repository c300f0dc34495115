# Copyright 2026 The aaformer-hf Authors. Licensed under the Apache License, Version 2.0.
"""Convert the text tower of an OpenAI-layout CLIP checkpoint (OpenAI's own state dict, or open_clip's, e.g. the
``open_clip_model.safetensors`` of timm's ``resnet50_clip.openai`` Hub repo) into a transformers
``CLIPTextModelWithProjection`` folder: the ``--text_model`` of CLIP-ReID / π-VL training. transformers ships the
text towers of CLIP's ViTs only; π-VL's CNN needs RN50 CLIP's, whose text projection is 1024-d.

    python -m aaformer_hf.hf.convert_clip_text open_clip_model.safetensors ./clip-rn50-text \\
        --tokenizer openai/clip-vit-base-patch16

Every OpenAI CLIP model has the same tokenizer (a 49,408-token BPE), so ``--tokenizer`` copies one from any
transformers CLIP folder or Hub id. The image tower (``visual.*``) and ``logit_scale`` are left out. Files are read
with safetensors or ``torch.load(weights_only=True)``; nothing is unpickled.
"""
import argparse
import re
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

__all__ = ['convert_clip_text_state_dict', 'convert_clip_text_checkpoint', 'main']

_LAYER = re.compile(r'transformer\.resblocks\.(\d+)\.(.+)')
_RENAMES = {'attn.out_proj.weight': 'self_attn.out_proj.weight', 'attn.out_proj.bias': 'self_attn.out_proj.bias',
            'ln_1.weight': 'layer_norm1.weight', 'ln_1.bias': 'layer_norm1.bias',
            'mlp.c_fc.weight': 'mlp.fc1.weight', 'mlp.c_fc.bias': 'mlp.fc1.bias',
            'mlp.c_proj.weight': 'mlp.fc2.weight', 'mlp.c_proj.bias': 'mlp.fc2.bias',
            'ln_2.weight': 'layer_norm2.weight', 'ln_2.bias': 'layer_norm2.bias'}
_TOP = {'token_embedding.weight': 'text_model.embeddings.token_embedding.weight',
        'positional_embedding': 'text_model.embeddings.position_embedding.weight',
        'ln_final.weight': 'text_model.final_layer_norm.weight', 'ln_final.bias': 'text_model.final_layer_norm.bias'}
# OpenAI's tokenizer: <|startoftext|> 49406, <|endoftext|> 49407 (the end-of-text state is the pooled one)
_BOS, _EOS = 49406, 49407


def convert_clip_text_state_dict(state_dict: Dict[str, torch.Tensor]):
    """OpenAI-layout CLIP weights -> (``CLIPTextModelWithProjection`` weights, its ``CLIPTextConfig``). Keys of the
    text side it does not know are an error naming them."""
    from transformers import CLIPTextConfig

    state_dict = state_dict.get('state_dict', state_dict)
    state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()}
    if 'text_projection' not in state_dict or 'token_embedding.weight' not in state_dict:
        raise ValueError('not an OpenAI-layout CLIP checkpoint: no text_projection / token_embedding.weight')
    out, unknown, layers = {}, [], set()
    for key, value in state_dict.items():
        if key.startswith('visual.') or key in ('logit_scale', 'input_resolution', 'context_length', 'vocab_size'):
            continue
        if key in _TOP:
            out[_TOP[key]] = value
        elif key == 'text_projection':
            out['text_projection.weight'] = value.t().contiguous()  # OpenAI multiplies x @ P, a Linear does x @ W^T
        elif m := _LAYER.fullmatch(key):
            layer, rest = int(m.group(1)), m.group(2)
            layers.add(layer)
            prefix = f'text_model.encoder.layers.{layer}.'
            if rest in ('attn.in_proj_weight', 'attn.in_proj_bias'):
                kind = 'weight' if rest.endswith('weight') else 'bias'
                for name, part in zip(('q_proj', 'k_proj', 'v_proj'), value.chunk(3, dim=0)):
                    out[f'{prefix}self_attn.{name}.{kind}'] = part.contiguous()
            elif rest in _RENAMES:
                out[prefix + _RENAMES[rest]] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f'{len(unknown)} CLIP text key(s) this converter does not know: {", ".join(unknown[:6])}'
                         f'{", ..." if len(unknown) > 6 else ""}')
    if layers != set(range(len(layers))):
        raise ValueError(f'the text transformer\'s layers are not 0..{len(layers) - 1}: {sorted(layers)}')
    width = state_dict['ln_final.weight'].shape[0]
    config = CLIPTextConfig(
        vocab_size=state_dict['token_embedding.weight'].shape[0], hidden_size=width,
        intermediate_size=state_dict['transformer.resblocks.0.mlp.c_fc.weight'].shape[0],
        num_hidden_layers=len(layers), num_attention_heads=width // 64,  # CLIP's heads are 64 wide
        max_position_embeddings=state_dict['positional_embedding'].shape[0],
        projection_dim=state_dict['text_projection'].shape[1], hidden_act='quick_gelu',
        bos_token_id=_BOS, eos_token_id=_EOS, pad_token_id=_EOS)
    return out, config


def _read(checkpoint: Path) -> Dict[str, torch.Tensor]:
    if checkpoint.suffix == '.safetensors':
        from safetensors.torch import load_file
        return load_file(checkpoint)
    try:
        return torch.load(checkpoint, map_location='cpu', weights_only=True)
    except Exception as error:  # a TorchScript archive (OpenAI's .pt), pickled code, a damaged file
        raise ValueError(f'{checkpoint}: not a plain state dict torch.load(weights_only=True) can read ({error}); '
                         'OpenAI\'s TorchScript .pt files are refused (they run code): use open_clip\'s '
                         'safetensors of the same weights') from error


def convert_clip_text_checkpoint(checkpoint: str | Path, output_dir: str | Path, tokenizer: Optional[str] = None,
                                 overwrite: bool = False):
    """Read, convert and ``save_pretrained`` the text tower (and ``tokenizer``, copied from a CLIP folder or Hub id)
    into ``output_dir``; returns the model."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if not checkpoint.is_file():
        raise FileNotFoundError(f'{checkpoint}: CLIP checkpoint not found')
    if output_dir.exists() and (not output_dir.is_dir() or (any(output_dir.iterdir()) and not overwrite)):
        raise FileExistsError(f'{output_dir}: exists and is not an empty folder; choose another or pass --overwrite')
    weights, config = convert_clip_text_state_dict(_read(checkpoint))
    model = CLIPTextModelWithProjection(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith('position_ids')]  # a buffer transformers derives
    if missing or unexpected:
        raise ValueError(f'{checkpoint}: the text tower does not fit (missing {missing[:4]}, unexpected '
                         f'{unexpected[:4]})')
    tok = AutoTokenizer.from_pretrained(tokenizer) if tokenizer else None
    if tok is not None and len(tok) != config.vocab_size:
        raise ValueError(f'--tokenizer {tokenizer}: {len(tok)} tokens, the text tower has {config.vocab_size}')
    model.eval().save_pretrained(output_dir)
    if tok is not None:
        tok.save_pretrained(output_dir)
    return model


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m aaformer_hf.hf.convert_clip_text', allow_abbrev=False,
                                     description='Convert a CLIP checkpoint\'s text tower into a transformers folder.')
    parser.add_argument('checkpoint', help='OpenAI / open_clip CLIP state dict (.safetensors, or .pt/.pth read with '
                                           'weights_only=True)')
    parser.add_argument('output_dir', help='folder for save_pretrained (must be new or empty)')
    parser.add_argument('--tokenizer', help='a transformers CLIP tokenizer folder or Hub id to copy (every OpenAI '
                                            'CLIP has the same), e.g. openai/clip-vit-base-patch16')
    parser.add_argument('--overwrite', action='store_true', help='write into a non-empty output folder')
    args = parser.parse_args(argv)
    try:
        model = convert_clip_text_checkpoint(args.checkpoint, args.output_dir, args.tokenizer, args.overwrite)
    except (OSError, ValueError) as error:
        parser.exit(2, f'{parser.prog}: error: {error}\n')
    config = model.config
    print(f'{args.output_dir}: CLIP text tower, {config.num_hidden_layers} layers x {config.hidden_size}, '
          f'projection {config.projection_dim}-d' + ('' if args.tokenizer else '; no tokenizer (--tokenizer)'))


if __name__ == '__main__':
    main()
