"""CLIP-ReID / π-VL training through examples/train.py (--method clipreid | pivl) on SYNTHETIC data with parsing maps
and a tiny offline text tower: both stages end to end, what each stage may change, exact resume inside either stage,
the saved inference model, and bad input."""
import json
import math
import os

import pytest
import timm
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from huggingface_hub import ModelCard
from transformers import AutoImageProcessor, AutoModel

from aaformer_hf.data import load_reid_dataset
from aaformer_hf.data.synthetic import generate_market_layout
from tests.test_hub import hub  # noqa: F401  (the fixture)
from tests.tiny_text import save_text_side
from train import TrainConfig, build_model, train
from train_clipreid import TwoStageModels, fix_text_features, stage1, stage2_losses
from train_losses import CLIPReIDLoss


@pytest.fixture(scope='module')
def parsed_root(tmp_path_factory):
    """24 training and 12 test identities with parsing maps."""
    return generate_market_layout(tmp_path_factory.mktemp('pivl') / 'market', train_ids=24, test_ids=12,
                                  images_per_id=6, distractors=4, junk=2, parsing=True, seed=3)


@pytest.fixture(scope='module')
def text_folder(tmp_path_factory):
    return save_text_side(tmp_path_factory.mktemp('text') / 'tiny-clip-text', projection_dim=32)


def tiny(root, text, out, **overrides):
    values = dict(method='pivl', model='pivl_vit_tiny', pretrained=False, dataset='market1501', data_root=str(root),
                  text_model=str(text), output_dir=str(out), stage1_epochs=2, stage1_part_epochs=1, epochs=2,
                  warmup_epochs=1, lr=1e-3, batch_size=16, stage1_batch_size=16, num_instances=4, eval_every=100,
                  num_workers=0, eval_batch_size=64, checkpointing_steps=None)
    values.update(overrides)
    return values


def test_two_stage_run_learns_and_saves_only_the_inference_model(tmp_path, parsed_root, text_folder):
    untrained = train(TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'untrained', eval_only=True)))
    out = tmp_path / 'pivl'
    # 8 epochs: with CLIP-ReID's mean = std = 0.5 the random-init tiny tower learns slower than it did with OpenAI
    # CLIP's statistics (measured on this set: 4 epochs +0.07 mAP, 8 epochs +0.12; OpenAI's gave +0.22 in 4)
    trained = train(TrainConfig(**tiny(parsed_root, text_folder, out, epochs=8)))
    assert trained['mAP'] > untrained['mAP'] + 0.1, (untrained['mAP'], trained['mAP'])
    # stage 1: 3 epochs of 24 identities x 2 groups of 4 / 4 identities per batch
    assert trained['stage1_step'] == 3 * 12 and trained['method'] == 'pivl'
    weights = load_file(out / 'model' / 'model.safetensors')
    assert not [k for k in weights if 'alignment' in k or 'prompt' in k or 'text' in k or 'context' in k]
    assert set(weights) == set(timm.create_model('pivl_vit_tiny', num_classes=24).state_dict())
    model = AutoModel.from_pretrained(out / 'model').eval()
    assert model(torch.randn(2, 3, 256, 128)).pooler_output.shape == (2, 64 + 32)
    texts = load_file(out / 'text_features.safetensors')
    assert texts['identity'].shape == (24, 32) and texts['parts'].shape == (24, 20, 32)
    # identity-aware part prompts differ between identities (label-only ones would not)
    assert not torch.allclose(texts['parts'][0], texts['parts'][1])


def test_cnn_two_stage_run_learns_and_saves_only_the_inference_model(tmp_path, parsed_root, text_folder):
    """π-VL's CNN (Table 2's CNN rows, Table 3 B+P+F): CLIP ResNet, the C2-C4 fusion head, both stages."""
    cnn = dict(model='pivl_resnet_tiny', model_args={'proj_dim': 32})
    untrained = train(TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'untrained', eval_only=True, **cnn)))
    out = tmp_path / 'cnn'
    # measured on this set: 0.21 mAP untrained, 0.78 after 4 epochs
    trained = train(TrainConfig(**tiny(parsed_root, text_folder, out, epochs=4, pivl_ablation='B+P+F', **cnn)))
    assert trained['mAP'] > untrained['mAP'] + 0.3, (untrained['mAP'], trained['mAP'])
    weights = load_file(out / 'model' / 'model.safetensors')
    assert set(weights) == set(timm.create_model('pivl_resnet_tiny', proj_dim=32, num_classes=24).state_dict())
    model = AutoModel.from_pretrained(out / 'model').eval()
    assert type(model).__name__ == 'PiVLResNetModel'
    assert model(torch.randn(2, 3, 256, 128)).pooler_output.shape == (2, 256 + 32)
    assert list(AutoImageProcessor.from_pretrained(out / 'model').image_mean) == [0.485, 0.456, 0.406]


def test_cnn_stage_features_are_clipreids(parsed_root, text_folder):
    """Stage 2 of the CNN: CLIP-ReID's three triplet features (stage 3 pooled, stage 4 pooled, the attention pool's
    projection) and the fusion over C2-C4 at stride 8; stage 1's cache: the attention pool's output for its mean
    token and for every cell as query - checked against attention written out here (not timm's fused kernel)."""
    from aaformer_hf import PiVLResNetConfig, PiVLResNetForReID
    from train_clipreid import Stage2Model, image_features
    from train_fusion import CNNHierarchicalFusion

    torch.manual_seed(0)
    model = PiVLResNetForReID(PiVLResNetConfig(depths=(1, 1, 1, 1), hidden_sizes=(32, 64, 128, 256),
                                               stem_sizes=(4, 4, 8), projection_dim=32, num_labels=5)).eval()
    x = torch.randn(2, 3, 256, 128)
    stage2 = Stage2Model(model, CNNHierarchicalFusion((32, 64, 128), 32))
    with torch.no_grad():
        logits, features, aligned = stage2(x)
    assert logits.shape == (2, 2, 5) and [f.shape[1] for f in features] == [128, 256, 32]
    assert aligned.shape == (2, 32, 32, 16)  # stride 8 at 256x128
    trunk = model.timm_model
    with torch.no_grad():
        trunk.attn_pool.q.weight.mul_(20)  # attention far from uniform, so a wrong query row would show
        image, cells, grid = image_features(trunk, x, with_cells=True)
        pool, last = trunk.attn_pool, trunk.forward_features(x)
        tokens = last.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + pool.pos_embed  # (B, 1 + 128, C)
        heads = lambda t: t.reshape(2, 129, pool.num_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = heads(pool.q(tokens)), heads(pool.k(tokens)), heads(pool.v(tokens))
        attn = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
        every = pool.proj((attn @ v).transpose(1, 2).reshape(2, 129, -1))
    assert grid == (16, 8) and cells.shape == (2, 128, 32)
    torch.testing.assert_close(image, every[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cells, every[:, 1:], rtol=1e-5, atol=1e-5)
    assert pool.pool_type == 'token'  # left as it was


def test_label_only_part_prompts_and_clipreid_rows_run(tmp_path, parsed_root, text_folder):
    """Table 3's B+H: parsing-label prompts, the same for every identity, nothing to tune after the identity epochs.
    B (= --method clipreid) writes no part prompts."""
    summary = train(TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'bh', pivl_ablation='B+H', epochs=1,
                                       stage1_part_epochs=None)))
    assert summary['stage1_step'] == 2 * 12 and summary['pivl_ablation'] == 'B+H'
    parts = load_file(tmp_path / 'bh' / 'text_features.safetensors')['parts']
    torch.testing.assert_close(parts[0], parts[5])
    train(TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'b', method='clipreid', stage1_part_epochs=None,
                             epochs=1)))
    assert set(load_file(tmp_path / 'b' / 'text_features.safetensors')) == {'identity'}


def _two_stage(config):
    data = load_reid_dataset('market1501', config.data_root)
    model, pretrained_cfg, family = build_model(config, 24)
    models = TwoStageModels.build(config, model, 24)
    if models.parsing:
        from aaformer_hf.data.parsing import add_parsing_column
        data['train'] = add_parsing_column(data['train'], config.data_root)
    accelerator = Accelerator(cpu=True)
    models.prepare(accelerator)
    return models, data, pretrained_cfg, accelerator


def _stage1_state():
    return {'epoch': 0, 'step_in_epoch': 0, 'global_step': 0, 'best': None, 'stage': 1, 'stage1_epoch': 0,
            'stage1_step_in_epoch': 0, 'stage1_step': 0}


def test_stage1_tunes_only_the_context_and_stage2_keeps_the_text_fixed(tmp_path, parsed_root, text_folder):
    config = TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'unit', stage1_epochs=1, stage1_part_epochs=1))
    models, data, pretrained_cfg, accelerator = _two_stage(config)
    snapshot = lambda module: {k: v.clone() for k, v in module.state_dict().items()}  # noqa: E731
    image_before, text_before = snapshot(models.trainable), snapshot(models.text_model)
    context_before = models.prompt_learner.context.detach().clone()
    state = _stage1_state()
    stage1(models, accelerator, config, data, pretrained_cfg, state, tmp_path, 0)
    text_features, part_text_features = fix_text_features(models, accelerator, config, 24, tmp_path)
    assert state['stage1_step'] == 24 and not (tmp_path / 'checkpoints').exists()
    assert all(torch.equal(v, image_before[k]) for k, v in models.trainable.state_dict().items())
    assert all(torch.equal(v, text_before[k]) for k, v in models.text_model.state_dict().items())
    moved = (models.prompt_learner.context.detach() - context_before).abs().amax(dim=(1, 2))
    assert bool((moved > 0).all())  # every identity was in some batch
    fixed = text_features.clone()
    # stage 2: the loss reaches the image tower and the head, never the text side
    from aaformer_hf.data import build_transforms, train_loader
    loader, _ = train_loader(data['train'], build_transforms(pretrained_cfg, train=True), 16, 4, 0, 0, parsing=True)
    batch = next(iter(loader))
    losses = stage2_losses(models.trainable, CLIPReIDLoss(), batch, text_features, part_text_features, config,
                           models.uses_cameras)
    assert set(losses) == {'loss', 'id_loss', 'triplet_loss', 'i2t_loss', 'align_loss'}
    losses['loss'].backward()
    assert models.trainable.alignment_head.out.weight.grad is not None
    assert models.trainable.reid_model.timm_model.patch_embed.proj.weight.grad is not None
    assert all(p.grad is None for p in models.text_model.parameters()) and models.prompt_learner.context.grad is None
    assert not text_features.requires_grad and torch.equal(text_features, fixed)


@pytest.mark.parametrize('point', ['stage1_step_5', 'step_5'])
def test_resume_inside_either_stage_is_exact(tmp_path, parsed_root, text_folder, point):
    """A run resumed from a checkpoint in stage 1 (mid-epoch) or in stage 2 ends with the same weights."""
    common = dict(checkpointing_steps='5', checkpoints_total_limit=None, stage1_epochs=1, epochs=1)
    whole = train(TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'whole', **common)))
    checkpoint = tmp_path / 'whole' / 'checkpoints' / point
    state = json.loads((checkpoint / 'trainer_state.json').read_text())
    assert state['stage'] == (1 if point.startswith('stage1') else 2)
    resumed = train(TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'resumed', **common,
                                       resume_from_checkpoint=str(checkpoint))))
    assert resumed['mAP'] == whole['mAP']
    a, b = (load_file(tmp_path / run / 'model' / 'model.safetensors') for run in ('whole', 'resumed'))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_bad_input_is_named_before_training(tmp_path, parsed_root, text_folder):
    bare = generate_market_layout(tmp_path / 'bare', train_ids=4, test_ids=2, seed=1)  # no parsing maps
    from aaformer_hf.data import ReIDDatasetError
    with pytest.raises(ReIDDatasetError, match=r'parsing map'):
        train(TrainConfig(**tiny(bare, text_folder, tmp_path / 'out')))
    with pytest.raises(ValueError, match='--method pivl does not train .aaformer_tiny.'):
        train(TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'out', model='aaformer_tiny')))
    with pytest.raises(ValueError, match='--method aaformer does not train .pivl_vit_tiny.'):
        train(TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'out', method='aaformer',
                                 stage1_epochs=None, stage1_part_epochs=None)))
    wide = save_text_side(tmp_path / 'wide-text', projection_dim=48)
    with pytest.raises(ValueError, match='its projection is 48-d, the image tower.s 32-d'):
        train(TrainConfig(**tiny(parsed_root, wide, tmp_path / 'out')))
    with pytest.raises(ValueError, match="pivl_ablation 'B\\+H' sets alignment_head='linear'"):
        TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'out', pivl_ablation='B+H', alignment_head='pyramid'))
    with pytest.raises(ValueError, match='both are used or neither'):
        TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'out', part_prompts='identity', alignment_head='off'))
    assert not (tmp_path / 'out').exists()


def test_method_recipes_fill_the_fields_left_unset():
    clip = TrainConfig(data_root='x', method='clipreid')
    assert (clip.model, clip.optimizer, clip.lr, clip.epochs, clip.lr_schedule, clip.id_loss_weight) == (
        'pivl_vit_base_patch16', 'adam', 5e-6, 60, 'step', 0.25)
    assert (clip.stage1_epochs, clip.stage1_part_epochs, clip.part_prompts, clip.stage1_sampling) == (
        120, 0, 'off', 'shuffle')
    pivl = TrainConfig(data_root='x', method='pivl', lr=1e-5)
    assert (pivl.stage1_epochs, pivl.stage1_part_epochs, pivl.alignment_head, pivl.lr) == (60, 20, 'pyramid', 1e-5)
    assert TrainConfig(data_root='x').optimizer == 'momentum'
    assert (clip.lr_update, TrainConfig(data_root='x').lr_update) == ('epoch', 'step')
    # Table 3's B is CLIP-ReID: its stage 1 unless told otherwise (one YAML may set the epochs for every row)
    row_b = TrainConfig(data_root='x', method='pivl', pivl_ablation='B')
    assert (row_b.stage1_epochs, row_b.stage1_sampling, row_b.stage1_part_epochs) == (120, 'shuffle', 0)
    assert TrainConfig(data_root='x', method='pivl', pivl_ablation='B', stage1_epochs=10).stage1_epochs == 10
    assert TrainConfig(data_root='x', method='pivl', pivl_ablation='B+P').stage1_epochs == 60


def per_epoch_rates(lr: float, epochs: int, **schedule) -> list:
    """The rate each epoch runs at (the first epoch first), as the trainer's loops drive the scheduler."""
    from train_utils import make_scheduler

    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(optimizer, 7, epochs=epochs, per_epoch=True, **schedule)
    rates = []
    for epoch in range(epochs):
        scheduler.step(epoch + 1)  # at the start of the epoch, as both loops do
        for step in range(7):  # the loops' per-step calls change nothing in this unit
            scheduler.step_update(epoch * 7 + step + 1)
        rates.append(optimizer.param_groups[0]['lr'])
    return rates


def test_stage2_rates_are_clipreids_per_epoch_table():
    """CLIP-ReID's WarmupMultiStepLR (base 5e-6, warm-up factor 0.1 over 10 iterations, x0.1 at 30 and 50), stepped
    once at the start of each epoch of ``range(1, 61)``: epoch n (1-based) runs at base x (0.1 (1 - n/10) + n/10)
    while n < 10, then base x 0.1^(milestones <= n). The rates written out by hand:"""
    clip = TrainConfig(data_root='x', method='clipreid')
    rates = per_epoch_rates(clip.lr, clip.epochs, schedule=clip.lr_schedule, warmup_epochs=clip.warmup_epochs,
                            warmup_lr=clip.warmup_lr, decay_epochs=clip.lr_decay_epochs,
                            decay_factor=clip.lr_decay_factor)
    first_twelve = [9.5e-7, 1.4e-6, 1.85e-6, 2.3e-6, 2.75e-6, 3.2e-6, 3.65e-6, 4.1e-6, 4.55e-6, 5e-6, 5e-6, 5e-6]
    assert rates[:12] == pytest.approx(first_twelve, rel=1e-9)
    # the 29th epoch still at the base rate, the 30th decayed; the 49th at 5e-7, the 50th and on at 5e-8
    assert rates[27:31] == pytest.approx([5e-6, 5e-6, 5e-7, 5e-7], rel=1e-9)
    assert rates[47:51] == pytest.approx([5e-7, 5e-7, 5e-8, 5e-8], rel=1e-9) and rates[-1] == pytest.approx(5e-8)


def test_stage1_rates_are_clipreids_per_epoch_cosine():
    """CLIP-ReID's stage 1: timm's CosineLRScheduler (t_initial = the stage-1 epochs, lr_min 1e-6, warm-up 5 epochs
    from 1e-5 with no warm-up prefix), stepped with the 1-based epoch at its start: epoch n < 5 runs at
    1e-5 + n (3.5e-4 - 1e-5) / 5, later ones at 1e-6 + (3.5e-4 - 1e-6) (1 + cos(pi n / 120)) / 2."""
    config = TrainConfig(data_root='x', method='clipreid')
    rates = per_epoch_rates(config.stage1_lr, config.stage1_epochs, schedule='cosine',
                            warmup_epochs=config.stage1_warmup_epochs, warmup_lr=config.stage1_warmup_lr,
                            min_lr=config.stage1_min_lr, cosine_after_warmup=False)
    assert rates[:4] == pytest.approx([7.8e-5, 1.46e-4, 2.14e-4, 2.82e-4], rel=1e-9)  # the warm-up, by hand
    cosine = lambda n: 1e-6 + (3.5e-4 - 1e-6) * (1 + math.cos(math.pi * n / 120)) / 2  # noqa: E731
    assert rates[4:12] == pytest.approx([cosine(n) for n in range(5, 13)], rel=1e-9)
    assert rates[4] == pytest.approx(3.4854e-4, rel=1e-4)  # epoch 5: just under the base, the cosine already bent
    assert rates[59] == pytest.approx(cosine(60), rel=1e-9) and rates[59] == pytest.approx(1.755e-4, rel=1e-3)
    assert rates[118] == pytest.approx(cosine(119), rel=1e-9)
    assert rates[119] == pytest.approx(1e-6)  # epoch 120 = t_initial: the cycle is over, the minimum


def test_cnn_recipe_is_clipreids_cnn_config():
    """With a CLIP ResNet the two-stage methods take CLIP-ReID's CNN config (configs/person/cnn_clipreid.yml) and
    π-VL's CNN schedule: stage 2 Adam 3.5e-4, weight decay 5e-4 (biases too, at 2x the rate), ID weight 1; stage 1 60
    epochs for CLIP-ReID, and for Table 3's B row."""
    cnn = TrainConfig(data_root='x', method='clipreid', model='pivl_resnet50')
    assert (cnn.lr, cnn.epochs, cnn.weight_decay, cnn.id_loss_weight, cnn.lr_decay_epochs, cnn.stage1_epochs) == (
        3.5e-4, 120, 5e-4, 1.0, [40, 70], 60)
    assert (cnn.weight_decay_scope, cnn.bias_lr_factor, cnn.stage1_sampling) == ('all', 2.0, 'shuffle')
    pivl = TrainConfig(data_root='x', method='pivl', model='pivl_resnet_tiny')
    assert (pivl.lr, pivl.epochs, pivl.stage1_epochs, pivl.stage1_part_epochs) == (3.5e-4, 120, 60, 20)
    assert TrainConfig(data_root='x', method='pivl', model='pivl_resnet50', pivl_ablation='B').stage1_epochs == 60
    vit = TrainConfig(data_root='x', method='clipreid')  # the ViT's are unchanged
    assert (vit.lr, vit.weight_decay, vit.lr_decay_epochs) == (5e-6, 1e-4, [30, 50])
    # CLIP-ReID's WarmupMultiStepLR with the CNN's values (warm-up factor 0.01 over 10, x0.1 at 40 and 70), the
    # n-th epoch (1-based) at 3.5e-4 x (0.01 (1 - n/10) + n/10) while n < 10: written out by hand
    rates = per_epoch_rates(cnn.lr, cnn.epochs, schedule=cnn.lr_schedule, warmup_epochs=cnn.warmup_epochs,
                            warmup_lr=cnn.warmup_lr, decay_epochs=cnn.lr_decay_epochs,
                            decay_factor=cnn.lr_decay_factor)
    first_twelve = [3.815e-5, 7.28e-5, 1.0745e-4, 1.421e-4, 1.7675e-4, 2.114e-4, 2.4605e-4, 2.807e-4, 3.1535e-4,
                    3.5e-4, 3.5e-4, 3.5e-4]
    assert rates[:12] == pytest.approx(first_twelve, rel=1e-9)
    assert rates[37:41] == pytest.approx([3.5e-4, 3.5e-4, 3.5e-5, 3.5e-5], rel=1e-9)
    assert rates[67:71] == pytest.approx([3.5e-5, 3.5e-5, 3.5e-6, 3.5e-6], rel=1e-9) and rates[-1] == \
        pytest.approx(3.5e-6)


def test_runs_report_side_by_side(tmp_path):
    from report_runs import table
    for name, value in (('B', 0.5), ('B+P+F', 0.625)):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'metrics.json').write_text(json.dumps(
            dict(rank1=value, rank5=0.9, rank10=1.0, mAP=value / 2, mINP=0.1)))
    assert table([f'B={tmp_path / "B"}', str(tmp_path / 'B+P+F')]).splitlines() == [
        '| run | R1 | R5 | R10 | mAP | mINP |', '|---|---:|---:|---:|---:|---:|',
        '| B | 50.0 | 90.0 | 100.0 | 25.0 | 10.0 |', '| B+P+F | 62.5 | 90.0 | 100.0 | 31.2 | 10.0 |']
    with pytest.raises(FileNotFoundError, match='no metrics.json'):
        table([str(tmp_path / 'missing')])
    # several seeds of one row: mean (min-max) and how many runs
    (tmp_path / 'B2').mkdir()
    (tmp_path / 'B2' / 'metrics.json').write_text(json.dumps(dict(rank1=0.75, rank5=0.9, rank10=1.0, mAP=0.5,
                                                                  mINP=0.2)))
    assert table([f'B={tmp_path / "B"},{tmp_path / "B2"}', f'P={tmp_path / "B+P+F"}']).splitlines()[2:] == [
        '| B | 62.5 (50.0-75.0) | 90.0 (90.0-90.0) | 100.0 (100.0-100.0) | 37.5 (25.0-50.0) | 15.0 (10.0-20.0) | 2 |',
        '| P | 62.5 | 90.0 | 100.0 | 31.2 | 10.0 | 1 |']


def test_table5_student_learns_from_the_teachers_prompts_and_saves_a_plain_timm_backbone(tmp_path, parsed_root,
                                                                                          text_folder, hub):
    """π-VL Table 5: stage 1 with the CLIP teacher, stage 2 trains a timm CNN student (its own head and
    preprocessing); the saved folder is the bare backbone, loadable by timm and transformers alike, and
    --push_to_hub publishes it in timm's format with a card."""
    student = dict(student_model='test_efficientnet', student_pretrained=False, lr=3e-3)
    untrained = train(TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'untrained', eval_only=True,
                                         **student)))
    out = tmp_path / 'student'
    trained = train(TrainConfig(**tiny(parsed_root, text_folder, out, epochs=4, push_to_hub=True,
                                       hub_model_id='org/student', **student)))
    assert trained['mAP'] > untrained['mAP'] + 0.05, (untrained['mAP'], trained['mAP'])
    assert trained['student_model'] == 'test_efficientnet' and trained['stage1_step'] == 3 * 12
    saved = json.loads((out / 'model' / 'config.json').read_text())
    assert saved['architecture'] == 'test_efficientnet' and saved['num_classes'] == 0
    assert 'num_classes' not in saved['model_args']  # transformers' timm wrapper fails on a duplicate
    reference = timm.create_model('test_efficientnet')
    # the student's own statistics at the teacher's input size, resized without a crop
    assert saved['pretrained_cfg']['mean'] == list(reference.pretrained_cfg['mean']) != [0.5, 0.5, 0.5]
    assert saved['pretrained_cfg']['input_size'] == [3, 256, 128] and saved['pretrained_cfg']['crop_pct'] == 1.0
    reference.reset_classifier(0)
    weights = load_file(out / 'model' / 'model.safetensors')
    assert set(weights) == set(reference.state_dict())  # no head, projection, classifier or alignment keys
    from_timm = timm.create_model(f'local-dir:{out / "model"}', pretrained=True).eval()
    from_hf = AutoModel.from_pretrained(out / 'model').eval()
    pixels = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        torch.testing.assert_close(from_hf(pixel_values=pixels).pooler_output, from_timm(pixels))
    assert from_timm(pixels).shape == (2, reference.num_features)
    assert not (out / 'model' / 'preprocessor_config.json').exists()  # timm's config carries the preprocessing
    # the pushed repo: timm's files and a card, loading in both libraries like the folder (no aaformer-hf code)
    upload, = hub.uploads
    assert upload['repo_id'] == 'org/student' and upload['files'] == ['README.md', 'config.json', 'model.safetensors']
    pushed = 'best_model' if (out / 'best_model').is_dir() else 'model'
    local = timm.create_model(f'local-dir:{out / pushed}', pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(timm.create_model('hf-hub:org/student', pretrained=True).eval()(pixels),
                                   local(pixels), rtol=0, atol=0)
        torch.testing.assert_close(AutoModel.from_pretrained('org/student').eval()(pixel_values=pixels).pooler_output,
                                   local(pixels), rtol=0, atol=0)
    card = ModelCard.load(hub.cache / 'models--org--student' / 'snapshots' / upload['sha'] / 'README.md')
    assert card.data.library_name == 'timm' and 'test_efficientnet' in card.text
    assert ("π-VL's identity-aware part prompts and the hierarchical-fusion alignment, from the teacher "
            "pivl_vit_tiny" in card.text)
    assert 'import aaformer_hf' not in card.text  # the student needs only timm
    measured = {r.metric_type: r.metric_value for r in card.data.eval_results}
    expected = trained['best'] if pushed == 'best_model' else trained
    assert measured['mAP'] == round(100 * expected['mAP'], 2)


def test_table5_student_is_what_stage2_optimises(tmp_path, parsed_root, text_folder):
    config = TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'unit', student_model='test_efficientnet',
                                student_pretrained=False))
    models, data, pretrained_cfg, accelerator = _two_stage(config)
    assert models.reid_model is not models.teacher and models.input_cfg['input_size'] == pretrained_cfg['input_size']
    optimised = {id(p) for p in models.trainable.parameters()}  # what train_two_stage gives the optimiser
    assert not optimised & {id(p) for p in models.teacher.parameters()}
    assert {id(p) for p in models.reid_model.parameters()} <= optimised
    assert {id(p) for p in models.trainable.alignment_head.parameters()} <= optimised
    stage1(models, accelerator, config, data, pretrained_cfg, _stage1_state(), tmp_path, 0)
    text_features, part_text_features = fix_text_features(models, accelerator, config, 24, tmp_path)
    from aaformer_hf.data import build_transforms, train_loader
    loader, _ = train_loader(data['train'], build_transforms(models.input_cfg, train=True), 16, 4, 0, 0, parsing=True)
    losses = stage2_losses(models.trainable, CLIPReIDLoss(), next(iter(loader)), text_features, part_text_features,
                           config, models.uses_cameras)
    assert set(losses) == {'loss', 'id_loss', 'triplet_loss', 'i2t_loss', 'align_loss'}
    losses['loss'].backward()
    assert models.reid_model.backbone.conv_stem.weight.grad is not None
    assert models.reid_model.text_projection.weight.grad is not None
    assert all(p.grad is None for p in models.teacher.parameters())
    with pytest.raises(ValueError, match='student_model .Table 5. is a stage-2 option'):
        TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'x', method='aaformer', stage1_epochs=None,
                           stage1_part_epochs=None, student_model='test_efficientnet'))


def test_two_processes_share_one_prompt_learner(tmp_path, parsed_root, text_folder):
    """Both stages in two CPU processes: the prompt tokens are one model (DDP averages their gradients), so every
    process fixes the same text features for stage 2; queries are evaluated once each."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / 'ddp'
    script = tmp_path / 'hooked_train.py'
    script.write_text(
        'import sys\n'
        f'sys.path.insert(0, {str(root / "examples")!r})\n'
        'from safetensors.torch import save_file\n'
        'import train, train_clipreid\n'
        'fix = train_clipreid.fix_text_features\n'
        'def hooked(models, accelerator, config, num_classes, output_dir):\n'
        '    text, parts = fix(models, accelerator, config, num_classes, output_dir)\n'
        '    save_file({"identity": text.cpu().contiguous()},\n'
        '              f"{output_dir}/rank{accelerator.process_index}.safetensors")\n'
        '    return text, parts\n'
        'train_clipreid.fix_text_features = hooked\n'
        'train.main()\n')
    values = {k: v for k, v in tiny(parsed_root, text_folder, out, epochs=1).items() if v is not None}
    flags = [item for key, value in values.items() for item in (f'--{key}', str(value))]
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                           '29533', str(script), *flags], cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'ACCELERATE_USE_CPU': 'true', 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert 'it/s]' not in done.stderr + done.stdout  # a log gets no progress-bar frames (ours or the libraries')
    metrics = json.loads((out / 'metrics.json').read_text())
    # stage 1: 24 identities x 2 groups of 4 images, 16 per step over both processes, for 3 epochs
    assert metrics['processes'] == 2 and metrics['num_valid_queries'] == 12 and metrics['stage1_step'] == 3 * 12
    first, second = (load_file(out / f'rank{rank}.safetensors')['identity'] for rank in (0, 1))
    assert torch.equal(first, second)
    assert not torch.allclose(first[0], first[1])  # tuned per identity, not a constant


def test_both_loops_set_each_epochs_rate_from_its_1_based_number(tmp_path, parsed_root, text_folder, monkeypatch):
    """The loops drive the schedules as CLIP-ReID's code does: once at the start of each epoch, counted from 1."""
    import train_clipreid
    import train_utils
    calls, real = [], train_utils.make_scheduler

    def recording(optimizer, *args, **kwargs):
        scheduler = real(optimizer, *args, **kwargs)
        stage, step = ('stage 1' if kwargs.get('cosine_after_warmup') is False else 'stage 2'), scheduler.step

        def step_and_record(epoch, metric=None):
            step(epoch, metric)
            calls.append((stage, epoch, optimizer.param_groups[0]['lr']))
        scheduler.step = step_and_record
        return scheduler
    monkeypatch.setattr(train_clipreid, 'make_scheduler', recording)  # stage 1
    monkeypatch.setattr(train_utils, 'make_scheduler', recording)  # stage 2, through scheduler_from_config
    train(TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'run', method='clipreid', stage1_part_epochs=None,
                             stage1_epochs=2, epochs=2, warmup_epochs=1, warmup_lr=1e-4)))
    # stage 1: warm-up of 5 epochs from 1e-5 to 3.5e-4, epochs 1 and 2; stage 2: a 1-epoch warm-up is over at epoch 1
    assert [(stage, epoch) for stage, epoch, _ in calls] == [('stage 1', 1), ('stage 1', 2), ('stage 2', 1),
                                                             ('stage 2', 2)]
    assert [rate for *_, rate in calls] == pytest.approx([7.8e-5, 1.46e-4, 1e-3, 1e-3], rel=1e-9)


def test_stage1_cache_skips_the_camera_embedding(tmp_path, parsed_root, text_folder):
    """CLIP-ReID's stage-1 image features come without SIE: a model with a camera embedding caches what the same
    model gives with the camera embedding left out (and not what it gives with the images' cameras)."""
    from accelerate import Accelerator
    from aaformer_hf.data import build_transforms, eval_loader
    from train_clipreid import cache_image_features

    config = TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'sie', method='clipreid', stage1_part_epochs=None,
                                model_args={'num_cameras': 6}))
    data = load_reid_dataset('market1501', config.data_root)
    model, pretrained_cfg, _ = build_model(config, 24)
    with torch.no_grad():
        model.timm_model.camera_embed.normal_()  # cameras that change the features
    cache = cache_image_features(model, Accelerator(cpu=True), config, data['train'], pretrained_cfg, 0, False)
    pixels, _, cams = next(iter(eval_loader(data['train'], build_transforms(pretrained_cfg, train=False), 8, 0)))[:3]
    trunk = model.timm_model.eval()
    # the reference: the same weights in a model built without a camera embedding
    no_sie = timm.create_model('pivl_vit_tiny', num_classes=24).eval()
    no_sie.load_state_dict({k: v for k, v in trunk.state_dict().items() if k != 'camera_embed'})
    with torch.no_grad():
        plain = no_sie.proj(no_sie.forward_tokens(pixels)[0][:, 0])
        with_cameras = trunk.proj(trunk.forward_tokens(pixels, camera_ids=cams)[0][:, 0])
    torch.testing.assert_close(cache['image'][:8], plain)
    assert not torch.allclose(cache['image'][:8], with_cameras)
    with pytest.raises(ValueError, match='camera_ids given together with without_cameras'):
        trunk.forward_tokens(pixels, camera_ids=cams, without_cameras=True)
    with pytest.raises(ValueError, match='pass camera_ids'):  # leaving SIE out is never silent
        trunk.forward_tokens(pixels)


def test_stage2_parameter_groups_are_clipreids(tmp_path, parsed_root, text_folder):
    """CLIP-ReID's make_optimizer_prompt: one group per trainable parameter, every one decays at 1e-4 (biases with
    WEIGHT_DECAY_BIAS, the same value), and a parameter whose name contains 'bias' runs at BIAS_LR_FACTOR = 2 x the
    rate, through the warm-up too. AAformer keeps timm's groups (no decay on biases and norms)."""
    from train_utils import make_optimizer, make_scheduler

    config = TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'groups', method='clipreid',
                                stage1_part_epochs=None, lr=5e-6))
    assert (config.weight_decay_scope, config.bias_lr_factor) == ('all', 2.0)
    model, _, _ = build_model(config, 24)
    models = TwoStageModels.build(config, model, 24)
    named = [(n, p) for n, p in models.trainable.named_parameters() if p.requires_grad]
    optimizer = make_optimizer(models.trainable, config)
    scheduler = make_scheduler(optimizer, 5, schedule='step', epochs=60, warmup_epochs=10, warmup_lr=5e-7,
                               decay_epochs=[30, 50], per_epoch=True)
    scheduler.step(1)  # the first epoch: 5e-6 x 0.19
    by_param = {id(p): g for g in optimizer.param_groups for p in g['params']}
    assert len(optimizer.param_groups) == len(named)
    for name, parameter in named:
        group = by_param[id(parameter)]
        assert group['weight_decay'] == 1e-4, name
        assert group['lr'] == pytest.approx((2 if 'bias' in name else 1) * 9.5e-7, rel=1e-9), name
    assert any('bias' in n for n, _ in named) and any('norm' in n and 'weight' in n for n, _ in named)
    aaformer = TrainConfig(data_root='x')
    assert (aaformer.weight_decay_scope, aaformer.bias_lr_factor) == ('weights', 1.0)
    with pytest.raises(ValueError, match='bias_lr_factor is for weight_decay_scope all'):
        make_optimizer(model, TrainConfig(data_root='x', bias_lr_factor=2.0))


def test_clipreid_stage1_walks_every_cached_feature_once_an_epoch(tmp_path, parsed_root, text_folder, monkeypatch):
    """CLIP-ReID's stage 1: each epoch all cached features in a random order, in batches of stage1_batch_size with
    the remainder last (144 training images, batches of 50: 50, 50, 44); π-VL's keeps identities x 4."""
    import train_clipreid
    seen, real = [], train_clipreid.stage1_losses

    def recording(models, accelerator, config, cache, index, with_parts):
        seen.append(index.tolist())
        return real(models, accelerator, config, cache, index, with_parts)
    monkeypatch.setattr(train_clipreid, 'stage1_losses', recording)
    summary = train(TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'run', method='clipreid', stage1_epochs=2,
                                       stage1_part_epochs=None, stage1_batch_size=50, epochs=1)))
    assert [len(batch) for batch in seen] == [50, 50, 44] * 2 and summary['stage1_step'] == 6
    for epoch in (seen[:3], seen[3:]):
        assert sorted(i for batch in epoch for i in batch) == list(range(144))  # every feature exactly once
    assert seen[:3] != seen[3:]  # shuffled anew each epoch
    assert TrainConfig(**tiny(parsed_root, text_folder, tmp_path / 'x')).stage1_sampling == 'pk'  # π-VL's
