"""How a trained model is scored: which split, which error, how many clips per forward pass."""

from __future__ import annotations

from dataclasses import dataclass

from memae_dist.errors import UserError


@dataclass
class EvalConfig:
    # Split scored for a sweep's test metrics (`tune`, best trial only); `evaluate` and `score`
    # take theirs from --split.
    split: str = "test"
    # Window error: "mse" (the training loss; the official AE test code) or "mae" (what the
    # official MemAE test code computes for grey frames; on Ped2 it ranks frames better, see
    # the README).
    error: str = "mse"
    # Windows per forward pass when `tune` scores its best trial; `evaluate` and `score` take
    # --batch-size.
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.error not in ("mse", "mae"):
            raise UserError(f"eval.error must be 'mse' or 'mae', got {self.error!r}")
        if self.batch_size < 1:
            raise UserError(f"eval.batch_size must be >= 1, got {self.batch_size}")
