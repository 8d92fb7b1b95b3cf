"""Moving checkpoint folders between a worker's scratch folder and the run's storage.

Uploads are checked, not trusted: each file is streamed and closed explicitly and its stored
size compared, and ``state.pt`` goes last, so a folder cut short is never taken for a
checkpoint (``checkpoint.is_complete``). What a cut-off upload leaves in a local folder is
removed by the next run (``drop_cut_off_uploads``).
"""

from __future__ import annotations

import logging
import re
import uuid
from contextlib import suppress
from pathlib import Path

from memae_dist.data.storage import StorageConfig, join
from memae_dist.layout import CHECKPOINT_RE, STATE_FILE, TENSORBOARD_DIR

log = logging.getLogger("memae_dist.train")

# upload_file's temporary name for a file it streams into a local folder
_UPLOAD_TEMP = re.compile(r".+\.tmp-[0-9a-f]{32}")


def upload_dir(local: Path, uri: str, storage: StorageConfig | None = None) -> None:
    """Copy a finished checkpoint folder to ``uri``; ``state.pt`` goes last, so a folder
    without it (an interrupted upload) is never taken for a checkpoint.

    Each file is written and closed explicitly, then its stored size checked: pyarrow's
    ``copy_files`` only logs a failed multipart upload ("Error ignored when destroying file"),
    which would let a checkpoint without its ``state.pt`` be registered as the latest.
    """
    from memae_dist.data.storage import pyarrow_fs

    fs, path = pyarrow_fs(uri, storage)
    fs.create_dir(path, recursive=True)
    names = sorted(p.name for p in local.iterdir() if p.name != STATE_FILE) + [STATE_FILE]
    for name in names:
        upload_file(fs, local / name, f"{path}/{name}")


def upload_file(fs, local: Path, path: str, chunk: int = 8 * 2**20) -> None:
    """Stream one local file to ``fs``; raises OSError unless all of it arrived.

    An S3 object appears only when its upload completes; a local file is streamed under a
    temporary name and renamed, so a copy cut short is never taken for a whole one."""
    final, path = path, (f"{path}.tmp-{uuid.uuid4().hex}" if fs.type_name == "local" else path)
    try:
        out = fs.open_output_stream(path)
        try:
            with local.open("rb") as src:
                while data := src.read(chunk):
                    out.write(data)
        finally:
            out.close()  # completes (or fails) the upload: the error surfaces here, not in a log
        size = fs.get_file_info(path).size
        if size != local.stat().st_size:
            raise OSError(f"upload of {final} stored {size} of {local.stat().st_size} bytes")
        if path != final:
            fs.move(path, final)
    except BaseException:
        if path != final:
            with suppress(OSError):
                fs.delete_file(path)
        raise


def ray_uploader(run_uri: str, storage: StorageConfig | None = None):
    """A ``checkpoint_upload_fn`` for ``ray.train.report``: :func:`upload_dir` instead of
    Ray's ``copy_files``, so a failed upload raises before Ray registers the checkpoint."""

    def upload(checkpoint, dir_name: str):
        import ray.train

        from memae_dist.data.storage import portable_fs

        uri = join(run_uri, dir_name)
        upload_dir(Path(checkpoint.path), uri, storage)
        fs, path = portable_fs(uri, storage)
        return ray.train.Checkpoint(path=path, filesystem=fs)

    return upload


def download_dir(uri: str, local: Path, storage: StorageConfig | None = None) -> None:
    import pyarrow.fs as pafs

    from memae_dist.data.storage import pyarrow_fs

    fs, path = pyarrow_fs(uri, storage)
    pafs.copy_files(path, str(local), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())


def drop_cut_off_uploads(run_uri: str, storage: StorageConfig | None = None) -> None:
    """Delete what uploads cut off mid-file (a worker killed while it wrote a checkpoint or
    its TensorBoard events) left: a local folder's temporary files, an S3 bucket's unfinished
    multipart uploads (stored and billed until aborted, though no listing shows them). Nothing
    removes them later. Run under the run's lock, so no upload is under way."""
    from memae_dist.data.storage import delete, file_sizes
    from memae_dist.data.uri import is_remote

    files = file_sizes(run_uri, storage, missing_ok=True)
    if is_remote(run_uri):
        _abort_cut_off_multipart(run_uri, files, storage)
        return
    for path in files:
        folder, _, name = path.rpartition("/")
        if _uploaded_to(folder) and _UPLOAD_TEMP.fullmatch(name):
            delete(join(run_uri, path), storage)


def _uploaded_to(folder: str) -> bool:
    """A folder of the run that ``upload_file`` writes into."""
    return bool(CHECKPOINT_RE.match(folder)) or folder == TENSORBOARD_DIR


def _abort_cut_off_multipart(run_uri: str, files: dict[str, int],
                             storage: StorageConfig | None) -> None:
    from memae_dist.data.storage import fsspec_fs

    fs, path = fsspec_fs(run_uri, storage)
    bucket, _, prefix = path.partition("/")
    prefix = f"{prefix}/" if prefix else ""
    # MinIO lists uploads only under a whole key: the state.pt a checkpoint folder lacks is
    # asked for by name, besides the listing of the run's prefix that AWS S3 answers.
    folders = {p.rpartition("/")[0] for p in files if CHECKPOINT_RE.match(p.rpartition("/")[0])}
    lacking = [f"{prefix}{f}/{STATE_FILE}" for f in sorted(folders) if f"{f}/{STATE_FILE}"
               not in files]
    aborted = []
    try:
        found = {u["UploadId"]: u["Key"] for key in [prefix, *lacking]
                 for page in _multipart_uploads(fs, bucket, key) for u in page
                 if _uploaded_to(u["Key"][len(prefix):].rpartition("/")[0])}
        for upload_id, key in found.items():
            with suppress(FileNotFoundError):  # finished or aborted meanwhile
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
                aborted.append(key[len(prefix):])
    except OSError as exc:  # a store without the calls, or no right to them (PermissionError)
        log.warning("could not abort the unfinished uploads of %s (%s): a bucket lifecycle "
                    "rule that aborts incomplete multipart uploads removes them", run_uri,
                    type(exc).__name__)
    if aborted:
        log.info("aborted %d unfinished upload(s) cut off mid-file: %s", len(aborted),
                 ", ".join(sorted(aborted)))


def _multipart_uploads(fs, bucket: str, prefix: str):
    """Pages of the bucket's unfinished multipart uploads under ``prefix``."""
    markers: dict[str, str] = {}
    while True:
        page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers)
        yield page.get("Uploads", [])
        if not page.get("IsTruncated"):
            return
        markers = {"KeyMarker": page["NextKeyMarker"],
                   "UploadIdMarker": page["NextUploadIdMarker"]}
