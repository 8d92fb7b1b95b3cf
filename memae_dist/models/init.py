"""Weight initialisation shared by the conv nets (the official code's ``weights_init``)."""

from __future__ import annotations

from torch import nn

_CONV = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def init_weights(module: nn.Module) -> None:
    """DCGAN-style init: conv weights N(0, 0.02), BN scale N(1, 0.02), every bias 0.

    One departure from the official ``weights_init``: it leaves conv biases at PyTorch's
    default (uniform, +-1/sqrt(fan_in)). A BatchNorm follows every conv but the output layer,
    cancelling its bias, so only the output's starting offset differs (0 here, up to +-0.19
    there for the 3D net), which the first steps learn.

    Use with ``net.apply(init_weights)``; other module types (the memory, Linear) are left alone.
    """
    if isinstance(module, _CONV):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, _NORM):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
