"""Storage errors shown to users name the failure and hold no secret."""

import pytest

from memae_dist.data.redact import error_reason, redact_text, redact_url, scrub_secrets


def test_known_s3_failures_get_a_short_reason():
    assert error_reason(FileNotFoundError("x")) == "not found"
    assert error_reason(PermissionError("x")) == "permission denied"
    assert error_reason(OSError("AWS Error NO_SUCH_BUCKET during HeadBucket")) == \
        "bucket does not exist"
    assert error_reason(OSError("curlCode: 7, Couldn't connect to server")) == \
        "endpoint unreachable"
    assert error_reason(OSError("first line\nsecond line")) == "first line"
    assert error_reason(OSError("")) == "OSError"


def test_local_failures_say_what_is_in_the_way(tmp_path):
    import errno
    import os

    afile = tmp_path / "afile"
    afile.write_text("x")
    for call, reason in ((lambda: os.makedirs(afile), "a file of that name is in the way"),
                         (lambda: os.makedirs(afile / "sub"),
                          "a file is in the way of a folder on that path")):
        with pytest.raises(OSError) as err:
            call()
        assert error_reason(err.value) == reason
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(afile))
    assert error_reason(full) == "no space left on device"


def test_secret_values_are_scrubbed_from_reasons(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-1234")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "abc")  # too short to scrub without mangling words
    text = "request signed with s3cr3t-value-1234 failed (abc)"
    assert scrub_secrets(text) == "request signed with *** failed (abc)"
    assert "s3cr3t" not in error_reason(OSError(text))


def test_endpoint_credentials_are_redacted():
    assert redact_url("http://user:pw@minio.local:9000/x") == "http://***@minio.local:9000/x"
    assert redact_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000"


def test_a_message_echoing_what_was_typed_loses_every_credential(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    text = ("--set storage.endpoint_url=http://admin:S3cr3t@minio:9000: bad, "
            "ftp://u:p@h/x and s3://b/k stay, key wJalrXUtnFEMI/K7MDENG")
    assert redact_text(text) == ("--set storage.endpoint_url=http://***@minio:9000: bad, "
                                 "ftp://***@h/x and s3://b/k stay, key ***")


def test_a_secret_typed_into_a_setting_is_not_echoed():
    # Not a setting at all (credentials come from the environment): the error names the key.
    text = ("--set storage.aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY: "
            "unknown config key 'storage.aws_secret_access_key' (valid keys: ...)")
    assert redact_text(text) == ("--set storage.aws_secret_access_key=***: unknown config key "
                                 "'storage.aws_secret_access_key' (valid keys: ...)")
    assert redact_text("--set run.password=hunter2") == "--set run.password=***"
    assert redact_text("--set train.lr=fast: must be a number") == (
        "--set train.lr=fast: must be a number")
