"""The ``--out`` folder of ``evaluate``, ``report`` and ``tune``: a local folder, or an S3 prefix.

They write a folder of tables and figures with local tools (matplotlib, atomic local
files). For an ``s3://`` --out they write into a temporary local folder and upload it once the
command has succeeded: a failed or stopped run uploads nothing (a stopped sweep publishes its
table of what ran), and Ctrl-C or SIGTERM during the upload (seconds) takes effect once it is
done. A local --out folder that a failed or stopped run made is removed again. The file a
reader opens first
(``commit``: ``metrics.json``, ``index.html``) is removed before and uploaded after the rest, and
the previous result's own files that this one does not have are removed in between, so the
prefix never shows one result's index over another's figures, as ``report.clear_previous`` does
for a local folder. Other objects under the prefix are left alone.
"""

from __future__ import annotations

import fnmatch
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from memae_dist.commands.common import local_folder
from memae_dist.data import storage as st
from memae_dist.errors import UserError


@contextmanager
def output_folder(value: str, storage: st.StorageConfig | None, *, commit: str,
                  owned: Sequence[str], flag: str = "--out", resume: bool = False,
                  publish_interrupted: bool = False) -> Iterator[Path]:
    """Yield the local folder to write into. ``owned``: glob patterns, relative to the folder,
    of every file the command may write (``videos/*.png``), ``commit`` among them. ``resume``:
    an S3 prefix's published files are fetched into the folder first, for a rerun to continue
    from. ``publish_interrupted``: what the folder holds is published on Ctrl-C or SIGTERM too
    (a stopped sweep's table is its record); an interrupted fetch publishes nothing."""
    if not value.strip() or not st.is_remote(value):
        folder = local_folder(value, flag)
        made = None if publish_interrupted else st.first_missing_folder(str(folder))
        try:
            yield folder
        except BaseException:
            # As nothing is uploaded for an S3 --out: a failed or stopped run leaves no folder
            # of its own making, only whole ones (an existing folder lacks its commit file).
            if made:
                shutil.rmtree(made, ignore_errors=True)
            raise
        return
    st.check_bucket(value, storage)  # before any work, like the local checks
    if st.is_file(value, storage):
        raise UserError(f"{flag} {value}: is a file; give a folder (a prefix) for the results")
    with tempfile.TemporaryDirectory(prefix="memae-out-") as tmp:
        if resume:
            fetch(value, Path(tmp), storage, owned)
        try:
            yield Path(tmp)
        except KeyboardInterrupt:  # the CLI's SIGTERM is one too
            if publish_interrupted:
                _publish(Path(tmp), value, storage, commit, owned)
            raise
        _publish(Path(tmp), value, storage, commit, owned)


def _publish(folder: Path, prefix: str, storage: st.StorageConfig | None, commit: str,
             owned: Sequence[str]) -> None:
    try:
        with signals_deferred():  # seconds: a stop lands before the publishing or after it
            upload(folder, prefix, storage, commit=commit, owned=owned)
    except UserError as exc:
        raise UserError(f"{exc}; the results were not published to {prefix}: rerun the "
                        "same command to publish them") from None


def fetch(prefix: str, folder: Path, storage: st.StorageConfig | None,
          owned: Sequence[str]) -> None:
    """Copy the ``owned`` files already under ``prefix`` into ``folder``: a staging folder a
    rerun continues from (and is checked against), as it would a local one."""
    for name in _owned_files(prefix, storage, owned):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(st.read_bytes(st.join(prefix, name), storage))


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then act as usual: a prefix half
    replaced would hold no index and a mix of two results' figures. (Handlers, not a signal
    mask: the storage clients' own threads would take a masked signal for the process.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


def upload(folder: Path, prefix: str, storage: st.StorageConfig | None, *, commit: str,
           owned: Sequence[str]) -> None:
    """Copy ``folder``'s files under ``prefix``, ``commit`` last (see the module docstring)."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    st.delete(st.join(prefix, commit), storage)
    for name in names:
        if name != commit:
            st.write_bytes_atomic(st.join(prefix, name), (folder / name).read_bytes(), storage)
    for stale in set(_owned_files(prefix, storage, owned)) - set(names):
        st.delete(st.join(prefix, stale), storage)
    if commit in names:
        st.write_bytes_atomic(st.join(prefix, commit), (folder / commit).read_bytes(), storage)


def _owned_files(prefix: str, storage, owned: Sequence[str]) -> list[str]:
    """The files under ``prefix`` that match one of the ``owned`` patterns."""
    return [name for name in st.file_sizes(prefix, storage, missing_ok=True)
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in owned)]
