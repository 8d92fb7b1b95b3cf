"""Checkpoint contents, safe loading, retention helpers and the restore point (no Ray)."""

from __future__ import annotations

import json
import logging
import random
import shutil

import numpy as np
import pytest
import torch

from memae_dist.errors import UserError
from memae_dist.train.checkpoint import (
    RAY_SNAPSHOT,
    TrainState,
    best_checkpoint,
    checkpoint_epoch,
    forget_missing,
    latest_checkpoint,
    load_state,
    prune,
    ray_registered,
    restore,
    restore_point,
    save_best,
    save_checkpoint,
)


def tiny_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def write(folder, epoch: int = 1, model=None) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = model or tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    state = TrainState(epoch=epoch, step=7 * epoch, history=[{"epoch": epoch, "loss": 0.5}],
                       starts=2, best_value=0.25, best_epoch=epoch)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder, model, opt, state, {"train": {"lr": 1e-3}}, {"scale": 1024.0})
    return model, opt


def test_round_trip_restores_weights_optimizer_progress_and_every_rng(tmp_path):
    model, opt = write(tmp_path / "ck")
    expected = (torch.rand(3), np.random.rand(3), random.random())  # draws after the save
    torch.manual_seed(123), np.random.seed(123), random.seed(123)

    fresh = tiny_model()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    state, scaler = restore(tmp_path / "ck", fresh, fresh_opt)

    assert (state.epoch, state.step, state.starts) == (1, 7, 2)
    assert (state.best_value, state.best_epoch) == (0.25, 1)
    assert state.history == [{"epoch": 1, "loss": 0.5}] and scaler == {"scale": 1024.0}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    # The same draws as right after the save: torch, numpy and Python RNGs all restored.
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_state_loads_with_weights_only_and_bad_files_are_user_errors(tmp_path):
    write(tmp_path / "ck")
    payload = torch.load(tmp_path / "ck" / "state.pt", weights_only=True)  # no pickled code
    assert payload["data_position"] == {"epoch": 1, "batch": 0}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint") as err:
        load_state(tmp_path / "bad")
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    (tmp_path / "bad" / "state.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"state\.pt: the file is empty \(a write that was cut "
                                        r"off\?\)$"):
        load_state(tmp_path / "bad")


def test_latest_skips_incomplete_uploads_and_restore_point_is_the_newest_whole(tmp_path):
    run = tmp_path / "run"
    for epoch in (1, 2, 3):
        write(run / f"checkpoint_epoch_{epoch:04d}", epoch)
    (run / "checkpoint_epoch_0003" / "history.json").unlink()  # upload cut short
    assert latest_checkpoint(str(run)).endswith("checkpoint_epoch_0002")
    assert restore_point(str(run)).endswith("checkpoint_epoch_0002")
    assert ray_registered(str(run)) is None
    # Ray recorded only epoch 1 (epoch 2 came from a debug run, or was whole when the attempt
    # was cut off): the run still goes on from epoch 2, not by training it again.
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_epoch_0001"}}
    (run / RAY_SNAPSHOT).write_text(json.dumps(snapshot))
    assert checkpoint_epoch(ray_registered(str(run))) == 1
    assert checkpoint_epoch(restore_point(str(run))) == 2
    with pytest.raises(UserError):
        checkpoint_epoch(str(run))


def test_prune_keeps_the_newest_whole_checkpoints_and_forget_missing_drops_rays_record(
        tmp_path, caplog):
    run = tmp_path / "run"
    for epoch in (1, 2, 3, 9, 10):
        write(run / f"checkpoint_epoch_{epoch:04d}", epoch)
    (run / "checkpoint_epoch_0010" / "history.json").unlink()  # cut off: epoch 10 comes again
    prune(str(run), 2)
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint_epoch_0003", "checkpoint_epoch_0009", "checkpoint_epoch_0010"]
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_epoch_0003"}],
                "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_epoch_0009"}}
    (run / RAY_SNAPSHOT).write_text(json.dumps(snapshot))
    forget_missing(str(run))
    assert (run / RAY_SNAPSHOT).exists()  # everything it names is there
    shutil.rmtree(run / "checkpoint_epoch_0003")  # deleted by hand, or by a debug run's prune
    with caplog.at_level(logging.INFO, logger="memae_dist.train"):
        forget_missing(str(run))
    assert not (run / RAY_SNAPSHOT).exists()
    assert "names checkpoint_epoch_0003, which is gone: dropping the record" in caplog.text
    (run / RAY_SNAPSHOT).write_text("{not json")
    forget_missing(str(run))
    assert not (run / RAY_SNAPSHOT).exists()


def test_best_copy_moves_the_pointer_then_drops_the_old_copy(tmp_path):
    run = tmp_path / "run"
    assert best_checkpoint(str(run)) is None
    for epoch, value in ((1, 0.4), (3, 0.2)):
        write(tmp_path / f"local{epoch}", epoch)
        save_best(tmp_path / f"local{epoch}", str(run), epoch, "val_recon", value)
    assert best_checkpoint(str(run)).endswith("best/checkpoint_epoch_0003")
    assert sorted(p.name for p in (run / "best").iterdir()) == ["checkpoint_epoch_0003"]
    pointer = json.loads((run / "best.json").read_text())
    assert pointer == {"checkpoint": "best/checkpoint_epoch_0003", "epoch": 3,
                       "metric": "val_recon", "value": 0.2}
    # The best copy is a whole checkpoint, not counted among the run's latest ones.
    assert latest_checkpoint(str(run)) is None
    assert load_state(run / "best" / "checkpoint_epoch_0003")["epoch"] == 3


def test_a_run_without_a_checkpoint_yet_says_who_trains_it(tmp_path):
    from memae_dist.data.lock import RunLock
    from memae_dist.train.checkpoint import resolve_checkpoint

    run = str(tmp_path / "R")
    with RunLock(run, None, 120), pytest.raises(UserError) as err:
        resolve_checkpoint(run)
    assert f"no checkpoint found at {run} (no epoch finished yet; the run is being trained by " \
           f"host " in str(err.value)
    with pytest.raises(UserError, match=r"\(expected a checkpoint or a run folder\)"):
        resolve_checkpoint(str(tmp_path))


def test_a_checkpoints_state_file_means_that_checkpoint(tmp_path):
    from memae_dist.train.checkpoint import resolve_checkpoint

    write(tmp_path / "R" / "checkpoint_epoch_0002", epoch=2)
    ckpt = str(tmp_path / "R" / "checkpoint_epoch_0002")
    assert resolve_checkpoint(f"{ckpt}/state.pt") == ckpt
    assert resolve_checkpoint(str(tmp_path / "R")) == ckpt
