"""The per-worker training loop: the same function runs in-process, on 1..n workers, on clusters.

Ray Train calls ``train_loop_per_worker`` on every worker. Model and loss code know nothing of
Ray; this module, ``step.py`` and ``validate.py`` are the only places that talk to it (dataset
shard, process group, checkpoint, report).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train
import ray.train.torch

from memae_dist.config import ExperimentConfig, from_dict
from memae_dist.data.storage import join, user_errors
from memae_dist.errors import UserError
from memae_dist.logs import worker_logging
from memae_dist.train.checkpoint import (
    TrainState,
    checkpoint_dir_name,
    prune,
    restore,
    restore_point,
    save_best,
    save_checkpoint,
)
from memae_dist.train.history import write_history
from memae_dist.train.observe import TensorBoard, log_epoch
from memae_dist.train.precision import wrap_model
from memae_dist.train.scratch import scratch_dir, sweep_orphans
from memae_dist.train.step import NonFiniteLoss, Worker, new_worker, run_epoch
from memae_dist.train.trainer import run_uri
from memae_dist.train.transfer import download_dir, ray_uploader, upload_dir

if TYPE_CHECKING:
    from memae_dist.train.validate import Validator

__all__ = ["NonFiniteLoss", "train_loop_per_worker"]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    worker_logging()
    cfg: ExperimentConfig = from_dict(ExperimentConfig, config["experiment"])
    sweep_orphans()
    w = build_worker(cfg)
    state = resume(w)
    state.starts += 1
    shard = ray.train.get_dataset_shard("train")
    validator = None
    if cfg.data.val_split:
        from memae_dist.train.validate import Validator

        validator = Validator(w)
    tb = TensorBoard(run_uri(cfg), cfg.storage) if (
        w.rank == 0 and cfg.train.tensorboard) else None
    try:
        _epochs(w, state, shard, validator, tb, config)
    finally:
        if tb is not None:  # also when an epoch fails: its staging folder goes with it
            tb.close()


def _epochs(w: Worker, state: TrainState, shard: Any, validator: Validator | None,
            tb: TensorBoard | None, config: dict[str, Any]) -> None:
    cfg = w.cfg
    for epoch in range(state.epoch, cfg.train.epochs):
        metrics = run_epoch(w, shard, epoch, state)
        if validator is not None:
            metrics.update(validator.run())
        metrics["run_starts"] = state.starts
        metrics["prev_checkpoint_s"] = state.last_report_s  # write + upload of the last one
        state.history.append(metrics)
        report(w, state, metrics, config)
        if tb is not None:
            tb.write(state.history[-1])


def build_worker(cfg: ExperimentConfig) -> Worker:
    ctx = ray.train.get_context()
    return new_worker(cfg, ray.train.torch.get_device(), ctx.get_world_rank(),
                      ctx.get_world_size())


def resume(w: Worker) -> TrainState:
    """Restore from the run's last checkpoint, if it has one, then wrap the model for training.

    The checkpoint is the one ``restore_point`` names, not necessarily the one Ray hands the
    workers (its own record misses what a debug run or a cut-off attempt wrote); the data order
    follows the same point.
    """
    state, scaler = TrainState(), {}
    latest = restore_point(run_uri(w.cfg), w.cfg.storage)
    if latest is not None:
        # A private copy per worker: a shared download folder lets a second worker on the
        # node re-download into it while the first is still reading it.
        with scratch_dir("memae-restore") as tmp:
            download_dir(latest, Path(tmp), w.cfg.storage)
            try:
                state, scaler = restore(Path(tmp), w.model, w.optimizer)
            except UserError as exc:  # name the checkpoint, not the private copy
                raise UserError(str(exc).replace(tmp, latest)) from None
    if state.best_of not in (None, judged_by(w.cfg)):
        # The best so far was judged by another metric (the driver warns): a val_recon held
        # against the best loss would keep the wrong epoch. The choice starts over.
        state.best_value, state.best_epoch, state.best_of = None, 0, None
    w.precision.load_state_dict(scaler)
    w.net = wrap_model(w.model, w.cfg.train, w.world)
    return state


def judged_by(cfg: ExperimentConfig) -> str:
    return f"{cfg.train.checkpoint_metric}/{cfg.train.best_mode}"


def improved(cfg: ExperimentConfig, state: TrainState, metrics: dict) -> bool:
    value = metrics.get(cfg.train.checkpoint_metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if state.best_value is None:
        return True
    return value > state.best_value if cfg.train.best_mode == "max" else value < state.best_value


def report(w: Worker, state: TrainState, metrics: dict, config: dict) -> None:
    """Rank 0 writes the checkpoint; every rank calls ``report`` (it is a barrier).
    ``config``: the loop's config (the experiment dict and what the run trains on)."""
    cfg = w.cfg
    if not math.isfinite(metrics["loss"]):
        raise NonFiniteLoss(f"non-finite epoch loss at epoch {state.epoch}; no checkpoint written")
    best = bool(cfg.train.checkpoint_metric) and improved(cfg, state, metrics)
    if best:
        state.best_value = float(metrics[cfg.train.checkpoint_metric])
        state.best_epoch = state.epoch
        state.best_of = judged_by(cfg)
    metrics["best_epoch"] = state.best_epoch
    t0 = time.perf_counter()
    run = run_uri(cfg)
    target = join(run, checkpoint_dir_name(state.epoch))
    with (scratch_dir("memae-checkpoint") as tmp,
          checkpoint_upload(target, cfg, first=state.epoch == 1)):
        ckpt = None
        if w.rank == 0:
            save_checkpoint(Path(tmp), w.model, w.optimizer, state, config["experiment"],
                            w.precision.state_dict(), data=config.get("data"))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
            if best:
                save_best(Path(tmp), run, state.epoch, cfg.train.checkpoint_metric,
                          state.best_value, cfg.storage)
            if cfg.train.workers == 0:
                # Debug mode: Ray keeps no checkpoints, but a debug run should stay resumable.
                upload_dir(Path(tmp), target, cfg.storage)
                prune(run, cfg.train.keep_checkpoints, cfg.storage)
        ray.train.report(metrics, checkpoint=ckpt,
                         checkpoint_dir_name=checkpoint_dir_name(state.epoch),
                         checkpoint_upload_fn=ray_uploader(run, cfg.storage) if ckpt else None)
    state.last_report_s = time.perf_counter() - t0
    if w.rank == 0:
        state.history[-1]["checkpoint_s"] = state.last_report_s
        write_history(run, state.history, cfg.storage)
        log_epoch(state.history[-1], cfg.train.epochs)


@contextmanager
def checkpoint_upload(target: str, cfg: ExperimentConfig, first: bool) -> Iterator[None]:
    """A storage failure while a checkpoint is written (after the client's own retries) ends
    the attempt with one line naming it. The folder is never registered with Ray, so the
    previous checkpoint stays the one a restart or a rerun restores (``first``: there is
    none)."""
    try:
        with user_errors(target, "write checkpoint", cfg.storage):
            yield
    except UserError as exc:
        then = ("the run has no checkpoint yet: the same command, rerun, starts it again"
                if first else "the previous checkpoint is kept: rerun the same command to "
                              "resume from it")
        raise UserError(f"{exc}; {then}") from None
