"""What kind of place a URI names, and paths within it.

A URI is a local path, ``file:///abs/path`` or ``s3://bucket/prefix``; anything else, a
mistyped scheme included, is refused here with a one-line reason, before any storage is touched.
"""

from __future__ import annotations

import os
import posixpath
import re
from urllib.parse import unquote, urlsplit

from memae_dist.data.redact import redact_text
from memae_dist.errors import UserError


def is_remote(uri: str) -> bool:
    """True for object-store URIs (s3://), False for local paths and file:// URIs."""
    scheme = uri_scheme(uri)
    if scheme == "s3":
        netloc = urlsplit(uri).netloc
        if "@" in netloc or ":" in netloc:
            # A bucket name holds neither: this is user:password@, and would be echoed (and
            # logged) everywhere the URI is; the keys belong in the environment. A secret with
            # a '/' in it ends the netloc early: then nothing of the URI is shown.
            shown = redact_text(uri) if "@" in netloc else f"{uri_scheme(uri)}://***"
            raise UserError(f"{shown}: an S3 URI must not hold credentials; set "
                            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
        if not netloc:
            raise UserError(f"S3 URI must name a bucket: {uri!r} (s3://BUCKET/PATH)")
        if "//" in uri[len("s3://"):].rstrip("/"):  # '?' and '#' are key characters here
            # S3 keys may hold "//", but pyarrow refuses them, and it is a slip far more often.
            raise UserError(f"{uri!r} has an empty path component ('//'); write "
                            "s3://BUCKET/PREFIX/... with single slashes")
        return True
    if scheme == "":
        _refuse_mistyped_uri(uri)
        return False
    if scheme == "file":
        return False
    raise UserError(f"unsupported URI scheme {scheme!r} in {uri!r} (use a path, file:// or s3://)")


def join(uri: str, *parts: str) -> str:
    """Append path components to a URI or local path, keeping its kind."""
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    if not clean:
        return uri
    if uri_scheme(uri) == "":
        return os.path.join(uri, *clean)
    is_remote(uri)  # "s3://" + "x" would make "s3:/x", a local path
    return posixpath.join(uri.rstrip("/"), *clean)


def local_path(uri: str) -> str:
    """Absolute local path of a plain path or file:// URI."""
    scheme = uri_scheme(uri)
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise UserError(f"file:// URI must be local (file:///abs/path), got {uri!r}")
        if "?" in uri or "#" in uri:
            # In a URI they end the path, so "runs#2" would silently be "runs".
            raise UserError(f"{uri!r}: '?' and '#' end a file:// URI's path; write them as %3F "
                            "and %23, or give a plain path")
        return os.path.abspath(unquote(parts.path))  # file:///a%20b is the folder "a b"
    if scheme == "":
        _refuse_mistyped_uri(uri)
        return os.path.abspath(os.path.expanduser(uri))
    raise UserError(f"{uri!r} is not a local path")


def absolute(uri: str) -> str:
    """A local path made absolute (``~`` expanded), for processes whose working directory is
    not this one (Ray workers, Tune trials); URIs, and an unset path, as they are."""
    return uri if not uri or is_remote(uri) else local_path(uri)


def uri_scheme(uri: str) -> str:
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    return match.group(1).lower() if match else ""


def _refuse_mistyped_uri(path: str) -> None:
    # "s3:/b/x" or "s3//b/x" would otherwise become local folders named "s3:" or "s3": on a
    # cluster, checkpoints in one job's throw-away working directory.
    if (re.match(r"[A-Za-z][A-Za-z0-9+.-]*:(/|$)", path) or path.startswith("s3//")
            or re.match(r"(?i)(s3[an]?|gs|gcs|az|abfss?|hdfs|https?|file):", path)):
        raise UserError(f"{path!r} looks like a mistyped URI: write s3://BUCKET/PATH for S3, "
                        f"file:///ABS/PATH, or ./{path} for a local folder of that name")


def s3_key(uri: str) -> str:
    path = uri[len("s3://") :].strip("/")
    if not path:
        raise UserError(f"S3 URI must name a bucket: {uri!r}")
    return path
