"""Fully connected encoder/decoder for tabular vectors ``(B, D)``.

Follows the paper's tabular nets (KDDCUP99, Sec. 4.3): FC layers with tanh in between and a
linear bottleneck, e.g. FC(D,256,tanh)-FC(256,128,tanh)-FC(128,64,none) for hidden
(256, 128, 64); the decoder mirrors it and ends with a linear FC(256, D). The memory addresses
the whole bottleneck vector as one query. Linear layers keep PyTorch's default init.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def _stack(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:  # no activation on the bottleneck or the reconstruction
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def mlp_encoder(input_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """``(B, input_dim) -> (B, hidden[-1])``."""
    return _stack([input_dim, *hidden])


def mlp_decoder(input_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """``(B, hidden[-1]) -> (B, input_dim)``."""
    return _stack([*reversed(hidden), input_dim])
