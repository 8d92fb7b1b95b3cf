"""One place that turns a dataset/run URI into filesystems.

URIs: a local path, ``file:///abs/path`` or ``s3://bucket/prefix``. S3 settings (endpoint,
region) come from :class:`StorageConfig` or the standard AWS environment variables
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``).
Credentials are never part of any config: they come only from the environment or the standard
AWS chain, and their values are scrubbed from every error message this module raises.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from memae_dist.data.atomic import atomic_local
from memae_dist.data.endpoint import (
    CONNECT_TIMEOUT_S,
    connect_error,
    probe_endpoint,
)
from memae_dist.data.redact import error_reason, redact_url
from memae_dist.data.uri import (  # noqa: F401 (re-exported: callers import them from here)
    absolute,
    is_remote,
    join,
    local_path,
    s3_key,
)
from memae_dist.errors import UserError

DEFAULT_REGION = "us-east-1"
REQUEST_TIMEOUT_S = 30.0
# Transient faults (dropped connections, a restarting server, 5xx) are retried with exponential
# backoff: 10 attempts give up after about 80 s against a dead port (measured). Ray Data retries
# failed shard reads again on top of that. A command still fails in seconds when the endpoint
# is down at its start: the CLI probes each endpoint once before its first request.
MAX_ATTEMPTS = 10


@dataclass(frozen=True)
class StorageConfig:
    """Where S3 lives. Unset fields fall back to the standard AWS environment variables."""

    # S3-compatible endpoint, e.g. "http://127.0.0.1:9000" (MinIO); None = AWS / environment.
    endpoint_url: str | None = None
    # Region name; None = AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.
    region: str | None = None

    def __post_init__(self) -> None:
        _check_endpoint(self.endpoint_url, "storage.endpoint_url")
        _check_region(self.region, "storage.region")

    def resolved(self) -> StorageConfig:
        """This config with unset fields filled from the environment (what workers should get);
        a bad value found there is named by its variable."""
        endpoint, region = self.endpoint_url, self.region
        for var in (() if endpoint else ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")):
            if os.environ.get(var):
                endpoint = _check_endpoint(os.environ[var], var)
                break
        for var in (() if region else ("AWS_REGION", "AWS_DEFAULT_REGION")):
            if os.environ.get(var):
                region = _check_region(os.environ[var], var)
                break
        region = region or DEFAULT_REGION
        return replace(self, endpoint_url=endpoint, region=region)


def _check_endpoint(url: str | None, name: str) -> str | None:
    if url is None:
        return None
    if "@" in url:  # user:password@, whatever it holds ('/' ends urlsplit's netloc early)
        # Credentials belong in the environment, never in a config that gets logged.
        raise UserError(f"{name} must not contain credentials; "
                        "use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0  # a port that is no number raises
    except ValueError:  # a broken IPv6 host, a port out of range or not a number
        parts, port_ok = None, False
    if not port_ok or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{name} must look like http(s)://host[:port], got {url!r}")
    return url


def _check_region(region: str | None, name: str) -> str | None:
    if region is not None and not re.fullmatch(r"[a-z0-9-]+", region):
        raise UserError(f"{name} must be a region name, got {region!r}")
    return region


def pyarrow_fs(uri: str, cfg: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for ``uri``."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), local_path(uri)
    cfg = (cfg or StorageConfig()).resolved()
    _probe(cfg, uri)
    return s3_filesystem(cfg.endpoint_url, cfg.region), s3_key(uri)


def portable_fs(uri: str, cfg: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """Like :func:`pyarrow_fs`, for a filesystem that is pickled to Ray workers: S3 keeps its
    retry policy there (see ``s3handler``)."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), local_path(uri)
    from memae_dist.data.s3handler import RetryingS3Handler

    cfg = (cfg or StorageConfig()).resolved()
    _probe(cfg, uri)
    handler = RetryingS3Handler(cfg.endpoint_url, cfg.region)
    return pafs.PyFileSystem(handler), s3_key(uri)


def aws_endpoint(region: str | None) -> str:
    """AWS S3's own address for ``region``: probed like any endpoint, so that a run without
    AWS_ENDPOINT_URL and without a route to AWS fails in seconds, not after minutes of retries
    (the S3 clients use this address themselves when no endpoint is set)."""
    region = region or DEFAULT_REGION
    return f"https://s3.{region}.amazonaws.com{'.cn' if region.startswith('cn-') else ''}"


def _probe(cfg: StorageConfig, uri: str) -> None:
    # The address the S3 clients will use: the configured endpoint, else AWS's own.
    probe_endpoint(cfg.endpoint_url or aws_endpoint(cfg.region), uri=uri)


def file_sizes(uri: str, cfg: StorageConfig | None = None,
               missing_ok: bool = False) -> dict[str, int]:
    """Relative path -> size of every file under a folder or prefix, in one recursive
    listing (``missing_ok``: a folder that does not exist has none)."""
    fs, root = pyarrow_fs(uri, cfg)
    root = root.rstrip("/")
    with user_errors(uri, "list", cfg):
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True,
                                                   allow_not_found=missing_ok))
    return {info.path[len(root) + 1:]: info.size for info in infos
            if info.type == pafs.FileType.File}


def unreachable_reason(cfg: StorageConfig | None = None) -> str | None:
    """Why the configured S3 endpoint cannot be reached (one TCP connection), or None; the
    bare fact, for checks that give their own fix."""
    endpoint = (cfg or StorageConfig()).resolved().endpoint_url
    return connect_error(endpoint) if endpoint else None


def fsspec_fs(uri: str, cfg: StorageConfig | None = None):
    """(fsspec filesystem, path inside it) for ``uri``; s3fs instances are cached by s3fs."""
    import fsspec

    if not is_remote(uri):
        return fsspec.filesystem("file"), local_path(uri)
    import s3fs

    cfg = (cfg or StorageConfig()).resolved()
    _probe(cfg, uri)
    fs = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": cfg.endpoint_url, "region_name": cfg.region},
        config_kwargs={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": REQUEST_TIMEOUT_S,
            "retries": {"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        },
    )
    return fs, s3_key(uri)


def describe(uri: str, cfg: StorageConfig | None = None) -> str:
    """The URI plus, for S3, the endpoint it resolves to (for messages; never secrets)."""
    return f"{uri} (S3 endpoint {endpoint_name(cfg)})" if is_remote(uri) else uri


def endpoint_name(cfg: StorageConfig | None = None) -> str:
    """The S3 endpoint this process resolves (settings, then environment), for messages."""
    cfg = (cfg or StorageConfig()).resolved()
    return redact_url(cfg.endpoint_url) if cfg.endpoint_url else f"AWS ({cfg.region})"


@contextmanager
def user_errors(uri: str, action: str, cfg: StorageConfig | None = None) -> Iterator[None]:
    """Turn storage OSErrors inside the block into a one-line UserError naming ``uri``."""
    try:
        yield
    except UserError:
        raise
    except OSError as exc:
        raise UserError(f"cannot {action} {describe(uri, cfg)}: {error_reason(exc)}") from None


def read_bytes(uri: str, cfg: StorageConfig | None = None) -> bytes:
    fs, path = pyarrow_fs(uri, cfg)
    with user_errors(uri, "read", cfg):
        _require(fs, path, uri, cfg, pafs.FileType.File)
        with fs.open_input_stream(path) as f:
            return f.read()


def write_bytes_atomic(uri: str, data: bytes, cfg: StorageConfig | None = None) -> None:
    """Readers see the old content or the new one, never a partial file."""
    fs, path = pyarrow_fs(uri, cfg)
    with user_errors(uri, "write", cfg):
        if is_remote(uri):
            _check_bucket(fs, path, uri, cfg)
        write_atomic_fs(fs, path, data)


def write_atomic_fs(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Atomic write given a filesystem and a path inside it (OSErrors propagate)."""
    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_local(path) as f:
            f.write(data)
    elif isinstance(fs, pafs.S3FileSystem):
        # An S3 object only becomes visible when its (single or multipart) upload completes.
        with fs.open_output_stream(path) as f:
            f.write(data)
    else:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)


def display_uri(fs: pafs.FileSystem, path: str) -> str:
    """A URI naming ``path`` inside ``fs`` for messages (s3://... for S3, else the path)."""
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


def exists(uri: str, cfg: StorageConfig | None = None) -> bool:
    fs, path = pyarrow_fs(uri, cfg)
    with user_errors(uri, "check", cfg):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_folder(uri: str, cfg: StorageConfig | None = None) -> bool:
    """True for a local folder, or an S3 prefix with objects under it (or a bucket root)."""
    fs, path = pyarrow_fs(uri, cfg)
    with user_errors(uri, "check", cfg):
        return fs.get_file_info(path).type == pafs.FileType.Directory


def is_file(uri: str, cfg: StorageConfig | None = None) -> bool:
    """True for a file (an S3 object), False for a folder or nothing."""
    fs, path = pyarrow_fs(uri, cfg)
    with user_errors(uri, "check", cfg):
        return fs.get_file_info(path).type == pafs.FileType.File


def makedirs(uri: str, cfg: StorageConfig | None = None) -> None:
    """Create a local directory; on S3 (no real directories) check that the bucket exists."""
    fs, path = pyarrow_fs(uri, cfg)
    with user_errors(uri, "create", cfg):
        if is_remote(uri):
            _check_bucket(fs, path, uri, cfg)
        else:
            os.makedirs(path, exist_ok=True)


def check_bucket(uri: str, cfg: StorageConfig | None = None) -> None:
    """For an S3 URI: raise a clear UserError when its bucket is missing or unreadable."""
    if not is_remote(uri):
        return
    fs, path = pyarrow_fs(uri, cfg)
    with user_errors(uri, "access", cfg):
        _check_bucket(fs, path, uri, cfg)


def listdir(uri: str, cfg: StorageConfig | None = None) -> list[str]:
    """Sorted names (not paths) of the direct children of a directory / prefix."""
    fs, path = pyarrow_fs(uri, cfg)
    with user_errors(uri, "list", cfg):
        _require(fs, path, uri, cfg, pafs.FileType.Directory)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(info.base_name for info in infos)


def delete(uri: str, cfg: StorageConfig | None = None) -> None:
    """Delete a file or a directory tree; a missing target is not an error."""
    fs, path = pyarrow_fs(uri, cfg)
    with user_errors(uri, "delete", cfg):
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.File:
            fs.delete_file(path)
        elif kind == pafs.FileType.Directory:
            if is_remote(uri) and "/" not in path.strip("/"):
                fs.delete_dir_contents(path)  # never the bucket itself
            else:
                fs.delete_dir(path)


def same_file(a: str, b: str) -> bool:
    """Whether two URIs name one file: local paths resolved (links, ``..``), S3 keys as written."""
    if is_remote(a) != is_remote(b):
        return False
    if is_remote(a):
        return a.split("://", 1)[1].strip("/") == b.split("://", 1)[1].strip("/")
    return os.path.realpath(local_path(a)) == os.path.realpath(local_path(b))


def first_missing_folder(root: str) -> str | None:
    """The outermost folder of a local ``root`` that does not exist yet (None if it does)."""
    if is_remote(root):
        return None
    path, missing = local_path(root), None
    while not os.path.exists(path):
        path, missing = os.path.dirname(path), path
    return missing


def remove_empty_folders(path: str, outermost: str) -> None:
    """rmdir from ``path`` up to ``outermost``; stops at the first folder that is not empty.
    Folders of the chain that were never made are passed over."""
    while True:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            return
        parent = os.path.dirname(path)
        if path == outermost or parent == path:  # "" and "/" are their own parents
            return
        path = parent


# --------------------------------------------------------------------------------- internals


def s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    """This process's pyarrow S3 client for (endpoint, region), with the retry policy above."""
    return _s3_pyarrow(endpoint, region, _cred_key())


def _cred_key() -> str | None:
    # Cache filesystems per access key id so a changed identity gets a fresh client.
    return os.environ.get("AWS_ACCESS_KEY_ID")


_S3_CACHE: dict[tuple[str | None, str | None, str | None], pafs.S3FileSystem] = {}


def _s3_pyarrow(endpoint: str | None, region: str | None, cred_key: str | None):
    key = (endpoint, region, cred_key)
    if key not in _S3_CACHE:
        kwargs = {}
        if endpoint:
            parts = urlsplit(endpoint)
            kwargs = {"endpoint_override": parts.netloc, "scheme": parts.scheme}
        _S3_CACHE[key] = pafs.S3FileSystem(
            region=region or DEFAULT_REGION,
            connect_timeout=CONNECT_TIMEOUT_S,
            request_timeout=REQUEST_TIMEOUT_S,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
            **kwargs,
        )
    return _S3_CACHE[key]


def _check_bucket(fs, path: str, uri: str, cfg: StorageConfig | None) -> None:
    bucket = path.split("/", 1)[0]
    if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        raise UserError(f"S3 bucket {bucket!r} does not exist: {describe(uri, cfg)}")


def _require(fs, path: str, uri: str, cfg: StorageConfig | None, kind: pafs.FileType) -> None:
    info = fs.get_file_info(path)
    if info.type == kind:
        return
    if is_remote(uri) and info.type == pafs.FileType.NotFound:
        _check_bucket(fs, path, uri, cfg)
    what = "file" if kind == pafs.FileType.File else "directory"
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{what} not found: {describe(uri, cfg)}")
    raise UserError(f"not a {what}: {describe(uri, cfg)}")
