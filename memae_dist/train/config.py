"""Optimisation and scaling settings of a training run."""

from __future__ import annotations

from dataclasses import dataclass

from memae_dist.errors import UserError


@dataclass
class TrainConfig:
    # Passes over the training windows.
    epochs: int = 10
    # Global batch size (clips per optimizer step, summed over workers and accumulation steps).
    # It stays fixed when the worker count changes, so the learning rate needs no rescaling.
    batch_size: int = 14
    # Adam learning rate (the paper: 1e-4).
    lr: float = 1e-4
    weight_decay: float = 0.0
    # Training workers: 0 runs in-process (debugging, no checkpoints), N >= 1 runs DDP.
    workers: int = 2
    # Logical CPUs reserved per worker; fractions leave room for Ray Data's read tasks.
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    # Micro-batches accumulated per optimizer step.
    grad_accum: int = 1
    # "auto": bf16 autocast on GPU, fp32 on CPU; or force "fp32" / "bf16".
    precision: str = "auto"
    # torch.compile the model (slow first step; pays off on long GPU runs).
    compile: bool = False
    # Seed for weights, data order and augmentation.
    seed: int = 0
    # Make data order and kernels deterministic (needed for bit-exact resume checks).
    deterministic: bool = False
    # Worker-group restarts allowed after a failure (-1: unlimited).
    max_failures: int = 0
    # Checkpoints kept in storage (the newest ones; plus the best by val metric when set).
    keep_checkpoints: int = 2
    # Cap on optimizer steps per epoch (0: no cap); handy for smoke tests and sweeps.
    max_steps_per_epoch: int = 0
    # Stop with an error on a NaN/inf loss ("stop") or skip that batch ("skip").
    on_nonfinite: str = "stop"
    # Warn when fewer memory slots than this receive weight during an epoch.
    min_used_slots: int = 2

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UserError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise UserError(f"train.lr must be > 0, got {self.lr}")
        if self.workers < 0:
            raise UserError(f"train.workers must be >= 0, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise UserError(f"train.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise UserError(f"train.gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.grad_accum < 1:
            raise UserError(f"train.grad_accum must be >= 1, got {self.grad_accum}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(
                f"train.precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}"
            )
        if self.keep_checkpoints < 1:
            raise UserError(f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.max_steps_per_epoch < 0:
            raise UserError(
                f"train.max_steps_per_epoch must be >= 0, got {self.max_steps_per_epoch}"
            )
        if self.on_nonfinite not in ("stop", "skip"):
            raise UserError(
                f"train.on_nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}"
            )
        if self.batch_size % (max(self.workers, 1) * self.grad_accum):
            raise UserError(
                f"train.batch_size ({self.batch_size}) must be divisible by "
                f"workers x grad_accum ({max(self.workers, 1)} x {self.grad_accum})"
            )

    @property
    def micro_batch_size(self) -> int:
        """Clips per worker per forward pass, keeping the global batch fixed."""
        return self.batch_size // (max(self.workers, 1) * self.grad_accum)
