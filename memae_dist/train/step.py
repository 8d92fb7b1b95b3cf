"""One worker's training epoch: micro-batches, gradient accumulation, non-finite losses.

Every collective here is entered by all ranks in the same order (DDP's gradient all-reduce, the
global BatchNorm statistics, the non-finite vote), so a decision such as skipping a batch is
taken by all workers together and DDP stays in lock-step.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from memae_dist.config import ExperimentConfig
from memae_dist.errors import UserError
from memae_dist.models import build_model, memae_loss
from memae_dist.models.build import model_input
from memae_dist.models.memory import slot_mass
from memae_dist.train.checkpoint import TrainState
from memae_dist.train.history import EpochStats, epoch_metrics
from memae_dist.train.precise_bn import RecentBatches, recompute_batchnorm
from memae_dist.train.precision import Precision, memory_format
from memae_dist.train.syncbn import convert_batchnorm


class NonFiniteLoss(UserError, RuntimeError):
    """A NaN/inf loss: the run stops here rather than write a poisoned checkpoint.

    A UserError: the fix is a setting (``train.lr``, ``train.on_nonfinite``), so the CLI shows
    one line naming the step and batch rather than a traceback."""


@dataclass
class Worker:
    """What one training worker holds; ``model`` is what it saves, ``net`` what it calls."""

    cfg: ExperimentConfig
    model: nn.Module       # the plain module (weights, checkpoints, validation)
    net: nn.Module         # model wrapped for training: DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    precision: Precision
    device: torch.device
    memory_format: torch.memory_format
    rank: int = 0
    world: int = 1
    # The epoch's last micro-batches, for train.precise_bn_batches.
    recent: RecentBatches = field(default_factory=lambda: RecentBatches(0))


def seed_everything(seed: int) -> None:
    """torch, numpy and Python's generators from ``train.seed``: a checkpoint saves all three,
    so a resumed run's state equals the straight run's however the process was started."""
    torch.manual_seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # the legacy seeder takes 32-bit words
    random.seed(seed)


def new_worker(cfg: ExperimentConfig, device: torch.device, rank: int = 0,
               world: int = 1) -> Worker:
    """Model (same initial weights on every rank), optimizer and precision on ``device``;
    ``net`` is the plain model until the caller wraps it (DDP, compile)."""
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model)
    if world > 1 and cfg.train.sync_batchnorm:
        model = convert_batchnorm(model, device.type)
    fmt = memory_format(cfg.train, cfg.model.arch, device)
    model = model.to(device, memory_format=fmt) if fmt != torch.contiguous_format else (
        model.to(device))
    # fused: one kernel over all parameters instead of a dozen per tensor (3% of a CPU step).
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                 weight_decay=cfg.train.weight_decay, fused=True)
    return Worker(cfg=cfg, model=model, net=model, optimizer=optimizer,
                  precision=Precision(cfg.train, device), device=device, memory_format=fmt,
                  rank=rank, world=world, recent=RecentBatches(cfg.train.precise_bn_batches))


def run_epoch(w: Worker, shard, epoch: int, state: TrainState) -> dict:
    """One epoch at its scheduled learning rate -> its metrics row, summed over every worker.

    ``shard``: anything with Ray Data's ``iter_torch_batches`` (a worker's dataset shard)."""
    cfg = w.cfg
    lr = cfg.train.epoch_lr(epoch)
    for group in w.optimizer.param_groups:
        group["lr"] = lr
    stats = reduce_stats(train_epoch(w, shard, epoch, state), w)
    state.epoch = epoch + 1
    metrics = epoch_metrics(stats, epoch=state.epoch, step=state.step, world=w.world,
                            min_used_slots=cfg.train.min_used_slots,
                            cosine=cfg.model.addressing == "cosine", warn=w.rank == 0)
    metrics["lr"] = lr
    if cfg.train.precise_bn_batches:
        used, seconds = recompute_batchnorm(
            w.model, w.recent, arch=cfg.model.arch, device=w.device,
            memory_format=w.memory_format, autocast=w.precision.autocast, world=w.world)
        w.recent.clear()
        metrics.update(precise_bn_batches=used, precise_bn_s=seconds)
    return metrics


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from (seed, epoch, rank...): resumable without saved RNG streams."""
    # int() before the shift: numpy 1.x has no >> for a uint64 and a Python int
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0]) >> 1


def all_finite(loss: torch.Tensor, world: int) -> bool:
    """True when the loss is finite on *every* worker (one tiny all-reduce with several)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if world > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad.item())


def micro_step(w: Worker, x: torch.Tensor, sync: bool):
    """Forward and backward of one micro-batch; None when some worker's loss was not finite.

    ``sync=False`` accumulates locally (DDP ``no_sync``): only the last micro-batch of an
    optimizer step pays for the gradient all-reduce.
    """
    quiet = w.world > 1 and not sync and hasattr(w.net, "no_sync")
    # The forward pass updates BatchNorm running statistics; a skipped batch must not leave
    # NaN/inf there (they would be saved in the next checkpoint), so they are restored.
    saved = ([b.detach().clone() for b in w.model.buffers()]
             if w.cfg.train.on_nonfinite == "skip" else None)
    with w.net.no_sync() if quiet else contextlib.nullcontext():
        with w.precision.autocast():
            out = w.net(x)
            loss, parts = memae_loss(out, x, w.cfg.model.effective_entropy_weight)
        if not all_finite(loss, w.world):
            if saved is not None:
                with torch.no_grad():
                    for buf, old in zip(w.model.buffers(), saved, strict=True):
                        buf.copy_(old)
            return None
        w.precision.backward(loss / w.cfg.train.grad_accum)
    mass = slot_mass(out.attention) if out.attention is not None else None
    return loss.detach(), parts, mass


def epoch_batches(w: Worker, shard, epoch: int):
    """This worker's micro-batches for one epoch, as an iterator the caller closes (``with``).

    Closed by the training thread rather than the garbage collector: a Ray Data iterator
    finalised on its own executor thread (after a stop or an early break) cannot join that
    thread and prints a traceback.
    """
    cfg = w.cfg
    return contextlib.closing(iter(shard.iter_torch_batches(
        batch_size=cfg.train.micro_batch_size,
        drop_last=True,  # equal step counts on every rank keep DDP in lock-step
        local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
        local_shuffle_seed=seed_for(cfg.train.seed, epoch, w.rank, 1) % 2**32,
        prefetch_batches=cfg.data.prefetch_batches,
    )))


def train_epoch(w: Worker, shard, epoch: int, state: TrainState) -> EpochStats:
    """One pass over this worker's shard; returns the worker's (un-reduced) statistics."""
    cfg = w.cfg
    stats = EpochStats.zeros(cfg.model.num_slots if cfg.model.uses_memory else 0, w.device)
    gen = torch.Generator().manual_seed(seed_for(cfg.train.seed, epoch, w.rank))
    w.net.train()
    w.optimizer.zero_grad(set_to_none=True)
    accum, pending, steps = cfg.train.grad_accum, 0, 0
    t_epoch = time.perf_counter()
    with epoch_batches(w, shard, epoch) as batches:
        while True:
            t_wait = time.perf_counter()
            batch = next(batches, None)
            stats.data_wait += time.perf_counter() - t_wait
            if batch is None:
                break
            if stats.first_batch_s is None:
                stats.first_batch_s = time.perf_counter() - t_epoch
            flip = torch.rand(len(batch["clip"]), generator=gen) < 0.5 if cfg.data.augment else None
            x = model_input(batch["clip"], cfg.model.arch, flip).to(w.device,
                                                                    non_blocking=True)
            x = x.contiguous(memory_format=w.memory_format)
            result = micro_step(w, x, sync=pending + 1 == accum)
            if result is None:
                handle_nonfinite(cfg, epoch, state, batch)
                stats.skipped += 1
                w.optimizer.zero_grad(set_to_none=True)  # the step's partial sum is dropped too
                pending = 0
                continue
            stats.add(len(x), *result)
            w.recent.add(batch["clip"], flip)
            pending += 1
            if pending == accum:
                stats.overflow_steps += not w.precision.step(w.optimizer)
                w.optimizer.zero_grad(set_to_none=True)
                state.step += 1
                steps, pending = steps + 1, 0
                if cfg.train.max_steps_per_epoch and steps >= cfg.train.max_steps_per_epoch:
                    break
    stats.wall = time.perf_counter() - t_epoch
    return stats


def handle_nonfinite(cfg: ExperimentConfig, epoch: int, state: TrainState, batch) -> None:
    if cfg.train.on_nonfinite == "stop":
        raise NonFiniteLoss(
            f"non-finite loss at epoch {epoch + 1}, after step {state.step} (windows "
            f"{int(batch['video'][0])}@{int(batch['start'][0])}...); lower train.lr or set "
            "train.on_nonfinite=skip"
        )


def reduce_stats(stats: EpochStats, w: Worker) -> EpochStats:
    """Sum the statistics of every worker (a no-op in a single process)."""
    if w.world == 1:
        return stats.settle()
    # NCCL reduces device tensors only; gloo takes either.
    packed = stats.pack(w.device)
    dist.all_reduce(packed)
    return stats.unpack(packed)
