"""Is the S3 endpoint there, and is it S3? Fast answers for a command's start.

The storage clients retry patiently (right in the middle of a run); these checks make a
mistyped, stopped or wrong endpoint fail in seconds, naming its address.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit

from memae_dist.data.redact import redact_url
from memae_dist.errors import UserError

CONNECT_TIMEOUT_S = 3.0
# An unsigned request for a bucket is answered in well under a second by any S3 service; an
# endpoint that takes a connection and then says nothing would hold every request the storage
# clients make for their full read timeout, retried: minutes before the first error.
ANSWER_TIMEOUT_S = 10.0
# What S3 services (AWS, MinIO, Ceph, SeaweedFS, moto, ...) put in the answer to an unsigned
# request for a bucket: an XML error (NoSuchBucket, AccessDenied, ...) or a listing.
_S3_MARKERS = (b"<Error>", b"<Error ", b"ListBucketResult")
_PROBE = {"enabled": False, "reached": set()}


def enable_endpoint_probe() -> None:
    """Probe each S3 endpoint once, before this process's first request to it (the CLI does).

    The storage clients' patient retries are right in the middle of a run and wrong at its
    start: a mistyped or stopped endpoint must fail in seconds with its address, not after
    minutes of backoff. Ray workers never probe: a worker started during an outage retries.
    """
    _PROBE["enabled"] = True


def probe_endpoint(endpoint: str | None, force: bool = False, uri: str = "") -> None:
    """One TCP connection to ``endpoint``, then, given an s3:// ``uri``, one unsigned request
    for its bucket (when probing is enabled, or ``force``: checks such as the doctor's, on any
    node, must answer in seconds too)."""
    if not endpoint or endpoint in _PROBE["reached"] or not (force or _PROBE["enabled"]):
        return
    reason = connect_error(endpoint)
    if reason:
        where = f"cannot reach {uri}: " if uri else ""
        raise UserError(f"{where}{reason}: check storage.endpoint_url / AWS_ENDPOINT_URL and "
                        "the network")
    bucket = urlsplit(uri).netloc if uri.startswith("s3://") else ""
    problem = bucket and answer_problem(endpoint, bucket)
    if problem:  # "no such bucket", "not valid JSON" or minutes of retries would mislead
        raise UserError(f"cannot use {uri}: {problem[0]}: check storage.endpoint_url / "
                        f"AWS_ENDPOINT_URL {problem[1]}")
    _PROBE["reached"].add(endpoint)


def connect_error(endpoint: str) -> str | None:
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return f"S3 endpoint {redact_url(endpoint)} is unreachable ({reason.lower()})"
    return None


def _ask(endpoint: str, bucket: str, timeout: float) -> tuple[int, bytes]:
    """Status and first bytes of one unsigned GET of ``bucket`` (no credentials are sent)."""
    url = f"{endpoint.rstrip('/')}/{quote(bucket)}?max-keys=0"
    # Direct, as the S3 client connects (it reads no proxy variables): a proxy's own error page
    # must not pass for the endpoint's answer.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read(8192)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(8192)


def answer_problem(endpoint: str, bucket: str) -> tuple[str, str] | None:
    """What is wrong with ``endpoint``'s answer to one unsigned GET of ``bucket`` (no
    credentials are sent), with the advice for it; None when it answers like S3, or cannot be
    asked now (the storage client will say why).

    A web server on the endpoint's address (a storage product's web console on the wrong
    port, say) answers 404 for any bucket, which would read as "no such bucket", or 200 with
    a page for any path, which would read as a damaged file. A server that takes the
    connection and says nothing would hold every request of the storage clients for minutes.
    """
    try:
        status, body = _ask(endpoint, bucket, ANSWER_TIMEOUT_S)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if not isinstance(reason, TimeoutError):
            return None
        return (f"S3 endpoint {redact_url(endpoint)} takes connections but does not answer "
                f"(no reply in {ANSWER_TIMEOUT_S:g} s)", "and the service behind it")
    # A server error says nothing about what the server is (some S3 test servers fail
    # unsigned requests with a bare 500).
    if status >= 500 or any(m in body for m in _S3_MARKERS):
        return None
    return (f"S3 endpoint {redact_url(endpoint)} does not answer like an S3 service "
            f"(HTTP {status} without an S3 reply)", "(the S3 API's address, not a web console's)")
