"""``score --videos``: raw camera footage -> a prepared dataset, on the fly, ready to score.

Video files or a folder of them (local, or an s3:// prefix that is downloaded first) go through
the folder importer into a ``test`` split, at the frame size the checkpoint was trained on. The
prepared copy is kept (by default next to the scores file): a rerun reuses every finished video,
and ``report`` reads its frames for the reconstruction pictures.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path, PurePosixPath

from memae_dist.data.manifest import load_manifest
from memae_dist.data.storage import StorageConfig, fsspec_fs, is_remote, local_path
from memae_dist.errors import UserError

log = logging.getLogger("memae_dist.score")


def default_prepared_uri(out_uri: str) -> str:
    """Where ``--videos`` are prepared when no ``--prepared`` is given: ``<out>_frames``."""
    base = re.sub(r"\.parquet$", "", out_uri.rstrip("/"))
    return f"{base}_frames"


def checkpoint_frame_size(config: dict, storage: StorageConfig | None = None,
                          trained_on: dict | None = None) -> tuple[int, int] | None:
    """Frame size of the data the checkpoint was trained on: its own record (``trained_on``),
    else the training data's manifest when that is reachable (older checkpoints)."""
    if (trained_on or {}).get("size"):
        return tuple(int(n) for n in trained_on["size"])
    path = (config.get("data") or {}).get("path")
    if not path:
        return None
    try:
        return tuple(load_manifest(path, storage).size)
    except UserError:
        return None


def prepare_videos(src: str, dst: str, size: tuple[int, int], *, labels: str | None = None,
                   workers: int | None = None, progress: bool = True,
                   storage: StorageConfig | None = None) -> dict:
    """Import ``src`` (a video file, a folder, or an s3:// prefix) into ``dst``; the manifest."""
    from memae_dist.data import storage as st
    from memae_dist.data.prepare import run_import

    created = st.first_missing_folder(dst)
    with _staging(src) as tmp:
        folder, origin = _local_source(src, tmp, storage)
        log.info("preparing %s -> %s at %dx%d", src, dst, *size)
        try:
            return run_import("folder", src=str(folder), dst=dst, size=tuple(size),
                              labels=labels, split="test", workers=workers, progress=progress,
                              storage_cfg=storage)
        except UserError as exc:  # name the user's files, not their staged copies
            raise UserError(str(exc).replace(str(folder), origin)) from None
        finally:
            # A failed first import leaves no empty folder behind; the shards of the videos
            # that did import stay, for the rerun to keep.
            if created:
                st.remove_empty_folders(st.join(st.local_path(dst), "test"), created)


@contextmanager
def _staging(src: str) -> Iterator[Path]:
    """An empty folder whose path depends on ``src`` alone, removed afterwards.

    The importer knows a finished video by its source's path, size and mtime: staged under a
    fresh temporary name each time, a rerun would prepare every video again. Runs that stage
    the same source take turns (a lock file beside the folder).
    """
    where = src if is_remote(src) else local_path(src)
    folder = Path(tempfile.gettempdir()) / f"memae-videos-{sha256(where.encode()).hexdigest()[:16]}"
    with _locked(f"{folder}.lock"):
        shutil.rmtree(folder, ignore_errors=True)  # left by a run that was killed
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive lock on the file ``path``, removed on the way out (one source scored after
    another leaves no lock files behind). A run that waited on a file the holder has since
    removed locks the new one instead, so two runs never hold different files."""
    while True:
        lock = open(path, "a")  # noqa: SIM115 (held across the yield)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(lock.fileno()), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        lock.close()
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        lock.close()


def _local_source(src: str, tmp: Path, storage: StorageConfig | None) -> tuple[Path, str]:
    """A local folder holding the sources (the folder itself, a link to one file, a download)
    and the location it stands for."""
    if is_remote(src):
        fs, path = fsspec_fs(src, storage)
        if not fs.exists(path):
            raise UserError(f"--videos: nothing at {src}")
        dest = tmp / "videos"
        if fs.isdir(path):
            _download(fs, path.rstrip("/"), dest)
            return dest, src.rstrip("/")
        _check_single_file(src)
        _download(fs, path, dest, single=True)
        return dest, src.rsplit("/", 1)[0]
    local = Path(local_path(src))
    if local.is_dir():
        return local, str(local)
    if not local.is_file():
        raise UserError(f"--videos: no such file or folder: {src}")
    _check_single_file(src)
    dest = tmp / "videos"
    dest.mkdir()
    try:
        (dest / local.name).symlink_to(local)
    except OSError:  # file systems without symlinks
        shutil.copy2(local, dest / local.name)
    return dest, str(local.parent)


def _check_single_file(src: str) -> None:
    """A named file that is no video is refused by its name: staged alone, the importer would
    find no video in its folder and name that folder instead."""
    from memae_dist.data.importers.video_io import VIDEO_EXTS

    suffix = PurePosixPath(src.rstrip("/")).suffix.lower()
    if suffix not in VIDEO_EXTS:
        raise UserError(f"--videos {src}: not a video file (by its extension; videos end in "
                        f"{', '.join(sorted(VIDEO_EXTS))}); give a video, or a folder of them")


def _download(fs, path: str, dest: Path, single: bool = False) -> None:
    """Copy an object, or every object under a prefix, into ``dest``, each file (and folder:
    frame folders) dated by the object's LastModified, so that the importer sees an unchanged
    source as unchanged."""
    infos = {path: fs.info(path)} if single else fs.find(path, detail=True)
    stamps: dict[Path, float] = {}
    for key, info in infos.items():
        if info.get("type") != "file" or key.endswith("/"):
            continue
        target = dest / (os.path.basename(key) if single else os.path.relpath(key, path))
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(target))
        modified = info.get("LastModified")
        stamp = modified.timestamp() if modified is not None else 0.0
        os.utime(target, (stamp, stamp))
        for parent in target.parents:
            if parent == dest.parent:
                break
            stamps[parent] = max(stamps.get(parent, 0.0), stamp)
    for folder, stamp in stamps.items():
        os.utime(folder, (stamp, stamp))


def check_trained_size(size, trained_on: dict | None) -> None:
    """Refuse a --size other than the one the checkpoint records: the model never saw it."""
    trained = tuple((trained_on or {}).get("size") or ())
    if size and trained and tuple(size) != trained:
        raise UserError(f"--size {size[0]} {size[1]}: the checkpoint was trained on "
                        f"{trained[0]}x{trained[1]} frames; drop --size or give "
                        f"{trained[0]} {trained[1]}")


def prepared_uri(out_uri: str, prepared: str | None) -> str:
    uri = prepared or default_prepared_uri(out_uri)
    return uri if is_remote(uri) else local_path(uri)
