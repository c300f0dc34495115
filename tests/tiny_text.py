"""A tiny offline CLIP text side for tests: a word-level tokenizer in CLIP's special-token layout and a randomly
initialised ``CLIPTextModelWithProjection``."""
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

from train_prompts import LIP_PART_WORDS, freeze

WORDS = sorted({w for text in ("a photo of a x person ' s .", *LIP_PART_WORDS) for w in text.split()})


def word_tokenizer(words=WORDS):
    """A word-level tokenizer with CLIP's special tokens (start/end of text, end of text also padding)."""
    vocab = {'<|startoftext|>': 0, '<|endoftext|>': 1, '[UNK]': 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single='<|startoftext|> $A <|endoftext|>', special_tokens=[('<|startoftext|>', 0), ('<|endoftext|>', 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<|startoftext|>', eos_token='<|endoftext|>',
                                   unk_token='[UNK]', pad_token='<|endoftext|>')


def text_tower(vocab_size, max_length=16, projection_dim=16):
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=max_length, projection_dim=projection_dim,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return freeze(CLIPTextModelWithProjection(config))


def save_text_side(folder: Path, projection_dim: int = 32, max_length: int = 16) -> Path:
    """A text tower and tokenizer saved as ``examples/train.py --text_model FOLDER`` reads them."""
    tokenizer = word_tokenizer()
    tower = text_tower(len(tokenizer), max_length, projection_dim)
    tower.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
