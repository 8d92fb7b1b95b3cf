"""Driver side of training: Ray set-up, the TorchTrainer, and what a finished run hands back."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from memae_dist.config import ExperimentConfig
from memae_dist.data.storage import join, pyarrow_fs
from memae_dist.errors import UserError
from memae_dist.train.checkpoint import CHECKPOINT_RE, latest_checkpoint

log = logging.getLogger("memae_dist.train")


@dataclass
class TrainResult:
    run_uri: str
    checkpoint_uri: str | None
    metrics: dict
    history: list[dict]


def ensure_ray(workers: int, cpus_per_worker: float, address: str | None = None) -> None:
    """Connect to ``address`` or start a local Ray sized so Ray Data keeps CPUs for reading.

    Training workers each hold ``cpus_per_worker`` logical CPUs; on a small machine two workers
    would take every core and leave the read tasks nothing, which stalls the stream. Logical
    CPUs are only a scheduling budget, so the local cluster advertises a few more than exist.
    """
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    cores = os.cpu_count() or 1
    num_cpus = max(cores, int(workers * cpus_per_worker + 0.999) + 2)
    ray.init(
        num_cpus=num_cpus,
        object_store_memory=int(os.environ.get("MEMAE_OBJECT_STORE_BYTES", 512 * 1024**2)),
        include_dashboard=False,
        log_to_driver=True,
    )


def run_uri(cfg: ExperimentConfig) -> str:
    storage = cfg.run.storage
    if "://" not in storage:
        storage = os.path.abspath(storage)
    return join(storage, cfg.run.name)


def completed_epochs(run: str, cfg: ExperimentConfig) -> int:
    latest = latest_checkpoint(run, cfg.storage)
    if latest is None:
        return 0
    return int(CHECKPOINT_RE.match(latest.rstrip("/").rsplit("/", 1)[-1]).group(1))


def fit(cfg: ExperimentConfig, address: str | None = None) -> TrainResult:
    """Train (or resume) the run named ``cfg.run.name`` in ``cfg.run.storage``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from memae_dist.data.stream import window_dataset
    from memae_dist.train.loop import train_loop_per_worker

    if not cfg.data.path:
        raise UserError("data.path is not set: pass --data URI or set data.path in the config")
    run = run_uri(cfg)
    done = completed_epochs(run, cfg)
    if done:
        log.info("resuming %s after epoch %d", run, done)
    if done >= cfg.train.epochs:
        log.info("%s already finished %d epochs", run, done)
    ensure_ray(cfg.train.workers, cfg.train.cpus_per_worker, address)
    seed = cfg.train.seed if cfg.train.deterministic else None
    ds = window_dataset(cfg.data.path, cfg.data, seed=seed, first_epoch=done,
                        storage=cfg.storage)
    fs, storage_path = pyarrow_fs(cfg.run.storage if "://" in cfg.run.storage
                                  else os.path.abspath(cfg.run.storage), cfg.storage)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.to_dict()},
        scaling_config=scaling_config(cfg),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
        ),
        datasets={"train": ds},
        dataset_config=data_config(cfg),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    latest = latest_checkpoint(run, cfg.storage)
    history = read_history(latest, cfg) if latest else []
    return TrainResult(run, latest, dict(result.metrics or {}), history)


def scaling_config(cfg: ExperimentConfig):
    import ray.train

    t = cfg.train
    resources = {"CPU": t.cpus_per_worker}
    if t.gpus_per_worker:
        resources["GPU"] = t.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=t.workers, use_gpu=t.gpus_per_worker > 0, resources_per_worker=resources
    )


def data_config(cfg: ExperimentConfig):
    import ray.train
    from ray.data import ExecutionOptions

    options = ExecutionOptions()
    # Parallel read tasks finish in any order; a bit-exact run needs the planned order.
    options.preserve_order = cfg.train.deterministic
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=options)


def read_history(ckpt_uri: str, cfg: ExperimentConfig) -> list[dict]:
    import json

    from memae_dist.data.storage import exists, read_bytes
    from memae_dist.train.checkpoint import HISTORY_FILE

    uri = join(ckpt_uri, HISTORY_FILE)
    return json.loads(read_bytes(uri, cfg.storage)) if exists(uri, cfg.storage) else []
