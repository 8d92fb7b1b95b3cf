"""A NaN loss stops the run with the step and batch named; no poisoned checkpoint is written."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.faults.helpers import assert_user_error, memae

# lr=1e30 blows the weights up on the first step, so the later batches' losses are not finite.
# With on_nonfinite=skip the epoch keeps its first (finite) batch; an epoch in which *every*
# batch is skipped has no finite loss and stops the run (loop.report), so the skip run is one
# epoch long.
TRAIN = ("--workers", "0", "--storage", "runs", "--set", "model.num_slots=20",
         "--set", "train.batch_size=4", "--set", "train.lr=1e30",
         "--set", "data.shuffle_buffer=0", "--set", "train.max_steps_per_epoch=3")


def _assert_finite_checkpoints(run: Path) -> int:
    states = sorted(run.rglob("state.pt"))
    for path in states:
        state = torch.load(path, weights_only=True, map_location="cpu")
        tensors = _tensors(state)
        assert tensors, path
        assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()), path
    return len(states)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def test_nan_loss_stops_with_step_and_batch_then_skip_finishes(tiny_copy, tmp_path):
    proc = memae("train", "--data", str(tiny_copy), "--name", "stop", "--epochs", "1", *TRAIN,
                 cwd=tmp_path)
    assert_user_error(proc, "non-finite loss at epoch 1, after step", "(windows ",
                      "train.on_nonfinite=skip")
    assert _assert_finite_checkpoints(tmp_path / "runs" / "stop") == 0

    proc = memae("train", "--data", str(tiny_copy), "--name", "skip", "--epochs", "1", *TRAIN,
                 "--set", "train.on_nonfinite=skip", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint: " in proc.stdout
    assert _assert_finite_checkpoints(tmp_path / "runs" / "skip") >= 1
