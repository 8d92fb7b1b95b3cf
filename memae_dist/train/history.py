"""Per-epoch statistics: accumulated on each worker, summed across workers, turned into metrics.

Memory health is tracked here because the paper's known failure mode is silent: attention
collapses onto a few slots, or shrinkage zeroes every weight, and the loss still looks fine.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

log = logging.getLogger("memae_dist.train")

# Scalar fields summed across workers, in their packed order.
_SUMS = ("clips", "loss", "recon", "entropy", "batches", "skipped", "overflow_steps",
         "data_wait", "wall")
_ON_DEVICE = ("loss", "recon", "entropy")  # summed on the device: no host sync per step


@dataclass
class EpochStats:
    clips: float = 0.0
    loss: float = 0.0        # sum over batches of the batch-mean loss, weighted by batch size
    recon: float = 0.0
    entropy: float = 0.0
    batches: float = 0.0
    skipped: float = 0.0
    overflow_steps: float = 0.0  # fp16 steps the gradient scaler dropped (overflow)
    data_wait: float = 0.0   # seconds blocked waiting for the next batch
    wall: float = 0.0
    first_batch_s: float | None = None
    slot_mass: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    # (3,) float64 running sums of loss, recon, entropy on the training device.
    device_sums: torch.Tensor | None = None

    @classmethod
    def zeros(cls, num_slots: int, device: torch.device | str = "cpu") -> EpochStats:
        return cls(slot_mass=torch.zeros(num_slots, dtype=torch.float64, device=device),
                   device_sums=torch.zeros(len(_ON_DEVICE), dtype=torch.float64, device=device))

    def add(self, n: int, loss: torch.Tensor, parts: dict, mass: torch.Tensor | None) -> None:
        self.clips += n
        self.batches += 1
        values = torch.stack([loss.detach(), parts["recon"].detach(), parts["entropy"].detach()])
        if self.device_sums is None:
            self.device_sums = torch.zeros(len(_ON_DEVICE), dtype=torch.float64,
                                           device=values.device)
        self.device_sums += values.double() * n
        if mass is not None:
            self.slot_mass += mass.detach().double()

    def settle(self) -> EpochStats:
        """Move the on-device sums into the plain fields (one host sync per epoch)."""
        if self.device_sums is not None:
            for name, value in zip(_ON_DEVICE, self.device_sums.tolist()):
                setattr(self, name, value)
            self.device_sums = None
        return self

    def pack(self, device: torch.device | str = "cpu") -> torch.Tensor:
        self.settle()
        scalars = torch.tensor([getattr(self, name) for name in _SUMS], dtype=torch.float64)
        return torch.cat([scalars.to(device), self.slot_mass.to(device)])

    def unpack(self, packed: torch.Tensor) -> EpochStats:
        n = len(_SUMS)
        packed = packed.cpu()
        values = packed[:n].tolist()
        out = EpochStats(**dict(zip(_SUMS, values)), first_batch_s=self.first_batch_s)
        out.slot_mass = packed[n:].clone()
        return out


def epoch_metrics(stats: EpochStats, *, epoch: int, step: int, world: int,
                  min_used_slots: int, cosine: bool = False, warn: bool = True) -> dict:
    """Reduced statistics -> the metrics row reported to Ray and kept in the history.

    ``warn``: log a memory collapse; every rank holds the same reduced figures, so one says it."""
    stats.settle()
    clips = max(stats.clips, 1.0)
    # Walls are summed over workers; the epoch took the mean of them.
    wall = stats.wall / max(world, 1)
    metrics = {
        "epoch": epoch,
        "step": step,
        "loss": stats.loss / clips if stats.clips else math.nan,
        "recon": stats.recon / clips if stats.clips else math.nan,
        "entropy": stats.entropy / clips if stats.clips else math.nan,
        "clips": int(stats.clips),
        "clips_per_s": stats.clips / wall if wall > 0 else 0.0,
        "data_wait_frac": stats.data_wait / max(stats.wall, 1e-9),
        "data_wait_s": stats.data_wait / max(world, 1),
        "time_to_first_batch_s": stats.first_batch_s or 0.0,
        "epoch_s": wall,
        "skipped_batches": int(stats.skipped),
        # Summed over workers, which drop the same steps: DDP all-reduces the gradients first.
        "overflow_steps": int(stats.overflow_steps) // max(world, 1),
        "workers": world,
    }
    metrics.update(memory_health(stats, min_used_slots, cosine, warn))
    return metrics


def memory_health(stats: EpochStats, min_used_slots: int, cosine: bool = False,
                  warn: bool = True) -> dict:
    mass = stats.slot_mass.cpu()
    if mass.numel() == 0 or not stats.clips:  # no step, no addressing to judge
        return {}
    total = float(mass.sum())
    used = int((mass > 0).sum())
    if total > 0:
        p = mass / total
        nz = p[p > 0]
        usage_entropy = float(-(nz * nz.log()).sum())
        top_share = float(p.max())
    else:
        usage_entropy, top_share = 0.0, 0.0
    health = {
        "slots_used": used,
        "slots_used_frac": used / mass.numel(),
        "slot_usage_entropy": usage_entropy,
        "slot_usage_perplexity": math.exp(usage_entropy),
        "top_slot_share": top_share,
        "memory_collapse": bool(used < min_used_slots or total == 0),
    }
    if health["memory_collapse"] and warn:
        log.warning(
            "memory collapse: %d of %d slots received weight this epoch (threshold %d); %s",
            used, mass.numel(), min_used_slots,
            # Cosine similarities lie in [-1, 1]: their softmax keeps every weight near 1/N.
            "with cosine addressing use a shrink threshold below 1/N (model.shrink_threshold)"
            if cosine else
            "try a shrink threshold between 1/N and 3/N (model.shrink_threshold)",
        )
    return health


def write_history(run_uri: str, history: list[dict], storage=None) -> None:
    """The run's metrics beside its checkpoints, as JSON and CSV, each replaced atomically."""
    import csv
    import io
    import json

    from memae_dist.data.storage import join, write_bytes_atomic
    from memae_dist.layout import HISTORY_CSV, HISTORY_FILE

    write_bytes_atomic(join(run_uri, HISTORY_FILE),
                       json.dumps(history, indent=2).encode(), storage)
    columns: list[str] = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_bytes_atomic(join(run_uri, HISTORY_CSV), buf.getvalue().encode(), storage)
