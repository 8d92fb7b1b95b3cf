"""One live process per run, sweep or dataset import: a lock file with a heartbeat in its folder.

Two drivers training the same ``(run.storage, run.name)`` (a job submitted twice, a laptop run
next to a cluster job) would write checkpoints and history into one folder, and each would
resume from the other's checkpoints; two imports into one dataset would each write a manifest
of their own shards over the other's. The driver therefore creates ``RUN/run.lock`` with an
exclusive create (``O_EXCL`` locally, ``If-None-Match: *`` on S3), refreshes its heartbeat
while it trains and deletes it when it stops, including on Ctrl-C. On S3 every later write is a
compare-and-swap (``If-Match`` on the version it read), so a heartbeat never overwrites a lock
someone else took over, and of two drivers taking over one stale lock exactly one wins. A local
folder has no compare-and-swap; there every read-judge-write step (a takeover, a heartbeat, the
release) runs under ``flock`` on the run folder, which gives the same guarantees between
processes that share its kernel (or a filesystem whose ``flock`` spans hosts).

A process killed outright leaves the file behind. It counts as stale, and is taken over, once
its heartbeat is older than ``run.lock_ttl_s``, or at once when it names a process of this
host that no longer exists, so "rerun the same command to resume" keeps working after a crash.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from memae_dist.data.storage import (
    StorageConfig,
    delete,
    exists,
    first_missing_folder,
    fsspec_fs,
    is_remote,
    join,
    local_path,
    makedirs,
    read_bytes,
    remove_empty_folders,
    user_errors,
    write_bytes_atomic,
)
from memae_dist.errors import UserError
from memae_dist.layout import LOCK_FILE

__all__ = ["DEFAULT_LOCK_TTL_S", "LOCK_FILE", "LockInfo", "RunLock", "read_lock"]

DEFAULT_LOCK_TTL_S = 120.0

log = logging.getLogger("memae_dist.train")


@dataclass
class LockInfo:
    owner: str  # a fresh token per holder: a heartbeat never refreshes someone else's lock
    host: str
    pid: int
    started: float  # Unix time
    heartbeat: float  # Unix time of the last refresh

    def age(self) -> float:
        return max(0.0, time.time() - self.heartbeat)

    def holder(self) -> str:
        return f"host {self.host}, pid {self.pid}, last heartbeat {self.age():.0f} s ago"

    def dead_here(self) -> bool:
        """True when the holder was a process of this host that has exited."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        return False


def read_lock(run_uri: str, storage: StorageConfig | None = None) -> LockInfo | None:
    """The lock a run holds now; None when there is none or it cannot be parsed."""
    uri = join(run_uri, LOCK_FILE)
    if not exists(uri, storage):
        return None
    try:
        return _parse(read_bytes(uri, storage))
    except UserError:
        return None


def _parse(data: bytes) -> LockInfo | None:
    try:
        return LockInfo(**json.loads(data))
    except (ValueError, TypeError):
        return None


class RunLock:
    """``with RunLock(run_uri, storage, ttl_s):`` holds the run for this process.

    Raises ``UserError`` naming the run and the holder when another live process has it.
    ``ttl_s == 0`` turns the check off (the heartbeat period is a quarter of ``ttl_s``).
    ``setting``: the setting ``ttl_s`` comes from, named in that error (None: a fixed TTL).
    """

    def __init__(self, run_uri: str, storage: StorageConfig | None, ttl_s: float,
                 what: str = "run", setting: str | None = "run.lock_ttl_s"):
        self.run, self.storage, self.ttl_s, self.what = run_uri, storage, ttl_s, what
        self.setting = setting
        self.uri = join(run_uri, LOCK_FILE)
        now = time.time()
        self.info = LockInfo(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created: str | None = None  # outermost local folder the lock had to create
        self._etag: str | None = None  # S3: the version of the lock this holder wrote last

    def __enter__(self) -> RunLock:
        if self.ttl_s > 0:
            self._acquire()
            self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat",
                                             daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self._release()
        except Exception as err:  # never hide the error that ended training
            log.warning("could not remove the run lock %s: %s", self.uri, err)

    # ------------------------------------------------------------------------------ internals

    def _acquire(self) -> None:
        self._created = first_missing_folder(self.run)
        makedirs(self.run, self.storage)  # local: the folder the lock goes in; S3: the bucket
        for _ in range(3):
            with self._guard():
                if self._try_take():
                    return
        raise UserError(f"{self.what} {self.run}: another process keeps taking its lock "
                        f"{self.uri}; is it being started twice?")

    def _try_take(self) -> bool:
        """One attempt: create the lock, or replace a stale one; raises if it is held."""
        if self._put(IfNoneMatch="*"):
            return True
        found, etag, held = self._held()
        if not found:
            return False  # released meanwhile
        if held is not None and held.age() <= self.ttl_s and not held.dead_here():
            raise UserError(
                f"{self.what} {self.run} is in use by another process ({held.holder()}); "
                f"wait for it to finish, or if it is gone, rerun after its lock expires "
                f"in {self.ttl_s - held.age():.0f} s" + (
                    f" ({self.setting}={self.ttl_s:g})" if self.setting else ""))
        log.warning("taking over the stale lock of %s %s (%s)", self.what, self.run,
                    held.holder() if held else "unreadable")
        if etag is None:  # local, under the guard: nobody else judges it meanwhile
            delete(self.uri, self.storage)
            return self._put(IfNoneMatch="*")
        return self._put(IfMatch=etag)  # S3: replaces exactly the version judged stale

    @contextlib.contextmanager
    def _guard(self):
        """Locally, ``flock`` on the run folder around one read-judge-write step, so that no
        other holder reads or writes the lock in between; on S3 the conditional writes do
        that. Where the folder cannot be locked (NFS emulates ``flock`` with locks that need
        a file open for writing) the step runs unguarded, as it did before."""
        try:
            fd = None if is_remote(self.uri) else os.open(local_path(self.run), os.O_RDONLY)
        except FileNotFoundError:  # the run folder was removed under us: nothing to guard
            fd = None
        if fd is None:
            yield
            return
        try:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # and with it the flock

    def _put(self, **condition: str) -> bool:
        """Write this holder's lock under ``IfNoneMatch="*"`` (create only; ``O_EXCL``
        locally) or, on S3, ``IfMatch=etag`` (replace only that version); False when the
        condition fails."""
        fs, path = fsspec_fs(self.uri, self.storage)
        remote = is_remote(self.uri)
        with user_errors(self.uri, "write", self.storage):
            try:
                if remote:
                    self._etag = fs.pipe_file(path, self._payload(), **condition)["ETag"]
                else:
                    fs.pipe_file(path, self._payload(), mode="create")
            except FileExistsError:  # If-None-Match or O_EXCL
                return False
            except OSError as err:  # a failed If-Match: 412 (EINVAL in s3fs), or 404 if gone
                if remote and (err.errno == errno.EINVAL or isinstance(err, FileNotFoundError)):
                    return False
                raise
        return True

    def _held(self) -> tuple[bool, str | None, LockInfo | None]:
        """(a lock file exists, its S3 version, its holder or None if unreadable).

        S3: the version is read before the body, so an ``IfMatch`` on it fails if the body
        read is not that version's. Locally one re-read covers a lock read between its
        exclusive create and its write."""
        if is_remote(self.uri):  # the object itself: no second existence check
            fs, path = fsspec_fs(self.uri, self.storage)
            with user_errors(self.uri, "check", self.storage):
                try:
                    etag = fs.info(path, refresh=True)["ETag"]
                except FileNotFoundError:
                    return False, None, None
                try:
                    return True, etag, _parse(fs.cat_file(path))
                except FileNotFoundError:  # deleted since: its If-Match will fail
                    return True, etag, None
        held = read_lock(self.run, self.storage)
        if held is not None:
            return True, None, held
        if not exists(self.uri, self.storage):
            return False, None, None
        time.sleep(0.5)
        return True, None, read_lock(self.run, self.storage)

    def _payload(self) -> bytes:
        return json.dumps(asdict(self.info)).encode()

    def _beat(self) -> None:
        period, failing, lost = self.ttl_s / 4, False, False
        while not lost and not self._stop.wait(period):
            try:
                with self._guard():
                    lost = not self._refresh()
                failing = False
            except Exception as err:  # storage hiccup: keep training, try again next beat
                if not failing:
                    log.warning("could not refresh the run lock %s: %s", self.uri, err)
                failing = True
        if lost:
            try:
                held = read_lock(self.run, self.storage)
            except UserError:
                held = None
            by = f"taken over by {held.holder()}" if held else "removed by another process"
            log.error("the lock of %s %s was %s: two processes may be running it", self.what,
                      self.run, by)

    def _refresh(self) -> bool:
        """One heartbeat; False when another holder has the lock now."""
        self.info.heartbeat = time.time()
        if self._etag is not None:
            if self._put(IfMatch=self._etag):
                return True
            # Ours may still be there under a version we never saw (a write whose reply was
            # lost): adopt it if it is ours.
            _, etag, held = self._held()
            if held is None or held.owner != self.info.owner:
                return False
            self._etag = etag
            return True
        held = read_lock(self.run, self.storage)
        if held is not None and held.owner != self.info.owner:
            return False
        write_bytes_atomic(self.uri, self._payload(), self.storage)
        return True

    def _release(self) -> None:
        with self._guard():
            _, etag, held = self._held()
            if held is not None and held.owner == self.info.owner:
                self._delete(etag)
        if self._created:  # a run that stopped before writing anything leaves no trace
            remove_empty_folders(local_path(self.run), self._created)

    def _delete(self, etag: str | None) -> None:
        """Delete the lock: locally under the guard; on S3 only the version read (a
        conditional delete), so a lock taken over since is left to its new holder."""
        if etag is None:
            delete(self.uri, self.storage)
            return
        fs, path = fsspec_fs(self.uri, self.storage)
        bucket, key, _ = fs.split_path(path)
        with user_errors(self.uri, "remove", self.storage):
            try:
                fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
            except FileNotFoundError:
                pass  # gone already
            except OSError as err:
                if err.errno != errno.EINVAL:  # not a 412: a server without conditional
                    delete(self.uri, self.storage)  # deletes (501) gets the plain one
        fs.invalidate_cache(path)
