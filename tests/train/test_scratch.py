"""Scratch folders of killed workers are found and removed; live or foreign ones are kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from memae_dist.train.scratch import _host, scratch_dir, sweep_orphans

# A worker stand-in: makes its scratch folders, fills one, says so, then waits to be killed.
CHILD = textwrap.dedent("""
    import sys, time
    from memae_dist.train.scratch import scratch_dir
    dirs = [scratch_dir(kind) for kind in ("memae-checkpoint", "memae-restore", "memae-tb")]
    with open(dirs[0].name + "/state.pt.tmp", "wb") as f:
        f.write(b"x" * 4096)
    print(" ".join(d.name for d in dirs), flush=True)
    time.sleep(600)
""")


def start_child(tmp_path) -> tuple[subprocess.Popen, list[str]]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE,
                             text=True)
    return child, child.stdout.readline().split()


def test_a_killed_workers_folders_are_removed_and_a_live_ones_kept(tmp_path, caplog):
    dead, dead_dirs = start_child(tmp_path)
    live, live_dirs = start_child(tmp_path)
    try:
        dead.send_signal(signal.SIGKILL)  # no finaliser runs: the folders stay behind
        dead.wait(timeout=30)
        assert len(dead_dirs) == 3 and all(os.path.isdir(d) for d in dead_dirs)
        foreign = tmp_path / f"memae-checkpoint-{'0' * 8}-{dead.pid}-abc"  # another host
        foreign.mkdir()
        unrelated = tmp_path / f"memae-videos-{_host()}-{dead.pid}-abc"  # not a worker's
        unrelated.mkdir()
        with caplog.at_level("INFO", logger="memae_dist.train"):
            removed = sweep_orphans(tmp_path)
        assert sorted(map(str, removed)) == sorted(dead_dirs)
        assert not any(os.path.exists(d) for d in dead_dirs)
        assert all(os.path.isdir(d) for d in live_dirs)
        assert foreign.is_dir() and unrelated.is_dir()
        assert "removed 3 scratch folder(s)" in caplog.text
        assert sweep_orphans(tmp_path) == []  # nothing left to judge
    finally:
        live.kill()
        live.wait(timeout=30)
    assert sorted(map(str, sweep_orphans(tmp_path))) == sorted(live_dirs)


def test_own_folders_are_kept_and_names_carry_host_and_pid(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    with scratch_dir("memae-checkpoint") as mine:
        assert os.path.basename(mine).startswith(f"memae-checkpoint-{_host()}-{os.getpid()}-")
        assert sweep_orphans() == [] and os.path.isdir(mine)
    with pytest.raises(ValueError, match="unknown scratch kind"):
        scratch_dir("memae-other")
