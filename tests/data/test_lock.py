"""The run lock: one live training process per run, stale locks taken over (no Ray).

The end-to-end case (a second ``memae-dist train`` refused while the first trains) is in
``test_command.py``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from memae_dist.data.lock import LOCK_FILE, RunLock, read_lock
from memae_dist.data.storage import exists, join, read_bytes, write_bytes_atomic
from memae_dist.errors import UserError


def plant(run: str, *, host: str, pid: int, age: float) -> None:
    """A lock file as another holder would have left it."""
    now = time.time()
    body = {"owner": "someone-else", "host": host, "pid": pid, "started": now - age - 5,
            "heartbeat": now - age}
    write_bytes_atomic(join(run, LOCK_FILE), json.dumps(body).encode())


def until(condition, timeout: float = 20.0) -> bool:
    """Polls: a heartbeat is due every ttl/4, but a loaded machine may run it late."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("where", ["local", "s3"])
def test_second_holder_is_refused_until_the_first_releases(where, tmp_path, request):
    root = request.getfixturevalue("s3_bucket") if where == "s3" else str(tmp_path / "runs")
    run = join(root, "R")
    with RunLock(run, None, 60):
        held = read_lock(run)
        assert held is not None and held.pid == os.getpid()
        with pytest.raises(UserError) as err, RunLock(run, None, 60):
            pass
        message = str(err.value)
        assert f"run {run} is in use by another process" in message
        assert f"pid {os.getpid()}" in message and "run.lock_ttl_s=60" in message
        assert "\n" not in message
        assert read_lock(run).owner == held.owner  # the refused one did not touch it
    assert not exists(join(run, LOCK_FILE))
    with RunLock(run, None, 60):
        assert read_lock(run).owner != held.owner


def test_lock_of_an_exited_process_here_is_taken_over_at_once(tmp_path, caplog):
    run = str(tmp_path / "runs" / "R")
    plant(run, host=socket.gethostname(), pid=dead_pid(), age=0)
    with caplog.at_level(logging.WARNING, "memae_dist.train"), RunLock(run, None, 600):
        assert read_lock(run).pid == os.getpid()
    assert "taking over the stale lock of run" in caplog.text


def test_lock_of_another_host_counts_until_its_heartbeat_is_older_than_the_ttl(tmp_path):
    run = str(tmp_path / "R")
    plant(run, host="elsewhere", pid=1, age=10)
    with pytest.raises(UserError, match=r"host elsewhere, pid 1, last heartbeat 10 s ago.*"
                                        r"expires in 50 s"), RunLock(run, None, 60):
        pass
    plant(run, host="elsewhere", pid=1, age=61)
    with RunLock(run, None, 60):
        assert read_lock(run).host == socket.gethostname()


def test_heartbeat_refreshes_and_never_overwrites_a_new_holder(tmp_path, caplog):
    run = str(tmp_path / "R")
    with caplog.at_level(logging.ERROR, "memae_dist.train"), RunLock(run, None, 1) as lock:
        first = read_lock(run).heartbeat
        assert until(lambda: read_lock(run).heartbeat > first)
        # Someone took it over (its holder thought ours stale): the heartbeat must leave it.
        # Planted twice: plant() bypasses the folder lock, so a beat between its read and its
        # write could overwrite one plant, not both 0.1 s apart with beats 0.25 s apart.
        plant(run, host="elsewhere", pid=1, age=0)
        time.sleep(0.1)
        plant(run, host="elsewhere", pid=1, age=0)
        assert until(lambda: "was taken over" in caplog.text)
        assert read_lock(run).owner == "someone-else"
        assert lock.info.owner != "someone-else"
    assert "was taken over by host elsewhere" in caplog.text
    assert read_lock(run).owner == "someone-else"  # and releasing leaves the new holder's lock


def test_released_lock_leaves_no_folders_it_created_and_ttl_zero_takes_none(tmp_path):
    run = str(tmp_path / "new" / "runs" / "R")
    with RunLock(run, None, 60):
        assert os.path.isfile(os.path.join(run, LOCK_FILE))
    assert os.listdir(tmp_path) == []
    with RunLock(run, None, 0):
        assert not os.path.exists(run)


def test_unreadable_lock_is_stale(tmp_path):
    run = str(tmp_path / "R")
    os.makedirs(run)
    (tmp_path / "R" / LOCK_FILE).write_text("{not json")
    with RunLock(run, None, 60):
        assert json.loads(read_bytes(join(run, LOCK_FILE)))["pid"] == os.getpid()


def test_s3_heartbeat_is_a_compare_and_swap(s3_bucket, caplog):
    run = join(s3_bucket, "cas")
    with caplog.at_level(logging.WARNING, "memae_dist.train"), RunLock(run, None, 1) as lock:
        # A write whose reply was lost leaves a version this holder never saw: still its own.
        lock._etag = '"00000000000000000000000000000000"'
        first = read_lock(run).heartbeat
        assert until(lambda: read_lock(run).heartbeat > first)
        assert "taken over" not in caplog.text
        plant(run, host="elsewhere", pid=1, age=0)  # once: If-Match makes any beat miss it
        assert until(lambda: "was taken over" in caplog.text)
        assert read_lock(run).owner == "someone-else"
    assert "was taken over by host elsewhere" in caplog.text
    assert read_lock(run).owner == "someone-else"


def test_s3_two_takers_of_one_stale_lock_one_wins(s3_bucket):
    run = join(s3_bucket, "race")
    plant(run, host="elsewhere", pid=1, age=600)
    winner = RunLock(run, None, 60)

    class Late(RunLock):
        """Judges the stale lock, then loses the race to ``winner`` before replacing it."""

        def _held(self):
            found = super()._held()
            if not winner._thread:
                winner.__enter__()
            return found

    try:
        with pytest.raises(UserError, match="is in use by another process"), \
                Late(run, None, 60):
            pass
        assert read_lock(run).owner == winner.info.owner
    finally:
        winner.__exit__(None, None, None)
    assert not exists(join(run, LOCK_FILE))


def test_local_two_takers_of_one_stale_lock_one_wins(tmp_path):
    run = str(tmp_path / "race")
    plant(run, host="elsewhere", pid=1, age=600)
    judged = threading.Event()

    class Slow(RunLock):
        """Judges the stale lock, then dawdles before replacing it."""

        def _held(self):
            found = super()._held()
            judged.set()
            time.sleep(0.5)  # the other taker arrives now
            return found

    first = Slow(run, None, 60)
    taking = threading.Thread(target=first.__enter__)
    taking.start()
    try:
        assert judged.wait(10)
        with pytest.raises(UserError, match="is in use by another process"), \
                RunLock(run, None, 60):
            pass
        taking.join()
        assert read_lock(run).owner == first.info.owner
    finally:
        taking.join()
        first.__exit__(None, None, None)
    assert not exists(join(run, LOCK_FILE))


def test_s3_release_leaves_a_lock_taken_over_after_it_was_read(s3_bucket):
    run = join(s3_bucket, "release")

    class Late(RunLock):
        """Reads its own lock to release it, then loses it before the delete."""

        def _held(self):
            found = super()._held()
            if self._stop.is_set():  # releasing
                plant(run, host="elsewhere", pid=1, age=0)
            return found

    with Late(run, None, 60):
        pass
    assert read_lock(run).owner == "someone-else"
