"""Training: the schedule by hand, bad input before training, a tiny end-to-end run that learns, exact
kill-and-resume (with a different number of loader workers), two CPU processes, and the saved model's front doors."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from aaformer_hf.data.synthetic import generate_market_layout
import train as trainer
from train import TrainConfig, parse_config, train
from train_utils import make_scheduler

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = str(ROOT / 'examples' / 'train.py')


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
    """A small SYNTHETIC Market-layout set: 24 training identities, 12 test identities."""
    return generate_market_layout(tmp_path_factory.mktemp('synthetic') / 'market', train_ids=24, test_ids=12,
                                  images_per_id=6, distractors=4, junk=2, seed=3)


def tiny(root, out, **overrides):
    values = dict(model='aaformer_tiny', pretrained=False, dataset='market1501', data_root=str(root),
                  output_dir=str(out), epochs=3, warmup_epochs=1, batch_size=16, num_instances=4, eval_every=100,
                  num_workers=0, eval_batch_size=64, checkpointing_steps=None)
    values.update(overrides)
    return values


def flags(values):
    out = []
    for key, value in values.items():
        out += [f'--{key}', json.dumps(value) if isinstance(value, dict) else str(value)]
    return out


def scheduled_rates(steps_per_epoch: int, lr: float, **schedule) -> list:
    """The rate of every optimiser step (and the one after the last) from the trainer's scheduler."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(optimizer, steps_per_epoch, **schedule)
    rates = [optimizer.param_groups[0]['lr']]  # step 0, as make_scheduler leaves it
    for step in range(1, schedule['epochs'] * steps_per_epoch + 1):
        scheduler.step_update(step)
        rates.append(optimizer.param_groups[0]['lr'])
    return rates


def stage2_schedule(config: TrainConfig) -> dict:
    return dict(schedule=config.lr_schedule, epochs=config.epochs, warmup_epochs=config.warmup_epochs,
                warmup_lr=config.warmup_lr, min_lr=config.min_lr, decay_epochs=config.lr_decay_epochs,
                decay_factor=config.lr_decay_factor)


def closed_form(epoch: float, lr: float, schedule: str, epochs: int, warmup_epochs: int, warmup_lr: float,
                min_lr: float = 0.0, decay_epochs=(), decay_factor: float = 0.1) -> float:
    """The schedules as the papers describe them: linear warm-up, then a cosine from lr to min_lr over the epochs
    after the warm-up, or x decay_factor at each milestone (counted from epoch 0)."""
    if epoch < warmup_epochs:
        return warmup_lr + (lr - warmup_lr) * epoch / warmup_epochs
    if schedule == 'step':
        return lr * decay_factor ** sum(epoch >= m for m in decay_epochs)
    progress = min((epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def test_schedule_by_hand():
    config = TrainConfig(data_root='x')  # the paper's recipe: 10 warm-up epochs 8e-4 -> 8e-3, cosine to 120
    rates = scheduled_rates(300, config.lr, **stage2_schedule(config))  # 300 steps an epoch
    assert rates[0] == pytest.approx(8e-4)
    assert rates[1500] == pytest.approx(8e-4 + 0.5 * (8e-3 - 8e-4))
    assert rates[3000] == pytest.approx(8e-3)
    assert rates[3000 + 16500] == pytest.approx(1.6e-5 + 0.5 * (8e-3 - 1.6e-5))  # half-way through the cosine
    assert rates[36000] == pytest.approx(1.6e-5)
    assert rates[3000 + 11000] == pytest.approx(1.6e-5 + 0.5 * (8e-3 - 1.6e-5) * (1 + math.cos(math.pi / 3)))


@pytest.mark.parametrize('steps_per_epoch, lr, schedule', [
    (7, 8e-3, dict(schedule='cosine', epochs=120, warmup_epochs=10, warmup_lr=8e-4, min_lr=1.6e-5)),  # AAformer
    (5, 5e-6, dict(schedule='step', epochs=60, warmup_epochs=10, warmup_lr=5e-7, decay_epochs=[30, 50])),  # stage 2
    (3, 3.5e-4, dict(schedule='cosine', epochs=120, warmup_epochs=5, warmup_lr=1e-5, min_lr=1e-6)),  # stage-1 sizes
    (4, 1e-3, dict(schedule='cosine', epochs=2, warmup_epochs=5, warmup_lr=1e-5, min_lr=1e-6)),  # warm-up only
    (4, 1e-3, dict(schedule='cosine', epochs=3, warmup_epochs=3, warmup_lr=1e-4)),  # warm-up as long as training
    (6, 1e-2, dict(schedule='cosine', epochs=4, warmup_epochs=0, warmup_lr=0.0, min_lr=1e-4)),
    (6, 1e-2, dict(schedule='step', epochs=4, warmup_epochs=0, warmup_lr=0.0, decay_epochs=[0, 2])),
])
def test_the_schedule_is_the_closed_form_at_every_step(steps_per_epoch, lr, schedule):
    """timm's scheduler gives the papers' curve (written out above) at every optimiser step, warm-up included."""
    rates = scheduled_rates(steps_per_epoch, lr, **schedule)
    expected = [closed_form(step / steps_per_epoch, lr, **schedule) for step in range(len(rates))]
    assert rates == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_bad_input_fails_before_training(tmp_path, synthetic_root, capsys):
    config_file = tmp_path / 'bad.yaml'
    config_file.write_text('model: aaformer_tiny\nlearning_rate: 0.1\n')
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key\(s\) \['learning_rate'\]"):
        parse_config(['--config', str(config_file), '--data_root', 'x'])
    with pytest.raises(ValueError, match=r'batch_size \(30\) must be a positive multiple of num_instances \(4\)'):
        parse_config(['--data_root', 'x', '--batch_size', '30'])
    with pytest.raises(SystemExit):  # a Literal field's flag: argparse names the flag and the allowed values
        parse_config(['--data_root', 'x', '--baseline', 'resnet'])
    assert "argument --baseline: baseline must be one of ('vit', 'pcb'," in capsys.readouterr().err
    with pytest.raises(ValueError, match='baseline must be one of'):
        TrainConfig(data_root='x', baseline='resnet')
    from aaformer_hf.data import ReIDDatasetError
    with pytest.raises(ReIDDatasetError, match='missing: dataset folder not found'):
        train(TrainConfig(**tiny(tmp_path / 'missing', tmp_path / 'out')))
    with pytest.raises(ValueError, match=r'push_to_hub needs hub_model_id'):
        train(TrainConfig(**tiny(synthetic_root, tmp_path / 'out'), push_to_hub=True))
    with pytest.raises(ValueError, match=r"hub_model_id 'me/bad//name'"):
        train(TrainConfig(**tiny(synthetic_root, tmp_path / 'out'), push_to_hub=True, hub_model_id='me/bad//name'))
    assert not (tmp_path / 'out').exists()  # nothing was trained or written
    # flags override the file, dict fields take JSON
    config_file.write_text('model: aaformer_tiny\nepochs: 7\nbaseline: pcb\n')
    config = parse_config(['--config', str(config_file), '--data_root', 'x', '--epochs', '2',
                           '--model_args', '{"drop_path_rate": 0.1}', '--flip_test', '--warmup_epochs', '1'])
    assert config.epochs == 2 and config.flip_test and config.model_kwargs() == dict(
        drop_path_rate=0.1, assignment='stripes', part_groups=(6,))


def test_loader_workers_default_follows_the_cores(monkeypatch):
    """num_workers=None: usable cores shared among this machine's processes, at least 1, at most 8."""
    import os
    config = TrainConfig(data_root='x')
    for cores, processes, expected in [(16, 1, 8), (16, 4, 4), (2, 1, 2), (2, 4, 1), (1, 1, 1), (64, 2, 8)]:
        monkeypatch.setattr(os, 'sched_getaffinity', lambda pid, n=cores: set(range(n)), raising=False)
        assert config.loader_workers(processes) == expected, (cores, processes)
    assert TrainConfig(data_root='x', num_workers=0).loader_workers(4) == 0  # an explicit value is kept
    with pytest.raises(ValueError, match='num_workers must be >= 0'):
        TrainConfig(data_root='x', num_workers=-1)


def test_rerank_metrics_match_the_numpy_references():
    """--rerank: the trainer's re-ranked metrics equal the dense numpy re-ranking + numpy protocol references on the
    L2-normalised features; the plain metrics are unchanged by it."""
    import numpy as np
    from benchmarks.reid_eval_reference import evaluate_reference
    from benchmarks.reid_rerank_reference import re_rank_reference
    from train import retrieval_metrics
    from tests.test_evaluation import evaluate_reference_on_distances
    rng = np.random.default_rng(7)
    ids = rng.integers(1, 15, 120)
    feats = rng.normal(size=(15, 24))[ids] + rng.normal(size=(120, 24))
    cams = rng.integers(0, 4, 120)
    qf, gf = torch.from_numpy(feats[:30]), torch.from_numpy(feats[30:])
    labels = (torch.from_numpy(ids[:30]), torch.from_numpy(ids[30:]), torch.from_numpy(cams[:30]),
              torch.from_numpy(cams[30:]))
    got = retrieval_metrics(qf, gf, *labels, TrainConfig(data_root='x', rerank=True))
    unit_q, unit_g = (f / np.linalg.norm(f, axis=1, keepdims=True) for f in (feats[:30], feats[30:]))
    plain = evaluate_reference(unit_q, unit_g, ids[:30], ids[30:], cams[:30], cams[30:])
    reranked = evaluate_reference_on_distances(re_rank_reference(unit_q, unit_g), ids[:30], ids[30:], cams[:30],
                                               cams[30:])
    assert got['mAP'] == pytest.approx(plain['mAP'], abs=1e-9)
    assert got['rerank_mAP'] == pytest.approx(reranked['mAP'], abs=1e-9)
    assert got['rerank_rank1'] == pytest.approx(reranked['cmc'][0], abs=1e-9)
    assert got['rerank_mINP'] == pytest.approx(reranked['mINP'], abs=1e-9)
    assert abs(got['rerank_mAP'] - got['mAP']) > 1e-3  # re-ranking changed something: the test can tell them apart
    assert 'rerank_mAP' not in retrieval_metrics(qf, gf, *labels, TrainConfig(data_root='x'))


def test_rerank_reaches_metrics_file_and_summary(tmp_path, synthetic_root):
    from train import format_summary
    summary = train(TrainConfig(**tiny(synthetic_root, tmp_path / 'rerank', eval_only=True, rerank=True)))
    saved = json.loads((tmp_path / 'rerank' / 'metrics.json').read_text())
    assert 0 < saved['rerank_mAP'] <= 1 and saved['rerank_mAP'] == pytest.approx(summary['rerank_mAP'])
    table = format_summary(saved).splitlines()
    assert table[1] == '|  | R1 | R5 | R10 | mAP | mINP |' and table[3].startswith('| plain |')
    assert table[4] == '| re-ranked | ' + ' | '.join(
        f'{100 * saved["rerank_" + k]:.1f}' for k in ('rank1', 'rank5', 'rank10', 'mAP', 'mINP')) + ' |'


def test_tiny_run_learns_and_saves_both_front_doors(tmp_path, synthetic_root):
    untrained = train(TrainConfig(**tiny(synthetic_root, tmp_path / 'untrained', eval_only=True)))
    trained = train(TrainConfig(**tiny(synthetic_root, tmp_path / 'run', epochs=3)))
    assert trained['mAP'] > untrained['mAP'] + 0.15, (untrained['mAP'], trained['mAP'])
    metrics = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert metrics['epochs'] == 3 and metrics['num_valid_queries'] == 12
    # 3 epochs x 12 batches x 16 images (24 identities x 2 groups of 4 / 4 identities per batch), every one timed
    assert metrics['train_images'] == 3 * 12 * 16
    assert metrics['images_per_second'] == pytest.approx(metrics['train_images'] / metrics['train_seconds'])
    assert metrics['mAP'] == pytest.approx(trained['mAP'])
    # the model folder: transformers' AutoModel and timm both load it and give the same embedding
    model_dir = tmp_path / 'run' / 'model'
    encoder = AutoModel.from_pretrained(model_dir).eval()
    timm_model = timm.create_model('aaformer_tiny', pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(model_dir / 'model.safetensors'))).eval()
    pixels = torch.randn(2, 3, 256, 128)
    torch.testing.assert_close(encoder(pixel_values=pixels).pooler_output, timm_model(pixels), atol=0, rtol=0)
    assert (tmp_path / 'run' / 'best_model' / 'model.safetensors').is_file()


def _run(args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, TRAIN_SCRIPT, *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_kill_and_resume_is_exact(tmp_path, synthetic_root):
    common = tiny(synthetic_root, None, epochs=2, checkpointing_steps=2)
    whole = dict(common, output_dir=str(tmp_path / 'whole'))
    out = _run(flags(whole)).communicate()[0]
    assert (tmp_path / 'whole' / 'model' / 'model.safetensors').is_file(), out[-3000:]

    # the same run, killed (SIGKILL) once its first checkpoint exists, resumed with 2 loader workers instead of 0
    broken = dict(common, output_dir=str(tmp_path / 'broken'))
    process = _run(flags(broken))
    first = tmp_path / 'broken' / 'checkpoints' / 'step_2'
    deadline = time.time() + 300
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, 'the run ended before it could be interrupted'
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (tmp_path / 'broken' / 'model').exists()
    resumed = _run(flags(dict(broken, resume_from_checkpoint='latest', num_workers=2))).communicate()[0]
    assert 'resumed from' in resumed, resumed[-3000:]
    a = load_file(tmp_path / 'whole' / 'model' / 'model.safetensors')
    b = load_file(tmp_path / 'broken' / 'model' / 'model.safetensors')
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


def test_two_cpu_processes(tmp_path, synthetic_root):
    values = tiny(synthetic_root, tmp_path / 'ddp', epochs=1, batch_size=16)
    command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29531',
               TRAIN_SCRIPT, *flags(values)]
    done = subprocess.run(command, env={**os.environ, 'ACCELERATE_USE_CPU': 'true', 'OMP_NUM_THREADS': '1'},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((tmp_path / 'ddp' / 'metrics.json').read_text())
    # every query evaluated exactly once although each process saw half of them (gather_for_metrics)
    assert metrics['processes'] == 2 and metrics['num_valid_queries'] == 12
    assert (tmp_path / 'ddp' / 'model' / 'model.safetensors').is_file()


def test_accumulation_mixed_precision_and_step_checkpoints(tmp_path, synthetic_root):
    """Gradient accumulation counts optimiser steps (one scheduler step each), bf16 autocast runs on CPU, step
    checkpoints are numbered by optimiser step and only the newest ones are kept."""
    out = tmp_path / 'acc'
    # its own process: accelerate fixes the mixed precision once per process
    values = tiny(synthetic_root, out, epochs=1, warmup_epochs=0, gradient_accumulation_steps=2,
                  mixed_precision='bf16', checkpointing_steps='1', checkpoints_total_limit=2, flip_test=True)
    # the trainer in a subprocess, with a hook recording the dtype a linear layer computes in during training
    script = ('import json, sys\n'
              'sys.path.insert(0, "examples")\n'
              'import train as loop\n'
              'seen, build = set(), loop.build_model\n'
              'def hooked(*args, **kwargs):\n'
              '    model, cfg, family = build(*args, **kwargs)\n'
              '    model.timm_model.blocks[0].mlp.fc1.register_forward_hook(\n'
              '        lambda module, inputs, output: seen.add((module.training, str(output.dtype))))\n'
              '    return model, cfg, family\n'
              'loop.build_model = hooked\n'
              'loop.train(loop.TrainConfig(**json.loads(sys.argv[1])))\n'
              'print("DTYPES", sorted(seen))\n')
    done = subprocess.run([sys.executable, '-c', script, json.dumps(values)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert (out / 'metrics.json').is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    # bf16 autocast: training and evaluation forwards compute in bfloat16, the weights stay float32
    assert "DTYPES [(False, 'torch.bfloat16'), (True, 'torch.bfloat16')]" in done.stdout, done.stdout[-2000:]
    summary = json.loads((out / 'metrics.json').read_text())
    # 24 identities x 2 groups of 4 images / 4 identities per batch = 12 batches an epoch -> 6 optimiser steps
    kept = sorted(p.name for p in (out / 'checkpoints').iterdir())
    assert kept == ['step_5', 'step_6'], kept
    state = json.loads((out / 'checkpoints' / 'step_6' / 'trainer_state.json').read_text())
    assert state['global_step'] == 6 and state['epoch'] == 0 and state['step_in_epoch'] == 6
    assert summary['epochs'] == 1 and summary['train_images'] == 12 * 16
    assert load_file(out / 'model' / 'model.safetensors')['blocks.0.mlp.fc1.weight'].dtype == torch.float32


def test_tracking_writes_tensorboard_events(tmp_path, synthetic_root):
    """--with_tracking logs losses, the learning rate and the evaluation; read back with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / 'tracked'
    metrics = train(TrainConfig(**tiny(synthetic_root, out, epochs=1, warmup_epochs=1, eval_every=1,
                                       with_tracking=True, report_to='tensorboard')))
    event_files = list(out.rglob('events.out.tfevents*'))
    assert event_files
    events = EventAccumulator(str(event_files[0].parent)).Reload()
    tags = set(events.Tags()['scalars'])
    assert {'train/loss', 'train/lr', 'eval/mAP', 'eval/rank1'} <= tags, tags
    (logged_map,) = events.Scalars('eval/mAP')
    assert logged_map.value == pytest.approx(metrics['mAP'], rel=1e-6)
    # one epoch: 24 identities x 2 groups of 4 images / 4 identities per batch
    assert len(events.Scalars('train/loss')) == 24 * 2 // 4


def test_tracking_without_the_tracker_stops_before_training(tmp_path, synthetic_root, monkeypatch):
    """accelerate itself only warns when the tracker is missing and then logs nowhere: the trainer stops instead."""
    import accelerate.tracking
    monkeypatch.setattr(accelerate.tracking, '_available_trackers', [])
    values = tiny(synthetic_root, tmp_path / 'untracked', epochs=1, warmup_epochs=0, with_tracking=True,
                  report_to='tensorboard')
    with pytest.raises(ValueError, match="tracker 'tensorboard' is not installed"):
        train(TrainConfig(**values))
    assert not (tmp_path / 'untracked').exists()


def test_unreadable_image_at_training_time_names_the_file(tmp_path, synthetic_root):
    """Loaded without the load-time check, a file broken afterwards fails in the loader naming its path."""
    import shutil
    from aaformer_hf.data import load_reid_dataset
    from aaformer_hf.data import ReIDItems
    root = tmp_path / 'copy'
    shutil.copytree(synthetic_root, root)
    train_split = load_reid_dataset('market1501', root, verify_images=False)['train']
    broken = Path(train_split[0]['path'])
    broken.write_bytes(b'not an image')
    with pytest.raises(RuntimeError, match=re.escape(f'cannot load item 0 ({broken})')):
        ReIDItems(train_split, lambda image: image)[0]


def test_non_finite_loss_stops_naming_step_and_term(tmp_path, synthetic_root, monkeypatch):
    """A loss term that turns NaN stops training at that optimiser step, naming the term, and saves no model."""
    calls = []

    class Poisoned(trainer.AAformerLoss):
        def forward(self, logits, features, labels):
            losses = super().forward(logits, features, labels)
            calls.append(1)
            if len(calls) == 3:  # the third optimiser step: its triplet term overflows
                losses['triplet_loss'] = losses['triplet_loss'] * float('inf')
                losses['loss'] = losses['id_loss'] + losses['triplet_loss']
            return losses

    monkeypatch.setattr(trainer, 'AAformerLoss', Poisoned)
    out = tmp_path / 'diverged'
    with pytest.raises(FloatingPointError, match=r'diverged at optimiser step 3 \(epoch 0, batch 2\): '
                                                 r'loss = inf, id_loss = [0-9.]+, triplet_loss = inf'):
        train(TrainConfig(**tiny(synthetic_root, out, epochs=1, checkpointing_steps='2', eval_every=1)))
    assert not (out / 'model').exists() and not (out / 'best_model').exists()
    assert sorted(p.name for p in (out / 'checkpoints').iterdir()) == ['step_2']  # the last good state is kept


def test_a_diverged_model_is_never_saved(tmp_path):
    from accelerate import Accelerator
    from train import save_model
    model = timm.create_model('aaformer_tiny')
    with torch.no_grad():
        model.blocks[1].attn.qkv.weight[0, 0] = float('nan')
    with pytest.raises(FloatingPointError, match=r'non-finite values in 1 tensors \(\[.blocks.1.attn.qkv.weight.\]'):
        save_model(model, Accelerator(cpu=True), tmp_path / 'best_model', None)
    assert not (tmp_path / 'best_model').exists()


def test_yaml_and_flag_values_are_typed_and_named(tmp_path, capsys):
    config_file = tmp_path / 'typed.yaml'
    # PyYAML reads 1e-3 as a string; quoted booleans are strings too
    config_file.write_text('lr: 1e-3\nflip_test: "false"\neval_normalize: "no"\nrerank: "yes"\n'
                           'checkpointing_steps: 500\ntriplet_margin: null\nepochs: 12\n')
    config = parse_config(['--config', str(config_file), '--data_root', 'x'])
    assert config.lr == 1e-3 and isinstance(config.lr, float)
    assert config.flip_test is False and config.eval_normalize is False and config.rerank is True
    assert config.checkpointing_steps == '500' and config.triplet_margin is None and config.epochs == 12
    # (epochs and lr may be none: the method's recipe)
    for text, message in [('epochs: ten\n', "epochs must be an integer or none, got 'ten'"),
                          ('epochs: 2.5\n', 'epochs must be an integer or none, got 2.5'),
                          ('flip_test: maybe\n', "flip_test must be a boolean, got 'maybe'"),
                          ('lr: true\n', 'lr must be a number or none, got True'),
                          ('lr_decay_epochs: [30, fifty]\n', r"lr_decay_epochs must be a list of integers or none, got \[30, 'fifty'\]"),
                          ('model_args: [1, 2]\n', r'model_args must be a mapping, got \[1, 2\]'),
                          ('triplet_margin: wide\n', "triplet_margin must be a number or none, got 'wide'"),
                          ('eval_metric: l1\n', r"eval_metric must be one of \('euclidean', 'cosine'\), got 'l1'"),
                          ('lr_schedule: linear\n', r"lr_schedule must be one of \('cosine', 'step'\) or none")]:
        config_file.write_text(text)
        with pytest.raises(ValueError, match=re.escape(str(config_file)) + ': ' + message):
            parse_config(['--config', str(config_file), '--data_root', 'x'])
    # the Python API gets the same checks
    assert TrainConfig(data_root='x', flip_test='no').flip_test is False
    with pytest.raises(ValueError, match="warmup_lr must be a number or none, got 'fast'"):
        TrainConfig(data_root='x', warmup_lr='fast')
    # flags: bad values and abbreviations are refused by name
    for argv, message in [(['--epoch', '1'], 'unrecognized arguments: --epoch 1'),
                          (['--lr', 'abc'], "argument --lr: lr must be a number or none, got 'abc'"),
                          (['--method', 'bot'], "argument --method: method must be one of ('aaformer', 'clipreid', "
                                                "'pivl'), got 'bot'")]:
        with pytest.raises(SystemExit):
            parse_config(['--data_root', 'x', *argv])
        assert message in capsys.readouterr().err


def test_flip_test_averages_the_horizontal_mirror():
    """The trainer's feature extraction with flip_test: the mean of each image's and its left-right mirror's
    embedding (torchvision's horizontal_flip as the reference), not the upside-down one."""
    from types import SimpleNamespace
    from accelerate import Accelerator
    from torchvision.transforms.v2.functional import horizontal_flip, vertical_flip
    from train import extract

    class LeftColumnAndTopRow(torch.nn.Module):  # a feature that tells left from right and top from bottom
        def forward(self, pixel_values):
            return SimpleNamespace(embeddings=torch.cat([pixel_values[..., :, 0].flatten(1),
                                                         pixel_values[..., 0, :].flatten(1)], 1))

    torch.manual_seed(0)
    images = torch.randn(5, 3, 8, 4)
    loader = torch.utils.data.DataLoader(list(zip(images, torch.arange(5), torch.zeros(5, dtype=torch.long))),
                                         batch_size=2)
    model = LeftColumnAndTopRow()
    feats, pids, _ = extract(model, loader, Accelerator(cpu=True), flip=True)
    embed = lambda x: model(x).embeddings  # noqa: E731
    torch.testing.assert_close(feats, (embed(images) + embed(horizontal_flip(images))) / 2)
    assert not torch.allclose(feats, (embed(images) + embed(vertical_flip(images))) / 2)
    assert pids.tolist() == [0, 1, 2, 3, 4]
    plain, _, _ = extract(model, loader, Accelerator(cpu=True), flip=False)
    torch.testing.assert_close(plain, embed(images))


def test_extraction_builds_no_autograd_graph():
    """Evaluation features are computed without autograd (a graph over the whole gallery would hold every
    activation): a model with trainable weights gives features that need no gradient."""
    from types import SimpleNamespace
    from accelerate import Accelerator
    from train import extract

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3))

        def forward(self, pixel_values):
            return SimpleNamespace(embeddings=pixel_values.mean((2, 3)) * self.weight)

    loader = torch.utils.data.DataLoader(list(zip(torch.randn(4, 3, 8, 4), torch.arange(4),
                                                  torch.zeros(4, dtype=torch.long))), batch_size=2)
    feats, _, _ = extract(Linear(), loader, Accelerator(cpu=True), flip=True)
    assert feats.shape == (4, 3) and not feats.requires_grad


def test_flip_test_mirrors_the_parsing_map_with_its_image():
    """A model whose [PART]s come from parsing maps (Table IV's SPReID row) gets, for the mirrored image, the masks
    of the mirrored map - not the original's."""
    from types import SimpleNamespace
    from accelerate import Accelerator
    from aaformer_hf.data.parsing import region_masks
    from train import extract

    class RecordsMasks(torch.nn.Module):
        timm_model = SimpleNamespace(patch_embed=SimpleNamespace(grid_size=(2, 2)), num_parts=5)
        seen = []

        def forward(self, pixel_values, part_masks):
            self.seen.append(part_masks)
            return SimpleNamespace(embeddings=pixel_values.flatten(1))

    parsing = torch.zeros(1, 4, 4, dtype=torch.long)
    parsing[0, 0, 0] = 13  # a face in the top-left patch only
    loader = [(torch.randn(1, 3, 4, 4), torch.tensor([1]), torch.tensor([0]), parsing, torch.tensor([True]))]
    model = RecordsMasks()
    extract(model, loader, Accelerator(cpu=True), flip=True)
    original, mirrored = model.seen
    assert torch.equal(original, region_masks(parsing, (2, 2)))
    assert mirrored[0, 1].tolist() == [False, True, False, False]  # the face is now in the top-right patch


def test_spreid_and_multi_cls_baselines_train_end_to_end(tmp_path):
    """Table IV's two rows without an assignment of their own: [PART]s on parsing regions (training AND test images
    need maps; the masks reach the model) and 6*CLS; both learn and save a model that says what it is."""
    root = generate_market_layout(tmp_path / 'data', train_ids=16, test_ids=8, images_per_id=6, distractors=0,
                                  junk=0, seed=4, parsing=True)
    untrained = train(TrainConfig(**tiny(root, tmp_path / 'untrained', eval_only=True, baseline='spreid')))
    spreid = train(TrainConfig(**tiny(root, tmp_path / 'spreid', baseline='spreid', flip_test=True)))
    assert spreid['mAP'] > untrained['mAP'] + 0.1, (untrained['mAP'], spreid['mAP'])
    saved = json.loads((tmp_path / 'spreid' / 'model' / 'config.json').read_text())
    assert (saved['assignment'], saved['part_groups']) == ('given', [5])
    multi = train(TrainConfig(**tiny(root, tmp_path / 'multi', baseline='multi_cls', epochs=1)))
    assert multi['num_valid_queries'] == 8
    # without maps for the test images the SPReID row cannot be evaluated: named, before any training
    for stale in (root / 'parsing' / 'query').iterdir():
        stale.unlink()
    from aaformer_hf.data import ReIDDatasetError
    with pytest.raises(ReIDDatasetError, match=r'8 of 8 images have no parsing map'):
        train(TrainConfig(**tiny(root, tmp_path / 'again', baseline='spreid')))


def test_gradient_accumulation_averages_the_micro_batches(tmp_path, synthetic_root):
    """With SGD (no momentum, no weight decay) at a constant, small learning rate, accumulating 2 micro-batches per
    step moves the weights by lr * (g1 + g2) / 2 per step, half of what stepping on every micro-batch does
    (lr * g1 + lr * g2', with g2' ~ g2 at a small lr): the update over one epoch is half as large. Without the division
    by the accumulation steps it would be as large."""
    common = dict(epochs=1, warmup_epochs=0, lr=1e-5, min_lr=1e-5, momentum=0.0, weight_decay=0.0, seed=7)
    start = train(TrainConfig(**tiny(synthetic_root, tmp_path / 'start', eval_only=True, **common)))
    assert start['epochs'] == 0
    deltas = {}
    initial = load_file(tmp_path / 'start' / 'model' / 'model.safetensors')
    for steps in (1, 2):
        out = tmp_path / f'accumulate_{steps}'
        train(TrainConfig(**tiny(synthetic_root, out, gradient_accumulation_steps=steps, **common)))
        final = load_file(out / 'model' / 'model.safetensors')
        deltas[steps] = torch.cat([(final[k] - initial[k]).flatten() for k in initial
                                   if k.startswith('blocks.') and k.endswith('weight')])
    ratio = deltas[2].norm() / deltas[1].norm()
    assert deltas[1].norm() > 0 and abs(ratio - 0.5) < 0.05, float(ratio)


def test_optimizer_is_heavy_ball_sgd_with_decay_on_weights_only():
    """The paper's SGD (momentum 0.9, weight decay 1e-4, as TransReID's torch.optim.SGD: not Nesterov); decay on
    matrices only, none on biases, norms, the BNNeck and the tokens and position embeddings."""
    from train import make_optimizer
    model = timm.create_model('aaformer_tiny', num_classes=5)
    optimizer = make_optimizer(model, TrainConfig(data_root='x'))
    assert isinstance(optimizer, torch.optim.SGD)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, free = set(), set()
    for group in optimizer.param_groups:
        assert group['momentum'] == 0.9 and group['nesterov'] is False and group['lr'] == 8e-3
        assert group['weight_decay'] in (0.0, 1e-4)
        (decayed if group['weight_decay'] else free).update(names[id(p)] for p in group['params'])
    expected_free = {n for n, p in model.named_parameters() if p.ndim <= 1} | {'cls_token', 'part_tokens', 'pos_embed'}
    assert free == expected_free and decayed == set(names.values()) - expected_free
    assert 'blocks.0.attn.qkv.weight' in decayed and 'head.weight' in decayed and 'bnneck.weight' in free


def test_script_reports_user_errors_without_a_traceback(tmp_path, capsys):
    from train import main
    with pytest.raises(SystemExit) as exit_info:
        main(flags(tiny(tmp_path / 'missing', tmp_path / 'out')))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f'examples/train.py: error: {tmp_path / "missing"}: dataset folder not found' in err
    assert 'Traceback' not in err and not (tmp_path / 'out').exists()
    # an error class of the example's own (train_outputs.OutputDirError): the same
    (tmp_path / 'a_file').write_text('x')
    with pytest.raises(SystemExit) as exit_info:
        main(flags(tiny(tmp_path / 'missing', tmp_path / 'a_file')))
    assert exit_info.value.code == 2 and 'exists and is not a folder' in capsys.readouterr().err


def test_script_lets_another_librarys_error_through(tmp_path, monkeypatch):
    """An error class from another library keeps its traceback (its own details are the useful part)."""
    import train

    class LibraryError(RuntimeError):  # defined outside the package and the example, as another library's are
        pass

    def broken(config):
        raise LibraryError('a library error')
    monkeypatch.setattr(train, 'train', broken)
    with pytest.raises(LibraryError, match='a library error'):
        train.main(flags(tiny(tmp_path / 'missing', tmp_path / 'out')))


def test_push_to_hub_uploads_the_best_model_with_its_card(tmp_path, synthetic_root, monkeypatch):
    """--push_to_hub: the best epoch's folder goes up (patched HfApi, nothing leaves the machine) with a card whose
    model-index is that epoch's evaluation."""
    from huggingface_hub import HfApi, ModelCard

    uploads = []

    def upload_folder(api, repo_id, folder_path, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        uploads.append((repo_id, kwargs.get('revision'), files))

    monkeypatch.setattr(HfApi, 'create_repo', lambda api, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, 'upload_folder', upload_folder)
    out = tmp_path / 'out'
    summary = train(TrainConfig(**tiny(synthetic_root, out, epochs=2, eval_every=1), push_to_hub=True,
                                hub_model_id='me/aaformer-synthetic'))
    (repo_id, revision, files), = uploads
    assert (repo_id, revision) == ('me/aaformer-synthetic', None)
    assert sorted(files) == ['README.md', 'config.json', 'model.safetensors', 'preprocessor_config.json']
    assert files['model.safetensors'] == (out / 'best_model' / 'model.safetensors').read_bytes()
    card = ModelCard(files['README.md'].decode())
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}['mAP'] == round(
        100 * summary['best']['mAP'], 2)
    assert f'epoch {summary["best"]["epoch"]}' in card.text and 'Synthetic images' in card.text
