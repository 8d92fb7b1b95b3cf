"""Memory module of MemAE (paper Sec. 3.3) plus the attention statistics used for monitoring.

Every spatial position of an encoder feature map is one query: the official code addresses the
memory per voxel of the (B, C, T', H', W') encoding, so a clip produces B*T'*H'*W' queries of C
features each. All shape handling is done with reshape/transpose on ``z.shape`` so the module traces
(torch.jit.trace, ONNX export) without Python branches on tensor values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SHRINK_EPS = 1e-12  # keeps the hard-shrinkage division finite when w == lambda
_LOG_EPS = 1e-12  # keeps log(w) finite for weights zeroed by the shrinkage


class MemoryUnit(nn.Module):
    """Soft attention over ``num_slots`` learned prototypes, sparsified by hard shrinkage.

    ``forward(z)`` takes ``(B, C, *spatial)`` or ``(B, C)`` with ``C == slot_dim`` and returns
    ``(z_hat, attention)``: ``z_hat`` has the shape of ``z`` and ``attention`` is
    ``(B, num_slots, *spatial)`` (rows sum to 1, or are all zero if shrinkage removed every slot).
    """

    def __init__(
        self, num_slots: int, slot_dim: int, shrink_threshold: float, addressing: str = "dot"
    ) -> None:
        super().__init__()
        if addressing not in ("dot", "cosine"):
            raise ValueError(f"addressing must be 'dot' or 'cosine', got {addressing!r}")
        self.num_slots = num_slots
        self.slot_dim = slot_dim
        self.shrink_threshold = float(shrink_threshold)
        self.addressing = addressing
        self.memory = nn.Parameter(torch.empty(num_slots, slot_dim))  # (N, C)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.slot_dim)
        nn.init.uniform_(self.memory, -bound, bound)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        device_type = z.device.type
        if torch.is_autocast_enabled(device_type):
            # Addressing stays in fp32 under bf16/fp16 autocast: bf16 logits carry ~3 digits,
            # enough to move weights across the shrinkage threshold (lambda ~ 1/N), and the
            # (B*L, N) products are tiny next to the convolutions, so fp32 costs nothing.
            with torch.autocast(device_type, enabled=False):
                return self._attend(z.float())
        return self._attend(z)

    def _attend(self, z: Tensor) -> tuple[Tensor, Tensor]:
        b, c = z.shape[0], z.shape[1]
        queries = z.reshape(b, c, -1).transpose(1, 2).reshape(-1, c)  # (B*L, C)
        weights = self.address(queries)  # (B*L, N)
        z_hat = weights @ self.memory  # (B*L, C)
        z_hat = z_hat.reshape(b, -1, c).transpose(1, 2).reshape(z.shape)
        attention = weights.reshape(b, -1, self.num_slots).transpose(1, 2)  # (B, N, L)
        attention = attention.reshape((b, self.num_slots) + tuple(z.shape[2:]))
        return z_hat, attention

    def address(self, queries: Tensor) -> Tensor:
        """Addressing weights ``(Q, N)`` for queries ``(Q, C)``: softmax, shrinkage, L1 norm."""
        if self.addressing == "cosine":
            logits = F.normalize(queries, dim=1) @ F.normalize(self.memory, dim=1).t()
        else:
            logits = queries @ self.memory.t()
        weights = F.softmax(logits, dim=1)
        if self.shrink_threshold > 0:
            weights = hard_shrink_relu(weights, self.shrink_threshold)
            weights = F.normalize(weights, p=1, dim=1)
        return weights

    def extra_repr(self) -> str:
        return (
            f"num_slots={self.num_slots}, slot_dim={self.slot_dim}, "
            f"shrink_threshold={self.shrink_threshold}, addressing={self.addressing!r}"
        )


def hard_shrink_relu(w: Tensor, threshold: float) -> Tensor:
    """Paper Eq. 7: keeps ``w`` where ``w > threshold`` and zeroes it elsewhere.

    Written with ReLU instead of a comparison so the gradient reaches the surviving weights (the
    paper's "continuous" rewriting; the same expression as the official code).
    """
    shifted = w - threshold
    return F.relu(shifted) * w / (shifted.abs() + _SHRINK_EPS)


def _rows(attention: Tensor) -> Tensor:
    """``(B, N, *spatial)`` or ``(B, N)`` attention -> ``(Q, N)``, one row per query."""
    b, n = attention.shape[0], attention.shape[1]
    return attention.reshape(b, n, -1).transpose(1, 2).reshape(-1, n)


def entropy_loss(attention: Tensor) -> Tensor:
    """Mean over queries of ``-sum_i w_i log(w_i + 1e-12)`` for ``(B, N, *spatial)`` attention."""
    rows = _rows(attention)  # (Q, N)
    return -(rows * torch.log(rows + _LOG_EPS)).sum(dim=1).mean()


@torch.no_grad()
def slot_mass(attention: Tensor) -> Tensor:
    """Summed weight of each slot over every query of the batch: detached ``(N,)`` float64.

    float64 because the trainer adds it up over an epoch of millions of queries.
    """
    return _rows(attention).sum(dim=0, dtype=torch.float64)


@torch.no_grad()
def memory_usage(attention: Tensor, eps: float = 0.0) -> dict[str, float]:
    """Collapse indicators of one batch of attention ``(B, N, *spatial)``, as Python floats.

    - ``slots_used``: number of slots whose summed weight over the batch is ``> eps``.
    - ``slots_used_frac``: the same divided by N.
    - ``entropy``: mean attention entropy per query (nats; log N means uniform attention).
    - ``zero_rows_frac``: fraction of queries whose weights are all ``<= eps``; such queries
      reconstruct from a zero code (shrinkage threshold above every softmax weight).
    - ``num_queries``: number of queries (rows) in the batch.
    """
    rows = _rows(attention).double()  # (Q, N)
    mass = rows.sum(dim=0)  # (N,)
    used = int((mass > eps).sum().item())
    zero_rows = (rows.amax(dim=1) <= eps).double().mean().item()
    return {
        "slots_used": float(used),
        "slots_used_frac": used / rows.shape[1],
        "entropy": float(entropy_loss(rows).item()),
        "zero_rows_frac": float(zero_rows),
        "num_queries": float(rows.shape[0]),
    }
