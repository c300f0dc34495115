"""Pretrain a tiny CLIP on SYNTHETIC captioned person images, offline on CPU: the embedded stand-in for the OpenAI CLIP
ViT-B/16 that CLIP-ReID and π-VL start from (real CLIP weights cannot be downloaded here, and a random CLIP would make
their stage 1 meaningless).

    python examples/pretrain_tiny_clip.py --output_dir outputs/tiny_clip        # a few minutes on 2 CPU cores

The images and captions come from aaformer_hf.data.synthetic (its own identities, drawn with another seed than any
re-ID set, so none is shared); a CLIP-format byte-level BPE tokenizer is trained on the captions and prompt templates
with the ``tokenizers`` library; the image tower is timm's ``pivl_vit_tiny`` (CLIP's pre-norm ViT) or, for π-VL's CNN,
``pivl_resnet_tiny`` (CLIP's ResNet with its attention pool; ``--image_model``), the text tower transformers'
``CLIPTextModelWithProjection``; both learn with CLIP's symmetric contrastive loss (images of one identity share a
caption, so all of them are positives).

    python examples/pretrain_tiny_clip.py --output_dir outputs/tiny_clip_cnn --image_model pivl_resnet_tiny

Writes OUTPUT_DIR/image/model.safetensors (the image tower in timm's CLIP layout - the ViT's projection, the
ResNet's attention pool as ``head`` -: the trainer's ``pretrained_file``), OUTPUT_DIR/text/ (text tower +
tokenizer: the trainer's ``text_model``) and OUTPUT_DIR/pretraining.json (settings and the last loss). A finished
folder is reused unless --overwrite is given.
"""
import argparse
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from aaformer_hf.data import build_transforms, load_reid_dataset
from aaformer_hf.data.loaders import ReIDItems
from aaformer_hf.data.synthetic import CAPTIONS_FILE, generate_market_layout
from aaformer_hf.models.pivl_resnet import PiVLResNet

from train_prompts import IDENTITY_TEMPLATE, LABEL_PART_TEMPLATE, LIP_PART_WORDS, PART_TEMPLATE, PLACEHOLDER
from train_utils import library_bars_only_on_a_terminal

__all__ = ['PretrainConfig', 'build_clip_tokenizer', 'TinyCLIP', 'pretrain', 'main']

DONE_FILE = 'pretraining.json'


@dataclasses.dataclass
class PretrainConfig:
    output_dir: str = 'outputs/tiny_clip'
    identities: int = 200  # synthetic identities to learn from (none of them in any re-ID split)
    images_per_id: int = 6
    seed: int = 1000
    image_model: str = 'pivl_vit_tiny'
    text_width: int = 64
    text_layers: int = 4
    text_heads: int = 2
    max_length: int = 40  # the text tower's context (captions here are < 30 tokens)
    vocab_size: int = 600  # BPE vocabulary incl. the 256 byte symbols
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    num_workers: int = 2
    overwrite: bool = False


def prompt_corpus() -> List[str]:
    """The prompt texts CLIP-ReID / π-VL build, so every word of them is in the vocabulary."""
    ctx = ' '.join([PLACEHOLDER] * 4)
    return [IDENTITY_TEMPLATE.format(ctx=ctx)] + [
        template.format(ctx=ctx, part=word) for word in LIP_PART_WORDS for template in (PART_TEMPLATE,
                                                                                           LABEL_PART_TEMPLATE)]


def build_clip_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE trained on ``texts`` with CLIP's normalisation, pre-tokenisation, end-of-word suffix and
    special tokens, as a transformers ``CLIPTokenizer`` (saved as vocab.json + merges.txt + tokenizer.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer
    template = CLIPTokenizer()  # CLIP's pipeline around an empty vocabulary
    backend = Tokenizer(models.BPE(end_of_word_suffix='</w>', unk_token='<|endoftext|>'))
    backend.normalizer = template.backend_tokenizer.normalizer
    backend.pre_tokenizer = template.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=['<|startoftext|>', '<|endoftext|>'], end_of_word_suffix='</w>',
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    model = json.loads(backend.to_str())['model']
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(' ')) for m in model['merges']]
    return CLIPTokenizer(vocab=_canonical_ids(model['vocab']), merges=merges)


def _canonical_ids(vocab: Dict[str, int]) -> Dict[str, int]:
    """The trainer numbers the end-of-word symbols in the order a hash map yields the words, so the same tokens get
    other ids from run to run (and the text tower another initialisation). Renumber deterministically, in CLIP's
    layout: byte symbols, the same with '</w>', merged tokens, then the special tokens."""
    special = [t for t in vocab if t.startswith('<|')]
    ordinary = sorted((t for t in vocab if t not in special),
                      key=lambda t: (len(t.removesuffix('</w>')) > 1, t.endswith('</w>'), t))
    return {token: i for i, token in enumerate(ordinary + sorted(special, reverse=True))}  # startoftext first


class TinyCLIP(nn.Module):
    """A timm CLIP image tower and a transformers CLIP text tower with CLIP's learned temperature."""

    def __init__(self, image_model: nn.Module, text_model: nn.Module) -> None:
        super().__init__()
        self.image_model, self.text_model = image_model, text_model
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        tower = self.image_model
        if isinstance(tower, PiVLResNet):  # a CLIP ResNet: its attention pool is the projection
            image = F.normalize(tower.attn_pool(tower.forward_features(pixels)), dim=-1)
        else:
            image = F.normalize(tower.proj(tower.forward_features(pixels)[:, 0]), dim=-1)
        text = F.normalize(self.text_model(input_ids=input_ids, attention_mask=attention_mask).text_embeds, dim=-1)
        return self.logit_scale.exp().clamp(max=100) * image @ text.t()


def clip_loss(logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy, with every pair of the same identity a positive (targets spread evenly)."""
    same = (pids[:, None] == pids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (torch.sum(-targets * logits.log_softmax(dim=1), dim=1).mean()
                  + torch.sum(-targets * logits.t().log_softmax(dim=1), dim=1).mean())


def pretrain(config: PretrainConfig) -> Path:
    """Pretrain (or reuse a finished) tiny CLIP in ``config.output_dir``; returns the folder."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    out = Path(config.output_dir)
    if (out / DONE_FILE).is_file() and not config.overwrite:
        print(f'{out}: a pretrained tiny CLIP is already there (--overwrite to train again)')
        return out
    if out.exists():
        if any(out.iterdir()) and not config.overwrite:
            raise FileExistsError(f'{out}: exists and holds no finished pretraining; pass --overwrite to replace it')
        shutil.rmtree(out)
    set_seed(config.seed)  # torch, numpy and `random` (timm's RandomErasing draws from it)
    data_root = generate_market_layout(out / 'data', train_ids=config.identities, test_ids=1,
                                       images_per_id=config.images_per_id, distractors=0, junk=0, seed=config.seed)
    captions: Dict[str, str] = json.loads((data_root / CAPTIONS_FILE).read_text())
    train = load_reid_dataset('market1501', data_root)['train']
    texts = [captions[str(Path(path).relative_to(data_root))] for path in train['path']]
    tokenizer = build_clip_tokenizer(list(dict.fromkeys(texts)) + prompt_corpus(), config.vocab_size)
    encoded = tokenizer(texts, padding='max_length', max_length=config.max_length, truncation=False,
                        return_tensors='pt')
    if encoded['input_ids'].shape[1] > config.max_length:
        raise ValueError(f'a caption is longer than max_length={config.max_length} tokens')

    image_model = timm.create_model(config.image_model, num_classes=0)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_width, intermediate_size=4 * config.text_width,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_length, projection_dim=image_model.proj_dim,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = TinyCLIP(image_model, CLIPTextModelWithProjection(text_config)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    items = _Captioned(ReIDItems(train, build_transforms(image_model.pretrained_cfg, train=True)))
    loader = DataLoader(items, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        num_workers=config.num_workers, persistent_workers=config.num_workers > 0,
                        generator=torch.Generator().manual_seed(config.seed))
    total = config.epochs * len(loader)
    progress = tqdm(total=total, desc='pretraining a tiny CLIP', disable=None)  # a bar only on a terminal
    step, started, loss, epoch_losses = 0, time.perf_counter(), torch.tensor(float('nan')), []
    for epoch in range(config.epochs):
        running = []
        for pixels, pids, index in loader:
            for group in optimizer.param_groups:  # cosine from lr to 0
                group['lr'] = 0.5 * config.lr * (1 + math.cos(math.pi * step / total))
            logits = model(pixels, encoded['input_ids'][index], encoded['attention_mask'][index])
            loss = clip_loss(logits, pids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f'{loss.item():.3f}', epoch=epoch)
            running.append(loss.item())
        epoch_losses.append(round(sum(running) / len(running), 4))
        if (epoch + 1) % 10 == 0 or epoch + 1 == config.epochs:
            tqdm.write(f'tiny CLIP epoch {epoch + 1}/{config.epochs}: mean loss {epoch_losses[-1]:.3f}')
    progress.close()

    (out / 'image').mkdir(parents=True)
    # timm's CLIP layouts: the ViT's projection is `head` (vit_*_clip), the ResNet's attention pool too (resnet50_clip)
    weights = {('head.weight' if k == 'proj.weight' else 'head.' + k.removeprefix('attn_pool.')
                if k.startswith('attn_pool.') else k): v.contiguous()
               for k, v in image_model.state_dict().items() if not k.startswith(('bnneck', 'head.'))}
    save_file(weights, out / 'image' / 'model.safetensors', metadata={'format': 'pt'})  # timm's CLIP layout
    model.text_model.save_pretrained(out / 'text')
    tokenizer.save_pretrained(out / 'text')
    shutil.rmtree(data_root)  # the images are regenerated from the seed if ever needed
    record = dict(dataclasses.asdict(config), final_loss=loss.item(), epoch_losses=epoch_losses, steps=step,
                  seconds=round(time.perf_counter() - started, 1), image_model_file='image/model.safetensors',
                  text_model_folder='text', note='SYNTHETIC pretraining: a stand-in for CLIP, not a CLIP')
    (out / DONE_FILE).write_text(json.dumps(record, indent=2))
    return out


class _Captioned(Dataset):
    """(pixels, pid, index) items: the index finds the item's tokenised caption."""

    def __init__(self, items: ReIDItems) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        pixels, pid, _ = self.items[index]
        return pixels, pid, index


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(PretrainConfig):
        if field.type in (bool, 'bool'):
            parser.add_argument(f'--{field.name}', action='store_true')
        else:
            kind = {'int': int, 'float': float, 'str': str}.get(field.type, field.type)
            parser.add_argument(f'--{field.name}', type=kind, default=field.default)
    args = parser.parse_args(argv)
    library_bars_only_on_a_terminal()
    try:
        out = pretrain(PretrainConfig(**vars(args)))
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    print(f'tiny CLIP: {out / "image" / "model.safetensors"} (pretrained_file), {out / "text"} (text_model)')
    return out


if __name__ == '__main__':
    main()
