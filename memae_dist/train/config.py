"""Optimisation and scaling settings of a training run.

Learning rate and worker count: ``batch_size`` is the *global* batch (clips per optimizer step,
summed over workers and accumulation steps), so changing ``workers`` or ``grad_accum`` leaves
the optimisation unchanged and ``lr`` needs no rescaling. When you change ``batch_size`` itself,
scale ``lr`` by new/old batch as a starting point (the linear rule) and check the loss curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memae_dist.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
PLACEMENTS = ("PACK", "SPREAD")
# Epoch metrics a best checkpoint can be chosen by (val_*: with data.val_split).
CHECKPOINT_METRICS = ("loss", "recon", "entropy", "val_recon", "val_auc")
LR_SCHEDULES = ("constant", "cosine")
# Far past any use (the recipes take 0 or a few hundred): a typo, not a request for terabytes.
MAX_PRECISE_BN_BATCHES = 100_000


@dataclass
class TrainConfig:
    # Passes over the training windows.
    epochs: int = 10
    # Global batch size (clips per optimizer step, summed over workers and accumulation steps).
    # It stays fixed when the worker count changes, so the learning rate needs no rescaling.
    batch_size: int = 14
    # Adam learning rate (the paper: 1e-4).
    lr: float = 1e-4
    # "constant" (the paper's) or "cosine": each epoch e of E trains at lr * (1 + cos(pi e/E)) / 2,
    # so the first epoch runs at lr and the last near zero. A function of the epoch alone: a
    # resumed run continues on the same curve (on a new one if train.epochs changes).
    lr_schedule: str = "constant"
    # Adam's L2 penalty on the weights (the paper: none).
    weight_decay: float = 0.0
    # Training workers: 0 runs in-process (debugging), N >= 1 runs DDP (NCCL on GPU, gloo on CPU).
    workers: int = 2
    # Logical CPUs reserved per worker; fractions leave room for Ray Data's read tasks.
    cpus_per_worker: float = 1.0
    # GPUs per worker (0: train on CPUs); a fraction lets workers share one GPU.
    gpus_per_worker: float = 0.0
    # How Ray places the workers: "PACK" (fewest nodes) or "SPREAD" (across nodes).
    placement: str = "PACK"
    # Micro-batches accumulated per optimizer step.
    grad_accum: int = 1
    # "auto": bf16 autocast on GPU, fp32 on CPU; or force "fp32", "bf16" or "fp16" (fp16 uses
    # a gradient scaler, saved in checkpoints). On CPUs with AMX (Intel Xeon since Sapphire
    # Rapids) "bf16" trains the video net 2.4x faster than fp32; elsewhere it is slower.
    precision: str = "auto"
    # "auto": channels_last_3d for video models on GPU (faster cuDNN kernels) and for bf16 on
    # CPU (faster oneDNN kernels), contiguous otherwise; or force "channels_last"/"contiguous".
    memory_format: str = "auto"
    # torch.compile the model (slow first step; pays off on long GPU runs).
    compile: bool = False
    # With several workers, BatchNorm statistics span the global batch, so DDP gradients equal
    # single-process gradients on the same batch; false: each worker normalises its own share.
    sync_batchnorm: bool = True
    # Seed for weights, data order and augmentation.
    seed: int = 0
    # Make data order and kernels deterministic (needed for bit-exact resume checks).
    deterministic: bool = False
    # Worker-group restarts allowed after a failure (-1: unlimited); each restarts from the
    # last checkpoint.
    max_failures: int = 0
    # Checkpoints kept in storage (the newest ones; plus the best by checkpoint_metric).
    keep_checkpoints: int = 2
    # Reported metric whose best epoch is kept as RUN/best/ ("" = none), e.g. "val_auc" or
    # "val_recon" (both need data.val_split) or "loss".
    checkpoint_metric: str = ""
    # "max" or "min" for checkpoint_metric; "auto": max for AUC/AP metrics, min otherwise.
    checkpoint_mode: str = "auto"
    # Cap on optimizer steps per epoch (0: no cap); handy for smoke tests and sweeps.
    max_steps_per_epoch: int = 0
    # Stop with an error on a NaN/inf loss ("stop") or skip that batch on every worker ("skip").
    on_nonfinite: str = "stop"
    # Warn when fewer memory slots than this receive weight during an epoch.
    min_used_slots: int = 2
    # After each epoch, forward this many of the epoch's last micro-batches again with its
    # final weights and save the average of their BatchNorm statistics instead of the running
    # average (0: keep the running average, as the paper's code does). Steadier evaluation with
    # small batches; costs about a quarter of a training step per batch, and host memory to
    # hold them (batches x clips x frame bytes).
    precise_bn_batches: int = 0
    # Also write the per-epoch metrics as TensorBoard events (RUN/tensorboard) when a writer
    # (tensorboard or tensorboardX) is installed.
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "gpus_per_worker", "max_steps_per_epoch", "precise_bn_batches"):
            if getattr(self, name) < 0:
                raise UserError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"train.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise UserError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.seed < 2**63:  # what torch's and numpy's generators take
            raise UserError(f"train.seed must be from 0 to {2**63 - 1}, got {self.seed}")
        if self.precise_bn_batches > MAX_PRECISE_BN_BATCHES:
            raise UserError(f"train.precise_bn_batches must be <= {MAX_PRECISE_BN_BATCHES} "
                            f"(each is held in memory), got {self.precise_bn_batches}")
        if self.cpus_per_worker <= 0:
            raise UserError(f"train.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < -1:
            raise UserError(f"train.max_failures must be >= -1, got {self.max_failures}")
        _choice("train.precision", self.precision, PRECISIONS)
        _choice("train.memory_format", self.memory_format, MEMORY_FORMATS)
        _choice("train.placement", self.placement, PLACEMENTS)
        _choice("train.checkpoint_mode", self.checkpoint_mode, ("auto", "max", "min"))
        if self.checkpoint_metric and self.checkpoint_metric not in CHECKPOINT_METRICS:
            raise UserError(f"train.checkpoint_metric must be one of "
                            f"{', '.join(CHECKPOINT_METRICS)} or '' (none), got "
                            f"{self.checkpoint_metric!r}")
        _choice("train.on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        _choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.batch_size % (max(self.workers, 1) * self.grad_accum):
            raise UserError(
                f"train.batch_size ({self.batch_size}) must be divisible by "
                f"train.workers x train.grad_accum ({max(self.workers, 1)} x {self.grad_accum})"
            )

    @property
    def micro_batch_size(self) -> int:
        """Clips per worker per forward pass, keeping the global batch fixed."""
        return self.batch_size // (max(self.workers, 1) * self.grad_accum)

    def epoch_lr(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``; held for the whole epoch."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))

    @property
    def best_mode(self) -> str:
        """``checkpoint_mode`` with "auto" resolved: higher is better for AUC and AP."""
        if self.checkpoint_mode != "auto":
            return self.checkpoint_mode
        name = self.checkpoint_metric.lower()
        return "max" if ("auc" in name or name.endswith("ap")) else "min"


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
