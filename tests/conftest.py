"""Shared storage fixtures: an S3 server (moto, HTTP on loopback) and fresh buckets in it.

``s3_server`` (session) yields the endpoint URL and points the standard AWS environment at it
with dummy credentials; ``s3_bucket`` (per test) creates a uniquely named bucket and yields
``s3://<bucket>/data``. ``ray_local`` starts Ray after the AWS environment is set, so Ray
workers inherit it.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
DUMMY_SECRET = "dummy-secret-key-for-tests"


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of an in-process S3 server; AWS_* variables point at it for the session."""
    import moto.server as server_mod  # the dev extra installs moto[server]

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request log lines
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN",
                    "AWS_DEFAULT_REGION"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
        mp.setenv("AWS_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never wait on instance metadata
        yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """``s3://<fresh bucket>/data``; the bucket and its objects are removed afterwards."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    yield f"s3://{name}/data"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """A small local Ray, started after the S3 environment so workers inherit it.

    4 logical CPUs on any machine: two training workers plus Ray Data's read tasks.
    """
    import ray

    from memae_dist.runtime import start_local_ray

    if not ray.is_initialized():
        start_local_ray(4, 256 * 2**20, logging_level="WARNING")
    yield ray


@pytest.fixture(scope="session")
def shared_ped2() -> Path:
    """The shared UCSD Ped2 folder ("frames" layout); skips when the shared data is absent."""
    root = SHARED_DATA / "ucsd_ped2"
    if not (root / "training" / "frames").is_dir():
        pytest.skip(f"shared Ped2 data not found at {root} (../shared/data from the repo root)")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, ray_local) -> str:
    """A small synthetic set (16x16, 3 train + 2 test videos of 40 frames) for training tests."""
    from memae_dist.data.importers.synthetic import SyntheticConfig, generate_synthetic

    dst = str(tmp_path_factory.mktemp("tiny") / "data")
    cfg = SyntheticConfig(seed=1, size=(16, 16), train_videos=3, test_videos=2,
                          frames_per_video=40)
    generate_synthetic(dst, cfg, workers=2)
    return dst
