"""Storage errors cut down to a short reason that holds no secret.

Every storage failure becomes a one-line user error or a log line. Before any of it is shown, the
values of the AWS secret variables and the user:password of an endpoint URL become ``***``.
"""

from __future__ import annotations

import os
import re

SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")

_REASONS = (
    (("NO_SUCH_BUCKET", "NoSuchBucket"), "bucket does not exist"),
    (("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"),
     "access denied (check the AWS credentials in the environment)"),
    (("NETWORK_CONNECTION", "curlCode: 7", "Couldn't connect", "Could not connect",
      "Connection refused", "Failed to connect", "timed out", "curlCode: 28"),
     "endpoint unreachable"),
)


def error_reason(exc: OSError) -> str:
    """A few words for what went wrong: the known S3 failures by name, else the first line."""
    text = scrub_secrets(str(exc))
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileExistsError):
        return "a file of that name is in the way"
    if isinstance(exc, NotADirectoryError):
        return "a file is in the way of a folder on that path"
    for needles, reason in _REASONS:
        if any(n in text for n in needles):
            return reason
    if exc.errno and exc.strerror:  # a local failure: "no space left on device", ...
        return exc.strerror.lower()
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:300]


def scrub_secrets(text: str) -> str:
    # Short values would blank out ordinary words; real keys are 16+ characters.
    for var in SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    # The key id names the key rather than being it, yet it is half of a credential and has
    # no place in a log; only a real one (AKIA... and 16+ characters) is looked for.
    key_id = os.environ.get("AWS_ACCESS_KEY_ID")
    if key_id and len(key_id) >= 16:
        text = text.replace(key_id, "***")
    return text


# The user:password part of any URL in a text (scheme://user:password@host).
# A '/' may sit in it too (AWS secret keys hold them), so up to the token's last '@'.
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^\s]*@")


# The value of an assignment whose key names a secret (``--set storage.secret_key=...``, a
# misplaced credential): up to the ": " of the message around it, a space or the end.
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b([\w.-]*(?:secret|password|passwd|token|access_key|credential)[\w.-]*\s*=)"
    r"(\S+?)(?=:\s|\s|$)")


def redact_text(text: str) -> str:
    """``text`` with the AWS secrets, every URL's user:password and the value of every
    assignment to a key that names a secret replaced by ``***``: for a message that may echo
    what the user typed (``--set storage.endpoint_url=...``)."""
    text = _SECRET_ASSIGNMENT.sub(r"\1***", scrub_secrets(text))
    return _URL_USERINFO.sub(r"\1***@", text)


def redact_url(url: str) -> str:
    """One URL (a setting's value, not a text) without its user:password. Not by urlsplit: a
    password with a '/' in it ends the netloc early, a '[' or a bad port makes it raise; and a
    value is one word even with a space in it, so up to its last '@'."""
    return _VALUE_USERINFO.sub(r"\1***@", url)


_VALUE_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://).*@")
