"""Training on a simulated two-node cluster, data and checkpoints in S3 (moto on loopback).

The module owns its Ray: it stops the session's local Ray (if a test before it started one),
runs a ``ray.cluster_utils.Cluster`` of two nodes for its tests, and restores a local Ray
afterwards so later modules find what they expect.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from memae_dist.config import ExperimentConfig, from_dict, load_config
from memae_dist.data.storage import join, read_bytes
from memae_dist.errors import UserError
from memae_dist.runtime import start_local_ray
from memae_dist.train.checkpoint import STATE_FILE
from memae_dist.train.trainer import fit

pytestmark = pytest.mark.slow
NODE_CPUS = 2
STORE = 150 * 2**20
CLIPS = (8, 16, 16, 16)  # (B, L, H, W) global batch of the gradient check


def start_cluster(attempts: int = 3):
    """Two nodes; retried because Ray gives a raylet 30 s to register, which a busy shared
    machine sometimes exceeds."""
    from ray.cluster_utils import Cluster

    for attempt in range(attempts):
        c = Cluster()
        try:
            c.add_node(num_cpus=NODE_CPUS, object_store_memory=STORE, include_dashboard=False)
            c.add_node(num_cpus=NODE_CPUS, object_store_memory=STORE)
            c.wait_for_nodes()
            return c
        except Exception:
            c.shutdown()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cluster(s3_server):
    import ray

    was_running = ray.is_initialized()
    ray.shutdown()
    c = start_cluster()
    # Ray's helper actors look for "the" cluster; other Ray instances on the machine must not
    # be mistaken for this one.
    ray.init(address=c.address, logging_level="WARNING",
             runtime_env={"env_vars": {"RAY_ADDRESS": c.address}})
    yield c
    ray.shutdown()
    c.shutdown()
    if was_running:  # as the session's ray_local fixture left it
        start_local_ray(4, 256 * 2**20, logging_level="WARNING")


@pytest.fixture(scope="module")
def s3_data(cluster, s3_server):
    """A tiny synthetic dataset written straight to a bucket by tasks on both nodes."""
    import boto3

    from memae_dist.data.importers.synthetic import SyntheticConfig, generate_synthetic

    bucket = "multinode"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(
        Bucket=bucket)
    uri = f"s3://{bucket}/data"
    generate_synthetic(uri, SyntheticConfig(seed=1, size=(16, 16), train_videos=3,
                                            test_videos=2, frames_per_video=40), workers=2)
    return f"s3://{bucket}"


def config(root: str, *extra: str) -> ExperimentConfig:
    return load_config(None, [
        "model.num_slots=50", "model.shrink_threshold=0.02", "data.shuffle_buffer=16",
        "train.batch_size=8", "train.lr=1e-3", "train.workers=2", "train.placement=SPREAD",
        f"data.path={root}/data", f"run.storage={root}/runs", *extra])


# ------------------------------------------------------------------ DDP gradients
def grad_probe(config: dict) -> None:
    """On each worker: one skipped step (NaN on rank 1 only), then one real step."""
    import ray.train

    from memae_dist.models.build import model_input
    from memae_dist.train.loop import build_worker
    from memae_dist.train.precision import wrap_model
    from memae_dist.train.step import micro_step

    cfg = from_dict(ExperimentConfig, config["experiment"])
    w = build_worker(cfg)
    w.net = wrap_model(w.model, cfg.train, w.world)
    x = model_input(torch.from_numpy(config["clips"]), "video")  # (B, 1, L, H, W)
    mine = x.chunk(w.world)[w.rank]
    poisoned = mine.clone()
    if w.rank == 1:
        poisoned[0, 0, 0, 0, 0] = float("nan")
    # Eval-mode BatchNorm keeps rank 1's NaN away from rank 0's loss: only the vote can make
    # rank 0 skip. No backward runs on any rank, and DDP must carry on regardless.
    w.net.eval()
    skipped = micro_step(w, poisoned, sync=True) is None
    w.net.train()
    w.optimizer.zero_grad(set_to_none=True)
    micros = mine.chunk(cfg.train.grad_accum)
    for i, micro in enumerate(micros):
        assert micro_step(w, micro, sync=i == len(micros) - 1) is not None
    grads = {k: p.grad.detach().cpu() for k, p in w.model.named_parameters()}
    torch.save({"grads": grads, "skipped": skipped}, Path(config["out"]) / f"rank{w.rank}.pt")
    ray.train.report({})


def reference_grads(cfg: ExperimentConfig, clips: np.ndarray, world: int,
                    dtype: torch.dtype = torch.float64) -> dict:
    """Single process, plain BatchNorm: micro-batch i is every rank's i-th micro-batch.

    In float64: at initialisation the memory hands the decoder near-identical codes, so its
    first BatchNorm sees channels with |mean| >> std, where the stock fp32 CPU kernel loses
    digits on some CPUs (2.7% in decoder.0.weight on an AMD EPYC, against 2e-6 for the
    workers' global BatchNorm, both measured against float64)."""
    from memae_dist.models import build_model, memae_loss
    from memae_dist.models.build import model_input

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).train().to(dtype)
    x = model_input(torch.from_numpy(clips), "video").to(dtype)
    per_rank = [part.chunk(cfg.train.grad_accum) for part in x.chunk(world)]
    for i in range(cfg.train.grad_accum):
        batch = torch.cat([micros[i] for micros in per_rank])
        loss, _ = memae_loss(model(batch), batch, cfg.model.effective_entropy_weight)
        (loss / cfg.train.grad_accum).backward()
    return {k: p.grad.float() for k, p in model.named_parameters()}


def test_ddp_gradients_equal_single_process_gradients(cluster, tmp_path):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = config("unused", "train.grad_accum=2")  # micro-batches of 2 clips per worker
    clips = np.random.default_rng(0).integers(0, 256, CLIPS, dtype=np.uint8)
    trainer = TorchTrainer(
        grad_probe,
        train_loop_config={"experiment": cfg.to_dict(), "clips": clips, "out": str(tmp_path)},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=2, placement_strategy="SPREAD"),
        run_config=ray.train.RunConfig(name="probe", storage_path=str(tmp_path / "ray")),
    )
    assert trainer.fit().error is None
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Rank 0's loss was finite, yet it skipped with rank 1: the vote keeps DDP in step.
    assert [got["skipped"] for got in ranks] == [True, True]
    expected = reference_grads(cfg, clips, world=2)
    # One fp32 process is itself this far from float64 on some CPUs (2.5e-3 of encoder.0's
    # scale on an Intel Xeon with AMX, with and without AMX kernels): the workers must be as
    # close as it is, and a DDP or BatchNorm mistake is off by far more.
    single = reference_grads(cfg, clips, world=2, dtype=torch.float32)
    # Float sums in another order: relative to each tensor, plus a floor for the biases that
    # feed a BatchNorm (their true gradient is 0; both sides hold rounding noise).
    floor = 1e-6 * max(float(g.abs().max()) for g in expected.values())
    for name, ref in expected.items():
        scale = float(ref.abs().max())
        for r, got in enumerate(ranks):
            err = float((got["grads"][name] - ref).abs().max())
            slack = 2 * float((single[name] - ref).abs().max())
            assert err <= max(1e-4 * scale, slack) + floor, (
                f"rank {r} {name}: {err} vs scale {scale}, one fp32 process {slack / 2}")


# ------------------------------------------------------------------ failures and resume
def train_worker_pids(node) -> list[int]:
    """PIDs of Ray Train worker processes started by one node's raylet."""
    raylet = node.all_processes["raylet"][0].process.pid
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    pids = []
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor != raylet:
            ancestor = parents.get(ancestor)
        if ancestor == raylet:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"RayTrainWorker" in cmd:
                pids.append(pid)
    return pids


def wait_for_registered(run: str, name: str, timeout: float) -> None:
    from memae_dist.train.checkpoint import ray_registered

    deadline = time.monotonic() + timeout
    while not (ray_registered(run) or "").endswith(name):
        assert time.monotonic() < deadline, f"timed out waiting for Ray to register {name}"
        time.sleep(0.5)


def weights(ckpt_uri: str) -> dict:
    import io

    blob = read_bytes(join(ckpt_uri, STATE_FILE))
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)["model"]


def test_killed_worker_recovers_and_resume_is_exact(cluster, s3_data):
    common = ["train.deterministic=true", "train.max_steps_per_epoch=2", "data.augment=true",
              "data.val_split=test", "train.checkpoint_metric=val_recon",
              "train.keep_checkpoints=1"]
    # 1. Three epochs; one training worker is killed (SIGKILL) once epoch 1 is checkpointed.
    killed = config(s3_data, *common, "train.epochs=3", "train.max_failures=2", "run.name=kill")
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=fit(killed)), daemon=True)
    thread.start()
    run = f"{s3_data}/runs/kill"
    # Kill once Ray has *registered* checkpoint 1 (killed between upload and registration,
    # Ray would restart from scratch, which is correct but tests less).
    wait_for_registered(run, "checkpoint_epoch_0001", 900)
    victims = train_worker_pids(next(iter(cluster.worker_nodes)))
    assert victims, "no training worker runs on the second node"
    os.kill(victims[0], signal.SIGKILL)
    thread.join(timeout=900)
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    result = box["result"]
    assert result.completed and [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[-1]["run_starts"] == 2  # the worker group was restarted once
    assert all(r["workers"] == 2 and "val_recon" in r for r in result.history)
    history = json.loads(read_bytes(join(run, "history.json")))
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert result.best_checkpoint_uri is not None
    assert json.loads(read_bytes(join(run, "best.json")))["metric"] == "val_recon"

    # 2. One epoch, then the same command for three: the driver-rerun path of resume.
    fit(config(s3_data, *common, "train.epochs=1", "run.name=resumed"))
    resumed = fit(config(s3_data, *common, "train.epochs=3", "run.name=resumed"))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert [r["run_starts"] for r in resumed.history] == [1, 2, 2]
    # Both runs restarted after epoch 1 yet match bit for bit: the data order, RNG and
    # optimizer state all resume exactly.
    a, b = weights(result.checkpoint_uri), weights(resumed.checkpoint_uri)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in result.history]

    # 3. With no restart allowed (train.max_failures=0, the default), a lost worker ends the
    # run with one line saying so, not Ray's traceback; the kept checkpoint resumes it.
    errors = []

    def strict_run():
        try:
            fit(config(s3_data, *common, "train.epochs=3", "run.name=strict"))
        except UserError as exc:
            errors.append(exc)

    thread = threading.Thread(target=strict_run, daemon=True)
    thread.start()
    wait_for_registered(f"{s3_data}/runs/strict", "checkpoint_epoch_0001", 900)
    os.kill(train_worker_pids(next(iter(cluster.worker_nodes)))[0], signal.SIGKILL)
    thread.join(timeout=900)
    assert not thread.is_alive() and len(errors) == 1
    assert re.fullmatch(r"training stopped: training worker \d lost \(killed, out of memory, or "
                        r"its node went away\) after epoch \d \(train.max_failures=0 restarts "
                        r"allowed\); its checkpoint is kept: rerun the same command to resume, "
                        r"or raise train.max_failures to let the run restart its workers "
                        r"itself", str(errors[0])), str(errors[0])
