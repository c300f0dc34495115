"""What π-VL's training adds to CLIP-ReID's, measured in one process, contenders interleaved round by round (medians):

1. a stage-2 training step (forward, loss, backward, Adam step) of ``pivl_vit_base_patch16`` and of
   ``pivl_resnet50``: π-VL's (the alignment head - the ViT's feature pyramid on the last patch map, the CNN's C2-C4
   fusion - + the MSE against the text-embedding map) against CLIP-ReID's (no head); the 'linear' head (Table 3's
   B+P) too. Target: <= 1.15x.
2. a stage-1 step on cached image features: the share of the step spent in the CLIP text tower (forward + backward to
   the prompt tokens).

Uses this example's own training modules (``train_clipreid``, ``train_fusion``, ``train_losses``,
``train_prompts``), so it lives beside them; ``benchmarks/bench_pivl.py`` runs it after the inference comparison.

    python examples/train_costs.py                                 # CPU, fp32, batch 8 (text: 64 prompts)
    python examples/train_costs.py --device cuda --dtype bf16 --batch 64
"""
import argparse
import platform
import statistics
import time
from contextlib import nullcontext
from typing import Callable, Dict

import torch

from aaformer_hf.hf import PiVLConfig, PiVLForReID, PiVLResNetConfig, PiVLResNetForReID
from train_clipreid import Stage2Model
from train_fusion import build_alignment_head, parsing_on_grid, text_embedding_map
from train_losses import CLIPReIDLoss, alignment_loss, supcon_loss
from train_prompts import encode_prompt_embeddings


def interleaved(contenders: Dict[str, Callable[[], None]], device: torch.device, rounds: int, repeats: int
                ) -> Dict[str, float]:
    """Median seconds per call of each contender, after one warm-up call, rounds alternating between them."""
    def seconds(fn):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    for fn in contenders.values():
        fn()
    results = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            results[name].append(statistics.median(seconds(fn) for _ in range(repeats)))
    return {name: statistics.median(values) for name, values in results.items()}


def report(title: str, medians: Dict[str, float], baseline: str) -> None:
    print(f'\n{title}')
    for name, seconds in medians.items():
        print(f'  {name:<40} {1000 * seconds:9.1f} ms   {seconds / medians[baseline]:.3f}x')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='fp32', choices=['fp32', 'bf16'], help='bf16 = autocast')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--text_batch', type=int, default=64, help='prompts per stage-1 step')
    parser.add_argument('--classes', type=int, default=751)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--backbones', default='vit,cnn', help='stage-2 steps of: vit, cnn or both (vit,cnn)')
    args = parser.parse_args()
    device = torch.device(args.device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.dtype == 'bf16' else nullcontext
    torch.manual_seed(0)
    print(f'{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.device}, {args.dtype}, '
          f'batch {args.batch}, {torch.get_num_threads()} threads')

    # 1. stage-2 step, each backbone: CLIP-ReID's against π-VL's
    C = args.classes
    x = torch.randn(args.batch, 3, 256, 128, device=device)
    labels = torch.arange(args.batch, device=device) % max(1, args.batch // 4)
    parsing = torch.randint(0, 20, (args.batch, 256, 128), device=device)
    criterion = CLIPReIDLoss()
    backbones = {  # the re-ID model, its text width, the alignment head for a kind
        'vit': (lambda: PiVLForReID(PiVLConfig(num_labels=C)), 512,
                lambda kind: build_alignment_head(kind, 768, 512)),
        'cnn': (lambda: PiVLResNetForReID(PiVLResNetConfig(num_labels=C)), 1024,
                lambda kind: build_alignment_head(kind, 2048, 1024, cnn_widths=(256, 512, 1024))),
    }
    for name in args.backbones.split(','):
        make_model, E, make_head = backbones[name]
        texts = torch.randn(C, E, device=device)
        part_texts = torch.randn(C, 20, E, device=device)

        def stage2(head_kind):
            torch.manual_seed(0)
            head = None if head_kind is None else make_head(head_kind)
            model = Stage2Model(make_model(), head).to(device).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=5e-6)

            def step():
                with autocast():
                    logits, features, aligned = model(x)
                    alignment = None
                    if aligned is not None:
                        cells, _ = parsing_on_grid(parsing, aligned.shape[-2:])
                        alignment = alignment_loss(aligned, text_embedding_map(part_texts, labels, cells))
                    loss = criterion(logits, features, labels, texts, alignment)['loss']
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return step
        medians = interleaved({'CLIP-ReID (no head)': stage2(None), 'B+P (linear head)': stage2('linear'),
                               'π-VL B+P+F (fusion head)': stage2('pyramid')}, device, args.rounds, args.repeats)
        report(f'stage-2 training step, {name} (forward + loss + backward + Adam)', medians, 'CLIP-ReID (no head)')

    # 2. stage-1 step: the text tower's share (ViT-B/16 CLIP's text tower, 512-d)
    E = 512
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    text = CLIPTextModelWithProjection(CLIPTextConfig(projection_dim=E)).to(device).eval().requires_grad_(False)
    context = torch.nn.Parameter(torch.randn(C, 4, 512, device=device) * 0.02)
    template = torch.randn(1, 77, 512, device=device)
    eos = torch.full((args.text_batch,), 10, device=device)
    ids = torch.arange(args.text_batch, device=device) % C
    image_features = torch.randn(args.text_batch, E, device=device)
    cached = torch.randn(args.text_batch, E, device=device, requires_grad=True)  # text features, for the loss alone

    def loss_and_backward(feats):
        loss = supcon_loss(image_features, feats, ids, ids) + supcon_loss(feats, image_features, ids, ids)
        loss.backward()

    def full_step():
        embeddings = template.expand(args.text_batch, -1, -1).clone()
        embeddings[:, 5:9] = context[ids]
        with autocast():
            feats = encode_prompt_embeddings(text, embeddings, eos).float()
        loss_and_backward(feats)
        context.grad = None

    def loss_only():
        loss_and_backward(cached)
        cached.grad = None
    medians = interleaved({'stage-1 step': full_step, 'its loss alone (no text encoder)': loss_only}, device,
                          args.rounds, args.repeats)
    report(f'stage-1 step ({args.text_batch} prompts, cached image features)', medians, 'stage-1 step')
    print(f'  text encoder (forward + backward to the prompt tokens): '
          f'{100 * (1 - medians["its loss alone (no text encoder)"] / medians["stage-1 step"]):.1f} % of the step')


if __name__ == '__main__':
    main()
