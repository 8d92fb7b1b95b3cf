"""``memae-dist doctor`` and the training preflight, against a real local Ray and S3 server."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import boto3
import pytest

from memae_dist.cli import main
from memae_dist.config import load_config
from memae_dist.doctor import (
    FAIL,
    PASS,
    WARN,
    Check,
    address_problem,
    format_table,
    gpu_check,
    preflight,
    run_doctor,
)
from memae_dist.errors import UserError
from memae_dist.node_probe import gpu_info
from memae_dist.train.trainer import fit
from tests.conftest import DUMMY_SECRET


def config(storage, data, *extra):
    return load_config(None, [f"run.storage={storage}", f"data.path={data}", *extra])


def rows(checks: list[Check], name: str) -> list[Check]:
    return [c for c in checks if c.name == name]


def bucket_keys(endpoint: str, uri: str) -> list[str]:
    bucket = uri.split("/")[2]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_doctor_passes_on_s3_and_local_storage_and_cleans_up(
    ray_local, tiny_data, s3_server, s3_bucket, tmp_path, capsys
):
    runs = s3_bucket.rsplit("/", 1)[0] + "/runs"
    assert main(["doctor", "--storage", runs, "--data", tiny_data]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CHECK") and "0 failed" in out and DUMMY_SECRET not in out
    # The markers are gone (pyarrow may leave an empty "runs/" folder marker behind).
    assert [k for k in bucket_keys(s3_server, runs) if "memae-doctor" in k] == []

    checks = run_doctor(config(tmp_path / "runs", tiny_data))
    assert not [c for c in checks if c.failed], format_table(checks)
    assert rows(checks, "ray")[0].status == PASS
    assert rows(checks, "cluster")[0].detail.startswith("1 nodes alive")
    # The driver and the (single) node each did the storage round trip and read the manifest.
    assert [c.node for c in rows(checks, "storage")][0] == "driver"
    assert len(rows(checks, "storage")) == 2 and len(rows(checks, "manifest")) == 2
    assert all(c.status == PASS for c in rows(checks, "storage") + rows(checks, "manifest"))
    node = rows(checks, "node")[0]
    assert node.status == PASS and "memae-dist 0.1.0" in node.detail
    assert rows(checks, "gpus")[0].status in (PASS, WARN)
    assert not (tmp_path / "runs").exists()  # the markers and the folder made for them


def test_doctor_failures_name_their_fix(ray_local, s3_server, s3_bucket, tmp_path, capsys):
    code = main(["doctor", "--storage", "s3://missing-bucket-doctor/runs", "--data", s3_bucket])
    out = capsys.readouterr().out
    assert code == 1
    assert "S3 bucket 'missing-bucket-doctor' does not exist" in out
    assert "create the bucket first" in out  # the storage fix
    assert "no manifest.json in dataset" in out and "prepare the dataset first" in out
    assert "How to fix:" in out and DUMMY_SECRET not in out

    dead = "http://127.0.0.1:1"
    checks = run_doctor(config(tmp_path / "runs", s3_bucket,
                               f"storage.endpoint_url={dead}"))
    storage_ok = rows(checks, "storage")[0]
    manifest = rows(checks, "manifest")[0]
    assert storage_ok.status == PASS  # local folder: the endpoint does not matter
    assert manifest.status == FAIL and "unreachable" in manifest.detail
    assert "storage.endpoint_url" in manifest.fix
    assert manifest.line().count("storage.endpoint_url") == 1  # the advice once, in the fix

    # A local folder this machine cannot make is this machine's problem, not sharing's.
    virtual = rows(run_doctor(config("/proc/memae-doctor/runs", s3_bucket)), "storage")[0]
    assert virtual.status == FAIL and "not shared" not in virtual.fix
    assert virtual.fix == ("no folder can be made there (a read-only or virtual filesystem): "
                           "choose another")
    # A file where the run folder would go, and a dataset of another format version.
    (tmp_path / "a.parquet").write_text("scores")
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "manifest.json").write_text(json.dumps({"format": "memae-dist-frames",
                                                     "format_version": 99}))
    checks = run_doctor(config(tmp_path / "a.parquet" / "runs", str(newer)))
    assert rows(checks, "storage")[0].fix == ("a file stands where the folder would go: point "
                                              "--storage at a folder")
    manifest = rows(checks, "manifest")[0]
    assert "unsupported format_version 99" in manifest.detail
    assert manifest.fix.startswith("prepare the dataset again with this memae-dist")


def test_preflight_fails_in_seconds_before_any_worker(ray_local, tiny_data, s3_server,
                                                      tmp_path):
    cfg = config("s3://missing-bucket-preflight/runs", tiny_data, "train.workers=1",
                 "run.name=never")
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        fit(cfg)
    assert time.monotonic() - start < 15
    msg = str(err.value)
    assert msg.startswith("preflight failed, nothing was started: storage [driver]: ")
    assert "does not exist" in msg and "create the bucket first" in msg
    assert msg.count("memae-dist doctor") == 1 and "\n" not in msg

    with pytest.raises(UserError, match="no manifest.json.*prepare the dataset first"):
        fit(config(tmp_path / "runs" / "team", tmp_path / "nothing", "train.workers=1"))
    assert list(tmp_path.iterdir()) == []  # no marker, no empty storage folder, no run


def test_preflight_checks_the_one_node_of_a_cluster_given_by_address(ray_local, tiny_data,
                                                                    tmp_path, monkeypatch,
                                                                    caplog):
    """That node may be another machine, with its own endpoint and keys."""
    cfg = config(tmp_path / "runs", tiny_data, "run.name=one")
    with caplog.at_level(logging.INFO, "memae_dist"):
        preflight(cfg)
        assert caplog.text.rstrip().endswith("storage and dataset usable from the driver")
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # unused: Ray is initialised here
        preflight(cfg)
    assert caplog.text.rstrip().endswith("usable from the driver and all 1 nodes")


def test_a_node_on_another_s3_endpoint_is_told_so_not_to_create_a_bucket(monkeypatch):
    from memae_dist.data.storage import StorageConfig
    from memae_dist.doctor.storage_checks import _interpret

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5055")
    missing = "S3 bucket 'b' does not exist (s3://b/m (S3 endpoint http://127.0.0.1:5056))"
    result = {"storage": missing, "manifest": missing, "endpoint": "http://127.0.0.1:5056"}
    checks = _interpret(result, "n", "s3://b/m", "s3://b/data", StorageConfig(), False, 0)
    assert [c.status for c in checks] == [FAIL, FAIL]
    for check in checks:
        assert check.fix.startswith("this node resolves S3 endpoint http://127.0.0.1:5056, the "
                                    "driver http://127.0.0.1:5055: set the same AWS_ENDPOINT_URL")
    result["endpoint"] = "http://127.0.0.1:5055"  # the same endpoint: the bucket is missing
    checks = _interpret(result, "n", "s3://b/m", "", StorageConfig(), False, 0)
    assert checks[0].fix.startswith("create the bucket first")


def test_gpu_check_turns_probe_results_into_fixes():
    none = {"nvidia_smi": None, "torch": None, "cuda": None, "error": None}
    assert gpu_check(none, 0, "n").status == PASS
    spare = gpu_check({**none, "nvidia_smi": 2}, 0, "n")
    assert spare.status == WARN and "--num-gpus=2" in spare.fix
    blind = gpu_check({**none, "nvidia_smi": 2, "torch": 0}, 2, "n")
    assert blind.status == FAIL and "CUDA build of torch" in blind.fix
    short = gpu_check({**none, "nvidia_smi": 2, "torch": 1, "cuda": "12.4"}, 2, "n")
    assert short.status == FAIL and "--num-gpus=1" in short.fix
    good = gpu_check({**none, "nvidia_smi": 1, "torch": 1, "cuda": "12.4"}, 1, "n")
    assert good.status == PASS and "CUDA 12.4" in good.detail
    assert gpu_check({**none, "error": "boom"}, 1, "n").status == FAIL
    assert gpu_check(None, 1, "n") is None
    # On this machine: without nvidia-smi, no GPU probe runs at all.
    if shutil.which("nvidia-smi") is None:
        assert gpu_info(0.0) == none


def test_address_problems_are_caught_before_connecting():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: connections are refused
        detail, fix = address_problem(f"127.0.0.1:{closed}")
    assert "cannot reach" in detail and "head node" in fix
    detail, fix = address_problem("http://127.0.0.1:8265")
    assert "job server" in detail and "HOST:6379" in fix
    assert "bad Ray address" in address_problem("headnode")[0]
    assert address_problem(None) is None and address_problem("auto") is None


def test_doctor_never_joins_another_process_private_ray(ray_local, tmp_path):
    """This test process runs a private local Ray; a doctor with no cluster to check must not
    take it for one (Ray's "auto" would), nor check storage from its nodes."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path / "ray")  # where `ray start` would have left its address
    proc = subprocess.run([sys.executable, "-m", "memae_dist.cli", "doctor", "--storage",
                           str(tmp_path / "runs")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no running Ray cluster found" in proc.stdout, proc.stdout
    assert "nodes alive" not in proc.stdout


def test_a_job_server_address_in_ray_address_is_one_line(tmp_path):
    """README and CLUSTER.md export RAY_ADDRESS=http://...:8265 for `ray job submit`; the
    commands a user then runs in that shell say what is wrong instead of Ray's traceback."""
    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}
    proc = subprocess.run([sys.executable, "-m", "memae_dist.cli", "prepare", "synthetic",
                           "--dst", str(tmp_path / "data")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "memae-dist: error: http://127.0.0.1:8265 is a job server (dashboard) address "
        "(RAY_ADDRESS); use it for `ray job submit --address`; memae-dist connects to the GCS "
        "address HOST:6379, or runs as a Ray job itself; without either it starts a local Ray "
        "(unset RAY_ADDRESS)")
    assert not (tmp_path / "data").exists()


def test_table_lists_each_failure_with_its_fix():
    table = format_table([Check("ray", PASS, "Ray 2.60.0"),
                          Check("storage", FAIL, "cannot write", "create it", "10.0.0.2/abc")])
    lines = table.splitlines()
    assert lines[0].split() == ["CHECK", "NODE", "STATUS", "DETAIL"]
    assert "  FAIL storage [10.0.0.2/abc]: create it" in lines
    assert lines[-1] == "2 checks: 1 failed, 0 warnings"


def test_resources_row_says_what_the_run_needs_against_what_is_there():
    from memae_dist.config import load_config
    from memae_dist.doctor.cluster import resources_check

    two_cpus = [{"Resources": {"CPU": 2.0}}]
    short = resources_check(two_cpus, load_config(None, ["train.workers=2"]))
    assert short.status == WARN and short.detail == (
        "the run needs 3 CPUs (2 workers x 1 CPU, + 1 for reading data) and 0 GPUs; the "
        "cluster has 2 CPUs, 0 GPUs now")
    fits = resources_check(two_cpus, load_config(None, ["train.workers=1"]))
    assert fits.status == PASS and fits.detail.startswith("the run needs 2 CPUs (1 worker x")
    # Room on the cluster, but other jobs hold it: two runs that leave no CPU to read with
    # wait on each other for ever on a cluster of fixed size.
    busy = resources_check(two_cpus, load_config(None, ["train.workers=1"]), free_cpus=1.0)
    assert busy.status == WARN and busy.detail.endswith("the cluster has 2 CPUs, 0 GPUs now, "
                                                        "1 CPUs free (other jobs hold the rest)")
    assert "wait on each other for ever" in busy.fix
