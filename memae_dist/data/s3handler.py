"""An S3 filesystem that keeps its retry policy when it is pickled to another process.

``pyarrow.fs.S3FileSystem`` pickles its endpoint, region and timeouts but not its
``retry_strategy``: a filesystem handed to Ray (``RunConfig(storage_filesystem=...)``, a
dataset's ``filesystem=``) is rebuilt in the workers with pyarrow's default of 3 quick
attempts, and a server restart of a few seconds fails the checkpoint upload. This handler
pickles only (endpoint, region) and rebuilds the real filesystem, with
``storage.MAX_ATTEMPTS`` retries, in whatever process uses it. Streams are the native ones of
the wrapped filesystem, so data does not pass through Python.
"""

from __future__ import annotations

import pyarrow.fs as pafs


class RetryingS3Handler(pafs.FileSystemHandler):
    def __init__(self, endpoint: str | None, region: str | None) -> None:
        self.endpoint = endpoint
        self.region = region
        self._fs: pafs.S3FileSystem | None = None

    def __reduce__(self):
        return (RetryingS3Handler, (self.endpoint, self.region))

    @property
    def fs(self) -> pafs.S3FileSystem:
        if self._fs is None:
            from memae_dist.data.storage import s3_filesystem

            self._fs = s3_filesystem(self.endpoint, self.region)
        return self._fs

    def __eq__(self, other) -> bool:
        return isinstance(other, RetryingS3Handler) and (self.endpoint, self.region) == (
            other.endpoint, other.region)

    def __hash__(self) -> int:
        return hash((self.endpoint, self.region))

    def get_type_name(self) -> str:
        return "s3-retrying"

    def equals(self, other) -> bool:
        return self == other

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete every bucket of an S3 endpoint")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)
