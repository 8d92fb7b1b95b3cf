"""Secrets never leak: a whole prepare -> train -> evaluate run on S3 is scanned for the key."""

from __future__ import annotations

from pathlib import Path

import boto3

from tests.conftest import DUMMY_SECRET
from tests.faults.helpers import memae, write_ucsd


def _bucket_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def test_s3_run_writes_the_secret_nowhere(s3_server, s3_bucket, tmp_path):
    bucket = s3_bucket.split("/")[2]
    data, runs = f"s3://{bucket}/data", f"s3://{bucket}/runs"
    src = write_ucsd(tmp_path / "ped2", train=2, test=1, n=24)
    logs = []
    for args in (
        ("prepare", "ucsd-ped2", "--src", str(src), "--dst", data, "--size", "16", "16",
         "--workers", "1", "--no-progress"),
        ("train", "--data", data, "--workers", "0", "--epochs", "1", "--storage", runs,
         "--name", "r", "--set", "model.num_slots=20", "--set", "train.batch_size=4",
         "--set", "train.max_steps_per_epoch=2", "--set", "data.shuffle_buffer=0"),
        ("evaluate", "--checkpoint", f"{runs}/r", "--data", data, "--out",
         str(tmp_path / "eval"), "--no-progress"),
    ):
        proc = memae(*args, cwd=tmp_path)
        assert proc.returncode == 0, (args[0], proc.stderr[-3000:])
        logs += [proc.stdout, proc.stderr]
    objects = _bucket_objects(s3_server, bucket)
    assert any(k.startswith("data/") and k.endswith("manifest.json") for k in objects)
    assert any(k.startswith("runs/r/") and k.endswith("state.pt") for k in objects), objects
    secret = DUMMY_SECRET.encode()
    leaks = [f"s3://{bucket}/{k}" for k, body in objects.items() if secret in body]
    local = [p for p in Path(tmp_path).rglob("*") if p.is_file() and not p.is_symlink()]
    assert (tmp_path / "eval" / "metrics.json") in local
    leaks += [str(p) for p in local if secret in p.read_bytes()]
    leaks += [f"output of command {i // 2}" for i, text in enumerate(logs) if DUMMY_SECRET in text]
    assert not leaks, leaks
