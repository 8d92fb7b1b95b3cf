"""Staging raw footage for `score --videos`: runs on one source take turns, nothing is left."""

import tempfile
import threading
import time

from memae_dist.evaluate import ingest


def test_runs_on_one_source_take_turns_and_leave_no_lock_file(tmp_path, monkeypatch):
    """A team scoring thousands of clips one by one must not collect a lock file per clip; a
    run that waited on a lock file the holder removed must not run beside the next one."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    src = str(tmp_path / "cam.mp4")
    inside, overlaps, done = [], [], []

    def run() -> None:
        with ingest._staging(src) as folder:
            overlaps.extend(inside)
            inside.append(folder)
            time.sleep(0.1)
            inside.remove(folder)
        done.append(1)

    threads = [threading.Thread(target=run) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(done) == 5 and not overlaps
    assert list((tmp_path / "tmp").iterdir()) == []
