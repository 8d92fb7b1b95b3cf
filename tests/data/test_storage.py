import os
import socket
import time

import pyarrow.fs as pafs
import pytest

from memae_dist.data import endpoint, storage
from memae_dist.errors import UserError
from tests.conftest import DUMMY_SECRET


def test_uri_kinds_and_join(tmp_path):
    assert not storage.is_remote(str(tmp_path))
    assert not storage.is_remote(f"file://{tmp_path}")
    assert storage.is_remote("s3://bucket/prefix")
    with pytest.raises(UserError, match="gs://"):
        storage.is_remote("gs://bucket/x")
    assert storage.join("s3://b/p/", "train", "01.parquet") == "s3://b/p/train/01.parquet"
    assert storage.join("s3://b", "x") == "s3://b/x"
    assert storage.join(f"file://{tmp_path}", "a") == f"file://{tmp_path}/a"
    assert storage.join(str(tmp_path), "a/", "b") == os.path.join(str(tmp_path), "a", "b")
    assert storage.local_path(f"file://{tmp_path}/a") == f"{tmp_path}/a"
    with pytest.raises(UserError):
        storage.local_path("s3://b/x")
    # No bucket: refused, not joined into "s3:/runs", a local folder named "s3:".
    for bare in ("s3://", "s3:///runs"):
        with pytest.raises(UserError, match="S3 URI must name a bucket"):
            storage.join(bare, "runs")


def test_storage_config_validation():
    with pytest.raises(UserError, match="storage.endpoint_url"):
        storage.StorageConfig(endpoint_url="localhost:9000")
    with pytest.raises(UserError, match="credentials") as err:
        storage.StorageConfig(endpoint_url="http://user:hunter22@host:9000")
    assert "hunter22" not in str(err.value)
    with pytest.raises(UserError, match="storage.region"):
        storage.StorageConfig(region="US East")
    # Ports that are no port and broken IPv6 hosts are refused as settings, not tracebacks
    # later, and a password beside them is still not repeated.
    for bad in ("http://host:abc", "http://host:99999", "http://host:0", "http://[::1"):
        with pytest.raises(UserError, match=r"^storage.endpoint_url must look like "
                                            r"http\(s\)://host\[:port\]"):
            storage.StorageConfig(endpoint_url=bad)
    assert storage.StorageConfig(endpoint_url="http://[::1]:9000").endpoint_url
    # Any password is refused unseen: with a '/' (AWS secret keys hold them), a space, a '['.
    for bad in ("http://key:hunter22@[::1", "http://key:hunter22@host:abc",
                "http://key:hun/ter22@host:9000", "http://key:hun ter22@host:9000"):
        with pytest.raises(UserError, match="must not contain credentials") as err:
            storage.StorageConfig(endpoint_url=bad)
        assert "hun" not in str(err.value)


def test_storage_config_resolves_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    cfg = storage.StorageConfig().resolved()
    assert (cfg.endpoint_url, cfg.region) == ("http://s3-specific:2", "eu-west-1")
    explicit = storage.StorageConfig(endpoint_url="http://mine:3", region="us-west-2").resolved()
    assert (explicit.endpoint_url, explicit.region) == ("http://mine:3", "us-west-2")
    # A bad value from the environment is named by its variable, without its password.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://key:hunter22@minio:9000")
    with pytest.raises(UserError, match="^AWS_ENDPOINT_URL_S3 must not contain cred") as err:
        storage.StorageConfig().resolved()
    assert "hunter22" not in str(err.value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "EU West")
    with pytest.raises(UserError, match="^AWS_DEFAULT_REGION must be a region name"):
        storage.StorageConfig().resolved()


def test_an_s3_uri_with_keys_in_it_is_refused_without_them():
    with pytest.raises(UserError) as err:
        storage.is_remote("S3://AKIDEXAMPLE:hunter22@bucket/data")
    assert str(err.value).startswith("S3://***@bucket/data: an S3 URI must not hold cred")
    with pytest.raises(UserError) as err:  # AWS secrets may hold a '/'
        storage.is_remote("s3://AKIDEXAMPLE:wJal/rXUtn@bucket/data")
    assert str(err.value).startswith("s3://***: an S3 URI must not hold cred")
    assert "wJal" not in str(err.value) and "rXUtn" not in str(err.value)
    assert storage.is_remote("s3://bucket/a@b/c")  # '@' in a key is fine


def test_removing_empty_folders_passes_over_missing_ones(tmp_path):
    made = tmp_path / "made"
    (made / "kept").mkdir(parents=True)
    (made / "kept" / "f").write_text("x")
    storage.remove_empty_folders(str(made / "never" / "deeper"), str(made))
    assert (made / "kept" / "f").exists()
    (made / "kept" / "f").unlink()
    storage.remove_empty_folders(str(made / "kept"), str(made))
    assert list(tmp_path.iterdir()) == []
    storage.remove_empty_folders("never-made", str(made))  # returns, though never at `made`


@pytest.mark.parametrize("form", ["path", "file"])
def test_local_round_trip(tmp_path, form):
    root = str(tmp_path / "ds") if form == "path" else f"file://{tmp_path}/ds"
    uri = storage.join(root, "sub", "blob.bin")
    assert not storage.exists(uri)
    storage.write_bytes_atomic(uri, b"one")
    storage.write_bytes_atomic(uri, b"two")  # replaces in place
    assert storage.read_bytes(uri) == b"two"
    assert storage.exists(uri) and storage.exists(storage.join(root, "sub"))
    assert storage.listdir(storage.join(root, "sub")) == ["blob.bin"]  # no temp files left
    fs, path = storage.pyarrow_fs(uri)
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "ds/sub/blob.bin")
    ffs, fpath = storage.fsspec_fs(uri)
    assert ffs.cat_file(fpath) == b"two"
    storage.delete(root)
    assert not storage.exists(root)
    storage.delete(root)  # deleting twice is fine


def test_local_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nope.bin")
    with pytest.raises(UserError, match="nope.bin"):
        storage.read_bytes(missing)
    with pytest.raises(UserError, match="not found"):
        storage.listdir(str(tmp_path / "nodir"))


def test_s3_round_trip(s3_bucket, s3_server):
    uri = storage.join(s3_bucket, "train", "blob.bin")
    storage.makedirs(s3_bucket)
    assert not storage.exists(uri)
    storage.write_bytes_atomic(uri, b"x" * 1000)
    assert storage.read_bytes(uri) == b"x" * 1000
    assert storage.exists(storage.join(s3_bucket, "train"))
    assert storage.listdir(s3_bucket) == ["train"]
    assert storage.listdir(storage.join(s3_bucket, "train")) == ["blob.bin"]
    fs, path = storage.pyarrow_fs(uri)
    assert isinstance(fs, pafs.S3FileSystem) and path == uri[len("s3://"):]
    ffs, fpath = storage.fsspec_fs(uri)
    assert ffs.cat_file(fpath) == b"x" * 1000
    storage.delete(s3_bucket)
    assert not storage.exists(uri)


def test_s3_missing_bucket_and_key(s3_server):
    with pytest.raises(UserError) as err:
        storage.read_bytes("s3://no-such-bucket-here/x.bin")
    msg = str(err.value)
    assert "no-such-bucket-here" in msg and s3_server in msg and DUMMY_SECRET not in msg
    with pytest.raises(UserError, match="does not exist"):
        storage.makedirs("s3://no-such-bucket-here/prefix")


def test_s3_missing_key_names_uri(s3_bucket):
    uri = storage.join(s3_bucket, "missing.bin")
    with pytest.raises(UserError, match="not found") as err:
        storage.read_bytes(uri)
    assert uri in str(err.value)


def test_unreachable_endpoint_fails_fast_without_secrets(s3_server, monkeypatch):
    # As in the CLI: probe each endpoint before the first request (library calls retry).
    monkeypatch.setitem(endpoint._PROBE, "enabled", True)
    port = _closed_port()
    cfg = storage.StorageConfig(endpoint_url=f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        storage.write_bytes_atomic("s3://bucket/x.bin", b"1", cfg)
    assert time.monotonic() - start < 20
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "s3://bucket/x.bin" in msg
    assert "unreachable" in msg and DUMMY_SECRET not in msg


def test_a_file_uri_is_read_the_standard_way(tmp_path):
    """Percent escapes decode (what pathlib's as_uri() writes and pyarrow reads); '?' and '#'
    would end the path, so "file:///runs#2" would silently name "runs": refused."""
    spaced = tmp_path / "raw space" / "東口"
    assert storage.local_path(spaced.as_uri()) == str(spaced)
    assert storage.local_path(f"file://{tmp_path}/a%23b") == f"{tmp_path}/a#b"
    for uri in (f"file://{tmp_path}/runs#2", f"file://{tmp_path}/q?x=1", f"file://{tmp_path}/q?"):
        with pytest.raises(UserError, match=r"'\?' and '#' end a file:// URI's path; write them "
                                            r"as %3F and %23"):
            storage.local_path(uri)
    # Plain paths keep them as they are.
    assert storage.local_path(f"{tmp_path}/runs#2?") == f"{tmp_path}/runs#2?"


@pytest.mark.parametrize("uri", ["s3://b//x", "s3://b/x//y", "s3://b/x//y/", "s3://b/q?x//z",
                                 "s3://b/a#b//c"])
def test_an_s3_uri_with_an_empty_path_component_is_refused(uri):
    with pytest.raises(UserError, match=r"empty path component \('//'\)"):
        storage.is_remote(uri)
    assert storage.is_remote("s3://b/x/y//")  # only trailing slashes: the same prefix


@pytest.mark.parametrize("typo", ["s3:/b/x", "s3:b/x", "S3:/b", "gs:/b/x", "s3//b/x", "s3:"])
def test_a_mistyped_uri_is_not_taken_for_a_local_folder(typo, tmp_path):
    with pytest.raises(UserError, match="mistyped URI") as err:
        storage.is_remote(typo)
    assert f"./{typo}" in str(err.value)
    with pytest.raises(UserError, match="mistyped URI"):
        storage.local_path(typo)
    # What the message offers for a local folder of that name works.
    assert not storage.is_remote(f"./{typo}")
    assert not storage.is_remote(str(tmp_path / "s3:" / "x"))


def test_without_an_endpoint_aws_itself_is_probed(monkeypatch, capsys):
    # No AWS_ENDPOINT_URL and no route to AWS: one line at once, not minutes of retries.
    from memae_dist.cli import main

    assert storage.aws_endpoint(None) == "https://s3.us-east-1.amazonaws.com"
    assert storage.aws_endpoint("eu-west-3") == "https://s3.eu-west-3.amazonaws.com"
    assert storage.aws_endpoint("cn-north-1") == "https://s3.cn-north-1.amazonaws.com.cn"
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    closed = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(storage, "aws_endpoint", lambda region: closed)
    assert main(["data", "info", "s3://some-bucket/data"]) == 2
    assert capsys.readouterr().err.startswith(
        f"memae-dist: error: cannot reach s3://some-bucket/data: S3 endpoint {closed} is "
        "unreachable (connection refused)")


def _closed_port() -> int:
    with socket.socket() as sock:  # a port nobody listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
