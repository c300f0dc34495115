"""The text side of CLIP-ReID and π-VL training: learnable identity tokens in CLIP prompts, and the frozen CLIP text
tower that encodes them (transformers' ``CLIPTextModelWithProjection``).

- CLIP-ReID: "A photo of a X1 X2 X3 X4 person." with the four X per identity learned (stage 1), then fixed text
  features for every identity (stage 2's image-to-text classifier).
- π-VL: the same identity tokens in a part prompt per parsing class, "A photo of a X1 X2 X3 X4 person's <part>."
  (identity-aware part prompts, Table 3's B+P), or label-only part prompts "A photo of a person's <part>." (B+H).
Prompts are built as token embeddings: the template's embeddings with the identity's tokens written over the
placeholder positions, then run through the text tower (its position embeddings, causal transformer, final norm,
the end-of-text token's state, projection).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from transformers.masking_utils import create_causal_mask

__all__ = ['LIP_PART_WORDS', 'IDENTITY_TEMPLATE', 'PART_TEMPLATE', 'LABEL_PART_TEMPLATE', 'PromptLearner',
           'encode_prompt_embeddings', 'freeze']

# the 20 LIP classes in SCHP's order (aaformer_hf.data.synthetic.LIP_LABELS), as words for prompts
LIP_PART_WORDS = ('background', 'hat', 'hair', 'glove', 'sunglasses', 'upper clothes', 'dress', 'coat', 'socks',
                  'pants', 'jumpsuit', 'scarf', 'skirt', 'face', 'left arm', 'right arm', 'left leg', 'right leg',
                  'left shoe', 'right shoe')
IDENTITY_TEMPLATE = 'A photo of a {ctx} person.'
# our reading of the paper's T(concat(T_i, L(p))): the identity's tokens, then the part's label word (the paper
# prints no template)
PART_TEMPLATE = "A photo of a {ctx} person's {part}."
LABEL_PART_TEMPLATE = "A photo of a person's {part}."
PLACEHOLDER = 'X'


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode (dropout off): the CLIP towers CLIP-ReID keeps fixed."""
    module.requires_grad_(False)
    return module.eval()


def encode_prompt_embeddings(text_model: nn.Module, embeddings: torch.Tensor, eos_index: torch.Tensor
                             ) -> torch.Tensor:
    """``CLIPTextModelWithProjection``'s ``text_embeds`` computed from token embeddings instead of token ids
    (position embeddings added, causal transformer, final norm, the end-of-text state, projection).

    Args:
        text_model: a ``CLIPTextModelWithProjection``.
        embeddings: (N, L, W) token embeddings (learned identity tokens in place).
        eos_index: (N,) position of each prompt's end-of-text token.
    """
    tower = text_model.text_model
    hidden = tower.embeddings(inputs_embeds=embeddings)
    # no attention mask, no cache; the cache argument is passed by position: transformers 5.25 renamed it from
    # past_key_values to cache (the old name warns, and goes in 5.40)
    mask = create_causal_mask(tower.config, hidden, None, None)
    hidden = tower.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    hidden = tower.final_layer_norm(hidden)
    return text_model.text_projection(hidden[torch.arange(len(hidden), device=hidden.device), eos_index])


class PromptLearner(nn.Module):
    """Per-identity learnable context tokens and the tokenised templates they fill.

    Args:
        tokenizer: the text tower's tokenizer (adds start and end-of-text tokens; ``PLACEHOLDER`` 'X' must be one
            token, as in CLIP's).
        token_embedding: the text tower's token embedding (``text_model.text_model.embeddings.token_embedding``).
        num_classes: training identities.
        max_length: the text tower's context length (``max_position_embeddings``, 77 for CLIP).
        num_context: learnable tokens per identity (4 in CLIP-ReID and π-VL).
        part_words: one word (or phrase) per parsing class for the part prompts; None builds no part prompts.
        identity_parts: True: identity-aware part prompts (π-VL, B+P); False: label-only part prompts (B+H).
    """

    def __init__(self, tokenizer, token_embedding: nn.Embedding, num_classes: int, max_length: int,
                 num_context: int = 4, part_words: Optional[Sequence[str]] = None, identity_parts: bool = True
                 ) -> None:
        super().__init__()
        self.num_context = num_context
        self.identity_parts = identity_parts
        ctx = ' '.join([PLACEHOLDER] * num_context)
        tokens, eos, positions = self._tokenise(tokenizer, [IDENTITY_TEMPLATE.format(ctx=ctx)], max_length)
        parts = []
        if part_words:
            template = PART_TEMPLATE if identity_parts else LABEL_PART_TEMPLATE
            parts = [template.format(ctx=ctx, part=word) for word in part_words]
            part_tokens, part_eos, part_positions = self._tokenise(tokenizer, parts, max_length, identity_parts)
            tokens, eos, positions = torch.cat([tokens, part_tokens]), torch.cat([eos, part_eos]), \
                torch.cat([positions, part_positions])
        self.num_parts = len(parts)
        with torch.no_grad():
            embedded = token_embedding(tokens.to(token_embedding.weight.device)).float()
        # row 0: the identity prompt; rows 1..P: the part prompts (buffers, so they move with the module)
        self.register_buffer('template_embeddings', embedded, persistent=False)
        self.register_buffer('eos_index', eos, persistent=False)
        self.register_buffer('context_index', positions, persistent=False)  # (1 + P, M), -1 where no tokens
        self.context = nn.Parameter(torch.empty(num_classes, num_context, embedded.shape[-1]))
        nn.init.normal_(self.context, std=0.02)  # CLIP-ReID's cls_ctx init

    def _tokenise(self, tokenizer, texts: List[str], max_length: int, with_context: bool = True
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        placeholder = tokenizer(PLACEHOLDER, add_special_tokens=False)['input_ids']
        if len(placeholder) != 1 or placeholder[0] == tokenizer.unk_token_id:
            raise ValueError(f'the tokenizer does not make the placeholder {PLACEHOLDER!r} one known token (got '
                             f'{placeholder}); the learned identity tokens take its places')
        rows, eos, positions = [], [], []
        for text in texts:
            ids = tokenizer(text)['input_ids']
            if len(ids) > max_length:
                raise ValueError(f'the prompt {text!r} is {len(ids)} tokens long, more than the text tower\'s '
                                 f'{max_length}: shorten the part name')
            # CLIP's unknown token is its end-of-text token (byte-level BPE knows every word): nothing to check then
            unknown = tokenizer.unk_token_id
            if unknown is not None and unknown != tokenizer.eos_token_id and unknown in ids:
                raise ValueError(f'the prompt {text!r} has words the tokenizer does not know')
            where = [i for i, token in enumerate(ids) if token == placeholder[0]]
            consecutive = bool(where) and where == list(range(where[0], where[0] + self.num_context))
            if with_context and not consecutive:
                raise ValueError(f'the prompt {text!r} does not tokenise to {self.num_context} consecutive '
                                 f'placeholder tokens (a part name containing {PLACEHOLDER!r}?)')
            eos.append(ids.index(tokenizer.eos_token_id))
            positions.append(where if with_context else [-1] * self.num_context)
            rows.append(ids + [tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                               else tokenizer.eos_token_id] * (max_length - len(ids)))
        return torch.tensor(rows), torch.tensor(eos), torch.tensor(positions)

    def forward(self, labels: torch.Tensor, parts: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``prompts``: a forward, so that a DistributedDataParallel wrapper synchronises the context's gradients."""
        return self.prompts(labels, parts)

    def prompts(self, labels: torch.Tensor, parts: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings and end-of-text positions of the prompts of ``labels`` (the identity prompt) or, with
        ``parts`` (same shape, 0-based parsing classes), of the part prompts of those identities; a part index of -1
        asks for the identity prompt (both kinds in one call)."""
        if parts is not None and not bool(((parts >= -1) & (parts < self.num_parts)).all()):
            raise ValueError(f'part indices must lie in [-1, {self.num_parts}) (-1: the identity prompt)')
        row = torch.zeros_like(labels) if parts is None else parts + 1
        embeddings = self.template_embeddings[row].to(self.context.dtype)
        positions = self.context_index[row]  # (N, M)
        has_context = positions[:, 0] >= 0
        if bool(has_context.any()):
            n = torch.nonzero(has_context).squeeze(1)
            embeddings = embeddings.index_put(
                (n.unsqueeze(1).expand(-1, self.num_context), positions[n]), self.context[labels[n]])
        return embeddings, self.eos_index[row]
