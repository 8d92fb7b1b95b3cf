"""``ray job submit --working-dir .`` against a real two-node cluster and a real S3 server.

One test, one cluster (starting it is the slow part): prepare a dataset in S3 and run the doctor
as a job, train as a job until SUCCEEDED with checkpoints in the bucket, resubmit under the same
``--name`` and watch it resume, then submit with a broken storage URI and see it end FAILED in
seconds with the doctor's message in the job logs; last, stop a sweep job after its first trial
and find the table of what ran in the bucket.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import boto3
import pytest

from memae_dist.doctor import storage_fix
from tests.cluster.localcluster import LocalCluster
from tests.conftest import DUMMY_SECRET

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[2]
RUNTIME_ENV = "cluster/runtime_env.yaml"
TINY = ["--set", "model.num_slots=50", "--set", "train.batch_size=8", "--set",
        "data.shuffle_buffer=16", "--set", "data.stride=4", "--set",
        "train.max_steps_per_epoch=2"]
# 2 CPUs per worker on a 3-CPU head and a 2-CPU node: one training worker per node.
SCALE = ["--workers", "2", "--cpus-per-worker", "2"]


@pytest.fixture
def cluster(s3_server):
    # Started after s3_server: the nodes inherit AWS_* as pods inherit them from a Secret.
    cluster = LocalCluster(head_cpus=3, worker_cpus=2)
    try:
        yield cluster
    finally:
        cluster.shutdown()
        assert cluster.pids() == []


def keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def submit_ok(cluster: LocalCluster, entrypoint: list[str], sid: str) -> str:
    start = time.monotonic()
    run = cluster.submit(entrypoint, REPO, runtime_env=RUNTIME_ENV, submission_id=sid)
    print(f"job {sid}: {time.monotonic() - start:.0f} s")  # shown with -s, or on failure
    logs = cluster.logs(sid)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\n{logs[-4000:]}"
    assert cluster.job(sid)["status"] == "SUCCEEDED"
    assert DUMMY_SECRET not in logs + run.stdout + run.stderr
    return logs


def test_jobs_train_resume_and_fail_fast_on_a_two_node_cluster(cluster, s3_server, s3_bucket):
    bucket = s3_bucket.split("/")[2]
    data, runs = f"s3://{bucket}/data", f"s3://{bucket}/runs"

    # Data into S3, then the doctor against both nodes, in one job.
    logs = submit_ok(cluster, ["bash", "-c",
                               f"python -m memae_dist.cli prepare synthetic --dst {data} "
                               f"--size 16 16 --workers 2 && python -m memae_dist.cli doctor "
                               f"--storage {runs} --data {data}"], "prep-doctor")
    table = logs[logs.index("CHECK"):]
    assert "0 failed" in table
    node_rows = [ln for ln in table.splitlines() if re.match(r"storage\s+\S+/\w{6}\s+PASS", ln)]
    manifest_rows = [ln for ln in table.splitlines()
                     if re.match(r"manifest\s+\S+/\w{6}\s+PASS", ln)]
    assert len(node_rows) == 2 and len(manifest_rows) == 2, table
    assert re.search(r"cluster\s+-\s+PASS\s+2 nodes alive, 5 CPUs", table), table
    assert not [k for k in keys(s3_server, bucket, "runs/") if ".memae-doctor" in k]

    # Train: the console script, as the README shows it; one epoch, a worker on each node.
    train = ["memae-dist", "train", "--data", data, "--storage", runs, "--name", "job",
             *SCALE, *TINY]
    logs = submit_ok(cluster, [*train, "--epochs", "1"], "train-1")
    assert f"storage {runs}/job" in logs  # the logs name where the run lives
    assert "preflight passed" in logs and "all 2 nodes" in logs  # every node checked
    assert f"checkpoint: {runs}/job/checkpoint_epoch_0001" in logs
    stored = keys(s3_server, bucket, "runs/job/")
    assert "runs/job/checkpoint_epoch_0001/state.pt" in stored
    assert "runs/job/history.json" in stored

    # Resubmitting with the same --name (and a new submission id) resumes.
    logs = submit_ok(cluster, [*train, "--epochs", "2"], "train-2")
    assert "resuming" in logs and "after epoch 1" in logs
    stop_a_train_job(cluster, train)
    assert "runs/job/checkpoint_epoch_0002/state.pt" in keys(s3_server, bucket, "runs/job/")

    # A broken storage URI fails in seconds, before any training worker starts.
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    run = cluster.submit([*train, "--storage", f"s3://{missing}/runs", "--name", "broken"],
                         REPO, runtime_env=RUNTIME_ENV, submission_id="broken", timeout=120)
    wall = time.monotonic() - start
    assert run.returncode == 1  # `ray job submit` reports the job's failure
    job = cluster.job("broken")
    assert job["status"] == "FAILED", job
    # From the job server accepting the submission to FAILED; most of it is the driver's
    # Python start-up (imports), the preflight itself fails on its first S3 request.
    lifetime = (job["end_time"] - job["start_time"]) / 1000
    print(f"job broken: FAILED after {lifetime:.0f} s ({wall:.0f} s with the CLI)")
    assert lifetime < 60, f"the broken job took {lifetime:.0f} s to fail"
    logs = cluster.logs("broken")
    assert f"S3 bucket '{missing}' does not exist" in logs
    assert storage_fix("does not exist", "s3://x") in logs  # the doctor's fix, verbatim
    assert "preflight failed, nothing was started" in logs
    assert DUMMY_SECRET not in logs

    stop_a_sweep_job(cluster, s3_server, bucket, data)


def stop_a_train_job(cluster: LocalCluster, train: list[str]) -> None:
    """`ray job stop` during training ends it as a SIGTERM, like a sweep's: it was taken for a
    Ctrl-C (exit 130, "interrupted"), Ray's handler having replaced the CLI's in the preflight."""
    run = cluster.submit([*train, "--name", "stopped", "--epochs", "100"], REPO,
                         runtime_env=RUNTIME_ENV, submission_id="train-stop", wait=False)
    assert run.returncode == 0, run.stderr[-3000:]
    deadline = time.monotonic() + 300
    while "epoch 1/100" not in cluster.logs("train-stop"):
        assert cluster.job("train-stop")["status"] in ("PENDING", "RUNNING"), \
            cluster.logs("train-stop")[-3000:]
        assert time.monotonic() < deadline, "no epoch ended within 5 minutes"
        time.sleep(2)
    assert cluster.stop("train-stop").returncode == 0
    logs = cluster.logs("train-stop")
    assert cluster.job("train-stop")["status"] == "STOPPED", logs[-3000:]
    assert "memae-dist: terminated; rerun the same command to resume" in logs, logs[-3000:]


def stop_a_sweep_job(cluster: LocalCluster, s3_server: str, bucket: str, data: str) -> None:
    """`ray job stop` on a sweep after its first trial: the job's runtime env gives the driver
    time to write and publish the table of what ran (Ray's default is SIGKILL after 3 s)."""
    out = f"s3://{bucket}/sweep-out"
    sweep = ["memae-dist", "tune", "--space", "smoke", "--config", "demo", "--data", data,
             "--val-from-test", "1", "--storage", f"s3://{bucket}/sweeps", "--name", "sweep",
             "--out", out, "--no-test", "--samples", "3", "--max-concurrent", "1",
             "--workers-per-trial", "1", "--cpus-per-worker", "0.5", *TINY[2:],
             "--set", "train.epochs=2", "--set", "train.tensorboard=false"]
    run = cluster.submit(sweep, REPO, runtime_env=RUNTIME_ENV, submission_id="sweep",
                         wait=False)
    assert run.returncode == 0, run.stderr[-3000:]
    deadline = time.monotonic() + 420
    while "TERMINATED" not in cluster.logs("sweep"):  # Tune's status table: a trial ended
        assert cluster.job("sweep")["status"] in ("PENDING", "RUNNING"), cluster.logs("sweep")
        assert time.monotonic() < deadline, "no trial ended within 7 minutes"
        time.sleep(2)
    stop = cluster.stop("sweep")
    assert stop.returncode == 0, stop.stderr[-3000:]
    logs = cluster.logs("sweep")
    assert cluster.job("sweep")["status"] == "STOPPED", logs[-3000:]
    assert "memae-dist: terminated; rerun the same command to resume" in logs, logs[-3000:]
    assert "sweep-out/trials.csv" in keys(s3_server, bucket, "sweep-out/")
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    table = s3.get_object(Bucket=bucket, Key="sweep-out/trials.csv")["Body"].read().decode()
    assert "COMPLETED" in table, table
