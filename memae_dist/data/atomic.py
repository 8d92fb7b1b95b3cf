"""Write a local file so that readers see the old content or the new one, never a partial file.

The temporary sibling is created like ``open()`` creates files (mode 0666 less the umask), not
like ``tempfile.mkstemp`` (0600): results, scores and exported models are meant to be read by
the rest of a team, and a user who wants them private says so with the umask.

A symbolic link is written through (its target gets the new content, the link stays), and a
target that is not a regular file (a FIFO, a device, a socket) is refused: renaming over it would
replace the special file itself with ours.
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO

from memae_dist.errors import UserError

# The temporary sibling atomic_local writes (a killed writer leaves it behind).
TEMPORARY_NAME = re.compile(r"\..+\.tmp-[0-9a-f]{32}")


@contextmanager
def atomic_local(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; it replaces ``path`` on a clean exit."""
    path = writable_path(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def writable_path(path: str | os.PathLike) -> str:
    """The file a write to ``path`` must replace: a link's target; refused when not a regular
    file (or a missing one)."""
    path = os.path.realpath(os.fspath(path))
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # the write itself says why it cannot be
        return path
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise UserError(f"{path}: is not a regular file (a device, pipe or socket); give a "
                        "file's name")
    return path
