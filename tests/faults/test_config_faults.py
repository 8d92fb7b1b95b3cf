"""Bad settings are refused before any work starts, with the setting named."""

from __future__ import annotations

import pytest

from tests.faults.helpers import assert_user_error, memae, write_frames

BASE = ("--workers", "0", "--epochs", "1", "--storage", "runs", "--name", "r")


@pytest.mark.parametrize(("setting", "names"), [
    ("model.slots=3", ["unknown config key 'model.slots'"]),
    ("trian.lr=0.1", ["unknown config key 'trian'"]),
    ("train.batch_size=two", ["train.batch_size must be an integer", "'two'"]),
    ("model.num_slots=[1, 2]", ["model.num_slots must be an integer"]),
    ("train.lr=fast", ["train.lr must be a number"]),
    ("model.shrink_threshold=-0.1", ["model.shrink_threshold", "-0.1"]),
    ("model.num_slots=0", ["model.num_slots must be >= 1, got 0"]),
    ("data.window=0", ["data.window must be >= 1"]),
    ("train.on_nonfinite=ignore", ["train.on_nonfinite must be one of"]),
])
def test_bad_setting_is_refused_with_the_key_named(tmp_path, setting, names):
    # data.path is a folder that does not exist: config errors must come before any data access.
    proc = memae("train", "--data", str(tmp_path / "nodata"), *BASE, "--set", setting,
                 cwd=tmp_path, timeout=120)
    assert_user_error(proc, *names)
    assert not (tmp_path / "runs").exists()


def test_window_longer_than_shortest_training_video_is_refused(tmp_path):
    src = tmp_path / "src"
    write_frames(src / "long", 40)
    write_frames(src / "short", 10)
    data = tmp_path / "data"
    proc = memae("prepare", "folder", "--src", str(src), "--dst", str(data), "--size", "16",
                 "16", "--workers", "1", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = memae("train", "--data", str(data), *BASE, "--set", "data.window=16",
                 "--set", "model.num_slots=20", "--set", "train.batch_size=2", cwd=tmp_path)
    assert_user_error(proc, "data.window=16", "shortest training video (10 frames)")
    assert not list(tmp_path.rglob("state.pt"))
