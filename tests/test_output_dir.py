"""The training output folder: one run at a time, no silent mixing with an earlier run, checks before any work,
and the checkpoint scan (incomplete folders, unreadable trainer states)."""
import json
import socket
import subprocess
from pathlib import Path

import pytest

from train import TrainConfig, train
from train_outputs import LOCK_FILE, OutputDirError, complete_checkpoints, read_state, resume_folder
from tests.test_training import synthetic_root, tiny  # noqa: F401  (the fixture)


def lock_held_by(folder: Path, pid: int, host: str = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({'host': host or socket.gethostname(), 'pid': pid}))


def fake_checkpoint(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    (folder / 'trainer_state.json').write_text(json.dumps(
        {'epoch': 0, 'step_in_epoch': step, 'global_step': step, 'best': None}))
    return folder


def test_a_folder_in_use_by_a_live_run_is_refused(tmp_path):
    out = tmp_path / 'busy'
    other = subprocess.Popen(['sleep', '60'])
    try:
        lock_held_by(out, other.pid)
        # the data root does not exist: the folder check comes first, before any data is read
        with pytest.raises(OutputDirError, match=rf'output_dir {out} is in use by another run \(pid {other.pid};'):
            train(TrainConfig(**tiny(tmp_path / 'no-data', out)))
        lock_held_by(out, 1234, host='elsewhere')
        with pytest.raises(OutputDirError, match='pid 1234 on host elsewhere'):
            train(TrainConfig(**tiny(tmp_path / 'no-data', out)))
    finally:
        other.kill()
        other.wait()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the other run's lock is left alone


def test_a_lock_left_by_a_killed_run_is_taken_over_and_released(tmp_path, synthetic_root):  # noqa: F811
    out = tmp_path / 'stale'
    gone = subprocess.Popen(['true'])
    gone.wait()
    lock_held_by(out, gone.pid)
    summary = train(TrainConfig(**tiny(synthetic_root, out, eval_only=True)))
    assert summary['num_valid_queries'] == 12
    assert not (out / LOCK_FILE).exists()  # released at the end


def test_a_fresh_run_refuses_an_earlier_runs_folder(tmp_path, synthetic_root):  # noqa: F811
    for earlier in ('checkpoints/epoch_3', 'metrics.json', 'best_model'):
        out = tmp_path / earlier.replace('/', '_')
        (out / earlier).parent.mkdir(parents=True, exist_ok=True)
        (out / earlier).mkdir() if '.' not in earlier else (out / earlier).write_text('{}')
        with pytest.raises(OutputDirError, match=rf'output_dir {out} holds an earlier run \({earlier.split("/")[0]}\)'
                                                 r'; resume it with --resume_from_checkpoint latest'):
            train(TrainConfig(**tiny(synthetic_root, out, eval_only=True)))
        assert (out / earlier).exists() and not (out / LOCK_FILE).exists()
    # --overwrite_output_dir deletes the earlier outputs first
    out = tmp_path / 'checkpoints_epoch_3'
    train(TrainConfig(**tiny(synthetic_root, out, eval_only=True, overwrite_output_dir=True)))
    assert not (out / 'checkpoints').exists() and (out / 'metrics.json').is_file()


def test_bad_output_dir_and_missing_checkpoint_fail_before_any_work(tmp_path):
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    data = tmp_path / 'no-data'  # a data error would mean the data was looked at first
    with pytest.raises(OutputDirError, match=rf'output_dir {blocker} exists and is not a folder'):
        train(TrainConfig(**tiny(data, blocker)))
    with pytest.raises(OutputDirError, match=rf'output_dir {blocker / "run"} cannot be written'):
        train(TrainConfig(**tiny(data, blocker / 'run')))
    with pytest.raises(FileNotFoundError, match=r'checkpoints: no complete checkpoint to resume from'):
        train(TrainConfig(**tiny(data, tmp_path / 'fresh', resume_from_checkpoint='latest')))
    assert not (tmp_path / 'fresh').exists()


def test_checkpoint_scan_skips_incomplete_folders_and_names_bad_state_files(tmp_path):
    checkpoints = tmp_path / 'checkpoints'
    fake_checkpoint(checkpoints / 'step_2', 2)
    fake_checkpoint(checkpoints / 'step_10', 10)
    fake_checkpoint(checkpoints / '.incomplete-step_12', 12)  # a run killed while saving
    (checkpoints / 'step_14').mkdir()  # no trainer state: not a checkpoint
    assert [p.name for p in complete_checkpoints(tmp_path)] == ['step_2', 'step_10']  # by step, not by name
    assert resume_folder('latest', tmp_path).name == 'step_10'
    # CLIP-ReID / π-VL: a stage-1 checkpoint (no stage-2 step yet) is older than any stage-2 one with fewer
    # stage-2 steps than it had stage-1 steps; the trainer's steps_done (all optimiser steps so far) orders them
    for stage1_steps in (5, 30):  # both at global_step 0: only steps_done tells them apart
        stage1 = fake_checkpoint(checkpoints / f'stage1_step_{stage1_steps}', 0)
        state = json.loads((stage1 / 'trainer_state.json').read_text())
        (stage1 / 'trainer_state.json').write_text(
            json.dumps(dict(state, stage=1, stage1_step=stage1_steps, steps_done=stage1_steps)))
    for name, stage2_steps in (('step_2', 2), ('step_10', 10)):
        state = json.loads((checkpoints / name / 'trainer_state.json').read_text())
        (checkpoints / name / 'trainer_state.json').write_text(
            json.dumps(dict(state, stage=2, stage1_step=36, steps_done=36 + stage2_steps)))
    assert [p.name for p in complete_checkpoints(tmp_path)] == ['stage1_step_5', 'stage1_step_30', 'step_2', 'step_10']
    (checkpoints / 'step_10' / 'trainer_state.json').write_text('{"epoch": 0, "glob')  # truncated
    state_file = checkpoints / 'step_10' / 'trainer_state.json'
    with pytest.raises(OutputDirError, match=rf'{state_file}: unreadable trainer state'):
        complete_checkpoints(tmp_path)
    with pytest.raises(OutputDirError, match=rf'{state_file}: unreadable trainer state'):
        resume_folder(str(checkpoints / 'step_10'), tmp_path)
    (checkpoints / 'step_10' / 'trainer_state.json').write_text('{"epoch": 0}')
    with pytest.raises(OutputDirError, match=r"lacks \['best', 'global_step', 'step_in_epoch'\]"):
        read_state(checkpoints / 'step_10')
