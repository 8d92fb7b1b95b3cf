"""BatchNorm statistics recomputed with an epoch's final weights ("precise BatchNorm").

A BatchNorm layer's running statistics are an exponential average (momentum 0.1, so about the
last ten batches), each batch normalised by slightly older weights. With the small batches
video recipes use (4 clips on Ped2) that average is a noisy estimate of what the final weights
produce, and evaluation normalises with it. Forwarding the epoch's last micro-batches once
more with the final weights and averaging their statistics equally (momentum None) gives the
estimate the checkpoint should carry (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

Weights, gradients and the optimizer are untouched; only BatchNorm buffers change, so the
training trajectory, and a resumed run's, are the same with or without it.
"""

from __future__ import annotations

import time
from collections import deque

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from memae_dist.models.build import model_input


class RecentBatches:
    """The last ``size`` micro-batches a worker trained on, as the uint8 clips it read.

    Held on the host: at 64x64 a 4-clip batch of 16 frames is 256 KiB, at 256x256 4 MiB.
    """

    def __init__(self, size: int) -> None:
        self._batches: deque[tuple[torch.Tensor, torch.Tensor | None]] = deque(maxlen=size)

    def add(self, clip: torch.Tensor, flip: torch.Tensor | None) -> None:
        if self._batches.maxlen:
            # A copy: the batch may be a view of a data block that holding it would pin.
            self._batches.append((clip.clone(), flip))

    def clear(self) -> None:
        self._batches.clear()

    def __len__(self) -> int:
        return len(self._batches)

    def newest(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        return list(self._batches)[len(self._batches) - count:] if count else []


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def common_count(count: int, world: int, device: torch.device) -> int:
    """The fewest batches any worker holds: with global BatchNorm every forward is a collective,
    so all workers must make the same number of them. (On ``device``: NCCL reduces device
    tensors only.)"""
    if world == 1:
        return count
    n = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(n, op=dist.ReduceOp.MIN)
    return int(n.item())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: RecentBatches, *, arch: str,
                        device: torch.device, memory_format: torch.memory_format,
                        autocast, world: int = 1) -> tuple[int, float]:
    """Replace every BatchNorm's running statistics by the equal-weight average over
    ``batches`` forwarded through ``model`` (the plain module, not its DDP or compiled wrapper).

    ``autocast``: a context factory giving the precision training ran in. Returns (batches
    used, seconds). With no BatchNorm or no batches the statistics are left as they are.
    """
    norms = batch_norms(model)
    count = common_count(len(batches), world, device) if norms else 0
    if count == 0:
        return 0, 0.0
    t0 = time.perf_counter()
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts the same
    model.train()
    try:
        for clip, flip in batches.newest(count):
            x = model_input(clip, arch, flip).to(device, non_blocking=True)
            with autocast():
                model(x.contiguous(memory_format=memory_format))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return count, time.perf_counter() - t0
