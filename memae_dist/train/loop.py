"""The per-worker training loop: the same function runs in-process, on 1..n workers, on clusters.

Ray Train calls ``train_loop_per_worker`` on every worker. Model and loss code know nothing of
Ray; this loop is the only place that talks to it (dataset shard, checkpoint, report).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from memae_dist.config import ExperimentConfig, from_dict
from memae_dist.data.storage import join
from memae_dist.models import build_model, memae_loss
from memae_dist.models.memory import slot_mass
from memae_dist.train.checkpoint import (
    TrainState,
    checkpoint_dir_name,
    download_dir,
    latest_checkpoint,
    prune,
    restore,
    save_checkpoint,
    upload_dir,
)
from memae_dist.train.history import EpochStats, epoch_metrics, write_history
from memae_dist.train.trainer import run_uri


class NonFiniteLoss(RuntimeError):
    """A NaN/inf loss: the run stops here rather than write a poisoned checkpoint."""


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from (seed, epoch, rank...): resumable without saved RNG streams."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> 1)


def to_model_input(clip: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
    """uint8 clips (B, L, H, W) -> float (B, 1, L, H, W) in [-1, 1], optionally mirrored."""
    x = clip.float().div_(127.5).sub_(1.0).unsqueeze(1)  # (B, 1, L, H, W)
    if flip is not None and bool(flip.any()):
        x[flip] = x[flip].flip(-1)
    return x


def autocast_for(cfg: ExperimentConfig, device: torch.device):
    bf16 = cfg.train.precision == "bf16" or (
        cfg.train.precision == "auto" and device.type == "cuda"
    )
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_epoch(cfg, model, optimizer, shard, epoch: int, rank: int, device, state: TrainState):
    """One pass over this worker's shard; returns the worker's (un-reduced) statistics."""
    stats = EpochStats.zeros(cfg.model.num_slots if cfg.model.uses_memory else 0)
    gen = torch.Generator().manual_seed(seed_for(cfg.train.seed, epoch, rank))
    batches = shard.iter_torch_batches(
        batch_size=cfg.train.micro_batch_size,
        drop_last=True,  # equal step counts on every rank keep DDP in lock-step
        local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
        local_shuffle_seed=seed_for(cfg.train.seed, epoch, rank, 1) % 2**32,
        prefetch_batches=cfg.data.prefetch_batches,
    )
    model.train()
    optimizer.zero_grad(set_to_none=True)
    accum = cfg.train.grad_accum
    t_epoch = wait_start = time.perf_counter()
    for micro, batch in enumerate(batches):
        stats.data_wait += time.perf_counter() - wait_start
        if stats.first_batch_s is None:
            stats.first_batch_s = time.perf_counter() - t_epoch
        clip = batch["clip"]
        flip = torch.rand(len(clip), generator=gen) < 0.5 if cfg.data.augment else None
        x = to_model_input(clip, flip).to(device, non_blocking=True)
        sync = (micro + 1) % accum == 0
        no_sync = model.no_sync if (not sync and hasattr(model, "no_sync")) else (
            contextlib.nullcontext)
        with no_sync(), autocast_for(cfg, device):
            out = model(x)
            loss, parts = memae_loss(out, x, cfg.model.effective_entropy_weight)
        if not torch.isfinite(loss):
            if cfg.train.on_nonfinite == "stop":
                raise NonFiniteLoss(
                    f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {state.step + 1}, "
                    f"batch {micro} (windows {batch['video'][0]}@{int(batch['start'][0])}...)"
                )
            stats.skipped += 1
            optimizer.zero_grad(set_to_none=True)
            wait_start = time.perf_counter()
            continue
        with no_sync():
            (loss / accum).backward()
        if sync:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
        stats.add(len(clip), loss.detach(), parts, slot_mass(out.attention) if out.attention
                  is not None else None)
        if cfg.train.max_steps_per_epoch and sync and (
                micro + 1) // accum >= cfg.train.max_steps_per_epoch:
            break
        wait_start = time.perf_counter()
    stats.wall = time.perf_counter() - t_epoch
    return stats


def all_reduce(stats: EpochStats) -> EpochStats:
    """Sum the statistics of every worker (a no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return stats
    packed = stats.pack()
    dist.all_reduce(packed)
    return stats.unpack(packed)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg: ExperimentConfig = from_dict(ExperimentConfig, config["experiment"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    device = ray.train.torch.get_device()
    model = build_model(cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                 weight_decay=cfg.train.weight_decay)
    state = resume(cfg, model, optimizer)
    wrapped = ray.train.torch.prepare_model(model) if world > 1 else model
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(state.epoch, cfg.train.epochs):
        stats = all_reduce(train_epoch(cfg, wrapped, optimizer, shard, epoch, rank, device, state))
        state.epoch = epoch + 1
        metrics = epoch_metrics(stats, epoch=state.epoch, step=state.step, world=world,
                                min_used_slots=cfg.train.min_used_slots)
        metrics["prev_checkpoint_s"] = state.last_report_s  # write + upload
        state.history.append(metrics)
        report(cfg, model, optimizer, state, metrics, rank, config["experiment"])


def resume(cfg: ExperimentConfig, model, optimizer) -> TrainState:
    """Restore from the run's last checkpoint, if it has one.

    Ray hands workers the checkpoint; in-process debug mode (``workers=0``) has no Ray storage,
    so the loop finds and fetches the run's latest checkpoint itself.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            return restore(Path(folder), model, optimizer)
    if cfg.train.workers == 0:
        latest = latest_checkpoint(run_uri(cfg), cfg.storage)
        if latest is not None:
            with tempfile.TemporaryDirectory() as tmp:
                download_dir(latest, Path(tmp), cfg.storage)
                return restore(Path(tmp), model, optimizer)
    return TrainState()


def report(cfg, model, optimizer, state: TrainState, metrics: dict, rank: int, raw: dict) -> None:
    """Rank 0 writes the checkpoint; every rank calls ``report`` (it is a barrier)."""
    if not math.isfinite(metrics["loss"]):
        raise NonFiniteLoss(f"non-finite epoch loss at epoch {state.epoch}; no checkpoint written")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            save_checkpoint(Path(tmp), model, optimizer, state, raw)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
            if cfg.train.workers == 0:
                # Debug mode: Ray keeps no checkpoints, but a debug run should stay resumable.
                run = run_uri(cfg)
                upload_dir(Path(tmp), join(run, checkpoint_dir_name(state.epoch)), cfg.storage)
                prune(run, cfg.train.keep_checkpoints, cfg.storage)
        ray.train.report(metrics, checkpoint=ckpt,
                         checkpoint_dir_name=checkpoint_dir_name(state.epoch))
    state.last_report_s = time.perf_counter() - t0
    if rank == 0:
        write_history(run_uri(cfg), state.history, cfg.storage)
