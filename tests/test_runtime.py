"""The local Ray pins its own state API for its processes, and only for them."""

from __future__ import annotations

import os
import signal

import pytest

from memae_dist.runtime import keeping_sigterm_handler
from tests.evaluate.conftest import make_checkpoint
from tests.faults.helpers import memae

# What these tests check happens on a machine without a GPU; on one with GPUs, the commands
# they run are shown none.
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


def test_local_ray_processes_find_their_own_state_api(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=0)
    def api_address() -> str | None:
        return os.environ.get("RAY_API_SERVER_ADDRESS")

    pinned = ray.get(api_address.remote())
    # Ray Train's cleaner in these processes asks this cluster's dashboard, not the newest
    # cluster's on the machine.
    assert pinned is not None
    assert pinned.endswith(ray._private.worker.get_dashboard_url().rsplit(":", 1)[1])
    # This process keeps its own environment (its `ray job submit` goes where it says).
    assert "RAY_API_SERVER_ADDRESS" not in os.environ


def test_a_sigterm_inside_ray_init_ends_as_any_sigterm():
    """Ray's own handler, installed part-way through ray.init, exits with SystemExit(15); the
    caller's handler (the CLI's: "terminated", exit 143) gets the signal instead."""
    class Ended(Exception):
        pass

    def handler(signum, frame):
        raise Ended(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Ended), keeping_sigterm_handler():
            raise SystemExit(signal.SIGTERM)  # what Ray's handler does
        with pytest.raises(SystemExit), keeping_sigterm_handler():
            raise SystemExit(3)  # any other exit is left alone
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_full_session_folder_is_said_before_ray_starts(tmp_path, monkeypatch):
    """Before: a full TMPDIR let Ray's dashboard fail to start after a minute, as Ray's own
    traceback. The folder may not exist yet (Ray makes it): the disk under it is measured."""
    import shutil

    from memae_dist import runtime
    from memae_dist.errors import UserError

    free = shutil.disk_usage(tmp_path).free
    monkeypatch.setattr(runtime, "MIN_RAY_SCRATCH_BYTES", free + 2**30)  # more than there is
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "not" / "made"))
    with pytest.raises(UserError, match=rf"cannot start a local Ray: its session folder "
                                        rf"{tmp_path}/not/made/ray has [0-9.]+ MiB free "
                                        rf"\(\d+ MiB needed\); free some, or set RAY_TMPDIR"):
        runtime.start_local_ray(1, 10**8)
    assert not (tmp_path / "not").exists()


def test_gpus_a_local_ray_cannot_have_are_refused_not_waited_for(tiny_data, tmp_path):
    # Before: Ray waited forever for a GPU that no autoscaler would ever bring.
    ckpt = make_checkpoint(tmp_path / "checkpoint_epoch_0001", tiny_data)
    for verb in (["train", "--config", "demo", "--data", tiny_data, "--storage", "runs",
                  "--name", "g", "--workers", "1", "--epochs", "1"],
                 ["score", "--checkpoint", ckpt, "--data", tiny_data, "--out", "s.parquet",
                  "--workers", "1"]):
        proc = memae(*verb, "--gpus-per-worker", "1", cwd=tmp_path, timeout=300, env=NO_GPU)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1] == (
            "memae-dist: error: --gpus-per-worker asks for 1 GPU at once, and this machine "
            "has 0 that Ray can use: drop --gpus-per-worker to run on its CPUs, or pass "
            "--address of a cluster with GPUs")


def test_a_sweep_refused_its_gpus_has_written_nothing(tmp_path):
    # Before: the refused sweep had carved the validation split and recorded its settings, so
    # the corrected command (without --gpus-per-worker) was refused as a different sweep.
    assert memae("prepare", "synthetic", "--dst", "data", "--workers", "0", "--no-progress",
                 cwd=tmp_path, timeout=120).returncode == 0
    manifest = (tmp_path / "data" / "manifest.json").read_bytes()
    proc = memae("tune", "--space", "smoke", "--data", "data", "--storage", "sweeps", "--name",
                 "s", "--val-from-test", "1", "--gpus-per-worker", "1", "--out", "out",
                 cwd=tmp_path, timeout=300, env=NO_GPU)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "memae-dist: error: --gpus-per-worker asks for 2 GPUs at once")  # 2 workers a trial
    assert (tmp_path / "data" / "manifest.json").read_bytes() == manifest
    assert not (tmp_path / "data" / "val").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # A typo in --val-from-test is still one line before any Ray starts.
    proc = memae("tune", "--space", "smoke", "--data", "data", "--val-from-test", "0",
                 cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "memae-dist: error: --val-from-test must be a count >= 1 or video names, got '0'"], (
        proc.stderr)


def test_a_gpu_asked_for_in_process_that_torch_cannot_see_is_refused(tiny_data, tmp_path):
    # Before: --workers 0 trained and scored on the CPU, and recorded gpus_per_worker 1.
    ckpt = make_checkpoint(tmp_path / "ckpt" / "checkpoint_epoch_0001", tiny_data)
    for verb in (["train", "--config", "demo", "--data", tiny_data, "--storage", "runs",
                  "--name", "g", "--epochs", "1"],
                 ["score", "--checkpoint", ckpt, "--data", tiny_data, "--out", "s.parquet"],
                 ["evaluate", "--checkpoint", ckpt, "--data", tiny_data, "--out", "ev"]):
        proc = memae(*verb, "--workers", "0", "--gpus-per-worker", "1", cwd=tmp_path,
                     timeout=300, env=NO_GPU)
        assert proc.returncode == 2 and proc.stderr == (
            "memae-dist: error: --gpus-per-worker with --workers 0 asks for a GPU in this "
            "process, and torch sees none (no GPU, or a CPU-only torch build): drop "
            "--gpus-per-worker to run on the CPU\n")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # nothing written
