"""``score --videos``: raw camera footage -> a prepared dataset, on the fly, ready to score.

Video files or a folder of them (local, or an s3:// prefix that is downloaded first) go through
the folder importer into a ``test`` split, at the frame size the checkpoint was trained on. The
prepared copy is kept (by default next to the scores file): a rerun reuses every finished video,
and ``report`` reads its frames for the reconstruction pictures.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from memae_dist.data.manifest import load_manifest
from memae_dist.data.storage import StorageConfig, fsspec_fs, is_remote, local_path
from memae_dist.errors import UserError

log = logging.getLogger("memae_dist.score")


def default_prepared_uri(out_uri: str) -> str:
    """Where ``--videos`` are prepared when no ``--prepared`` is given: ``<out>_frames``."""
    base = re.sub(r"\.parquet$", "", out_uri.rstrip("/"))
    return f"{base}_frames"


def checkpoint_frame_size(config: dict, storage: StorageConfig | None = None
                          ) -> tuple[int, int] | None:
    """Frame size of the data the checkpoint was trained on, when that manifest is reachable."""
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
    from memae_dist.data.prepare import run_import

    with tempfile.TemporaryDirectory(prefix="memae-videos-") as tmp:
        folder, origin = _local_source(src, Path(tmp), storage)
        log.info("preparing %s -> %s at %dx%d", src, dst, *size)
        try:
            return run_import("folder", src=str(folder), dst=dst, size=tuple(size),
                              labels=labels, split="test", workers=workers, progress=progress,
                              storage_cfg=storage)
        except UserError as exc:  # name the user's files, not their staged copies
            raise UserError(str(exc).replace(str(folder), origin)) from None


def _local_source(src: str, tmp: Path, storage: StorageConfig | None) -> tuple[Path, str]:
    """A local folder holding the sources (the folder itself, a link to one file, a download)
    and the location it stands for."""
    if is_remote(src):
        fs, path = fsspec_fs(src, storage)
        if not fs.exists(path):
            raise UserError(f"--videos: nothing at {src}")
        dest = tmp / "videos"
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(dest), recursive=True)
            return dest, src.rstrip("/")
        dest.mkdir()
        fs.get(path, str(dest / os.path.basename(path)))
        return dest, src.rsplit("/", 1)[0]
    local = Path(local_path(src))
    if local.is_dir():
        return local, str(local)
    if not local.is_file():
        raise UserError(f"--videos: no such file or folder: {src}")
    dest = tmp / "videos"
    dest.mkdir()
    try:
        (dest / local.name).symlink_to(local)
    except OSError:  # file systems without symlinks
        shutil.copy2(local, dest / local.name)
    return dest, str(local.parent)


def prepared_uri(out_uri: str, prepared: str | None) -> str:
    uri = prepared or default_prepared_uri(out_uri)
    return uri if is_remote(uri) else local_path(uri)
