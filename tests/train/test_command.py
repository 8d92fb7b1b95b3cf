"""``memae-dist train`` end to end: interrupted with SIGINT, resumed by the same command; refused
while another live process holds the run.

The CLI runs as a real subprocess that starts its own local Ray; data and checkpoints live in
the S3 server on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memae_dist.data.lock import LOCK_FILE, RunLock
from memae_dist.data.storage import exists, join, pyarrow_fs, read_bytes
from memae_dist.train.checkpoint import checkpoint_epoch, ray_registered, restore_point

pytestmark = pytest.mark.slow
RECIPE = Path(__file__).parents[2] / "configs" / "ped2_lite.yaml"
# ped2_lite's model and schedule, shrunk to a 16x16 synthetic set and a few steps.
SHRINK = ["model.num_slots=50", "model.shrink_threshold=0.02", "data.shuffle_buffer=16",
          "train.batch_size=8", "train.lr=1e-3", "train.max_steps_per_epoch=2",
          "train.cpus_per_worker=0.5"]
# Room for the SIGINT to land mid-run however fast the machine trains an epoch.
EPOCHS = 4


def upload_folder(local: str, uri: str) -> None:
    import pyarrow.fs as pafs

    fs, path = pyarrow_fs(uri)
    # use_threads=False: pyarrow < 19 deadlocks copying more files than it has IO threads to
    # S3 (apache/arrow#15233); the product's own uploads go file by file (train/transfer.py).
    pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs, use_threads=False)


def train_command(data: str, storage: str) -> list[str]:
    cmd = [sys.executable, "-m", "memae_dist.cli", "train", "--config", str(RECIPE),
           "--workers", "2", "--storage", storage, "--name", "R", "--data", data,
           "--epochs", str(EPOCHS)]
    for item in SHRINK:
        cmd += ["--set", item]
    return cmd


def test_sigint_then_same_command_finishes_one_history(tiny_data, s3_bucket, tmp_path):
    bucket = s3_bucket.rsplit("/", 1)[0]
    data, storage = f"{bucket}/data", f"{bucket}/runs"
    upload_folder(tiny_data, data)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MEMAE_OBJECT_STORE_BYTES"] = str(150 * 2**20)
    cmd = train_command(data, storage)
    run = join(storage, "R")

    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    # The first checkpoint, once Ray has registered it (the one a rerun restores).
    while not (ray_registered(run) or "").endswith("checkpoint_epoch_0001"):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=300)
    first = (tmp_path / "first.log").read_text()
    assert rc == 130, first[-3000:]
    assert "rerun the same command to resume" in first
    assert not exists(join(run, LOCK_FILE))  # released on Ctrl-C
    interrupted = json.loads(read_bytes(join(run, "history.json")))
    assert 1 <= len(interrupted) < EPOCHS
    # What a rerun continues from: the newest whole checkpoint. The run's history.json is
    # written after the checkpoint, so the signal may have come between the two.
    kept = checkpoint_epoch(restore_point(run))
    assert 1 <= kept <= len(interrupted) + 1

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    # Relayed from the rank-0 worker with its time and level; no colour codes in a log file.
    last = [line for line in second.stderr.splitlines() if f"epoch {EPOCHS}/{EPOCHS} " in line]
    assert len(last) == 1 and "RayTrainWorker pid=" in last[0], second.stderr[-3000:]
    assert " INFO memae_dist.train: epoch" in last[0]
    assert "\x1b[" not in second.stdout + second.stderr
    history = json.loads(read_bytes(join(run, "history.json")))
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    # The epochs covered by that checkpoint are kept as they were, not re-run.
    same = min(kept, len(interrupted))
    assert [r["loss"] for r in history[:same]] == [r["loss"] for r in interrupted[:same]]
    assert history[0]["run_starts"] == 1 and history[-1]["run_starts"] == 2
    assert not exists(join(run, LOCK_FILE))
    csv_rows = read_bytes(join(run, "history.csv")).decode().strip().splitlines()
    assert len(csv_rows) == EPOCHS + 1 and csv_rows[0].startswith("epoch,")


def test_second_process_on_a_live_run_is_refused_before_any_work(tiny_data, tmp_path):
    storage = str(tmp_path / "runs")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with RunLock(join(storage, "R"), None, 120):  # this test process is the live holder
        twin = subprocess.run(train_command(tiny_data, storage), cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
    assert twin.returncode == 2, (twin.stdout + twin.stderr)[-3000:]
    error = [line for line in twin.stderr.splitlines() if line.startswith("memae-dist: error:")]
    assert len(error) == 1 and f"run {storage}/R is in use by another process" in error[0]
    assert f"pid {os.getpid()}" in error[0] and "Traceback" not in twin.stderr
    assert not (tmp_path / "runs").exists()  # the twin wrote nothing; the holder left nothing
