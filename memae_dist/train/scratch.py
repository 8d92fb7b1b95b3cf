"""A worker's node-local scratch folders, named by the process that owns them.

A worker writes each checkpoint to a local folder before Ray uploads it, downloads the
checkpoint it resumes from into another, and stages TensorBoard events in a third. A worker
killed meanwhile (worker-failure recovery, a preempted node, Ctrl-C) cannot remove its folder,
and a checkpoint copy is the size of the model and optimizer state. Named with the host and the
process id, a folder whose process is gone is recognisably orphaned: the next worker on the
node removes it, and never a folder a live worker, here or on another host sharing the
temp folder, is still using.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

log = logging.getLogger("memae_dist.train")

KINDS = ("memae-checkpoint", "memae-restore", "memae-tb")
_NAME = re.compile(r"^(?P<kind>memae-[a-z]+)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-")


def _host() -> str:
    # A hash, not the name itself: host names hold dashes and characters a folder name may not.
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary folder ``<kind>-<host>-<pid>-<random>`` that ``sweep_orphans`` can judge."""
    if kind not in KINDS:
        raise ValueError(f"unknown scratch kind {kind!r}; one of {', '.join(KINDS)}")
    return tempfile.TemporaryDirectory(prefix=f"{kind}-{_host()}-{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_orphans(root: str | Path | None = None) -> list[Path]:
    """Remove this host's scratch folders whose process has exited; the removed paths."""
    root = Path(root or tempfile.gettempdir())
    host, removed = _host(), []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _NAME.match(entry.name)
        if (match is None or match["kind"] not in KINDS or match["host"] != host
                or int(match["pid"]) == os.getpid() or _alive(int(match["pid"]))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    if removed:
        log.info("removed %d scratch folder(s) left in %s by workers that were stopped",
                 len(removed), root)
    return removed
