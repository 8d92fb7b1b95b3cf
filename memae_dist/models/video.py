"""The paper's 3D-conv encoder/decoder for video clips (official ``AutoEncoderCov3DMem``).

Input ``(B, C, T, H, W)`` with T = 16 and H, W multiples of 16; the encoding is
``(B, 256, T/8, H/g, W/g)`` and the decoder restores the input shape exactly. ``g``, the grid
step, is 16 in the paper's net: one memory query per 16x16 pixels. 8 and 4 skip the spatial
halving of the last one or two encoder layers (and the matching decoder layers) so that small
frames still get a fine grid of queries: a 64x64 frame has 4x4 at g = 16, 8x8 at g = 8.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from memae_dist.models.config import GRID_STEPS
from memae_dist.models.init import init_weights

FEATURES = 256  # channels of the encoding, i.e. the memory slot size C
_WIDTHS = (96, 128, 256, FEATURES)  # encoder output channels, first layer first


def _spatial_strides(grid_step: int) -> list[int]:
    """Spatial stride of each encoder layer, first first: 2 2 2 2 for g = 16, 2 2 2 1 for 8."""
    if grid_step not in GRID_STEPS:
        raise ValueError(f"grid step must be one of {GRID_STEPS}, got {grid_step}")
    halvings = grid_step.bit_length() - 1
    return [2] * halvings + [1] * (len(_WIDTHS) - halvings)


def _block(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm3d(channels), nn.LeakyReLU(0.2, inplace=True)]


class ConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` whose bias is added after the convolution while training.

    Same parameters, same function. In a channels-last bf16 backward pass oneDNN computes a
    transposed convolution's bias gradient with its reference kernel: 12% of a CPU training
    step of this network. Added apart, that gradient is a plain sum. Eval mode (scoring, export)
    keeps the stock fused bias.
    """

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if not self.training or self.bias is None or output_size is not None:
            return super().forward(x, output_size)
        y = F.conv_transpose3d(x, self.weight, None, self.stride, self.padding,
                               self.output_padding, self.groups, self.dilation)
        return y + self.bias.view(1, -1, 1, 1, 1).to(y.dtype)


def video_encoder(in_channels: int = 1, grid_step: int = 16) -> nn.Sequential:
    """``(B, C, T, H, W) -> (B, 256, T/8, H/g, W/g)``, g = ``grid_step``."""
    layers: list[nn.Module] = []
    prev = in_channels
    for i, (width, hw) in enumerate(zip(_WIDTHS, _spatial_strides(grid_step))):
        # The first layer keeps time: a 16-frame clip only has room for three temporal halvings.
        stride = (1 if i == 0 else 2, hw, hw)
        layers += _block(nn.Conv3d(prev, width, 3, stride=stride, padding=1), width)
        prev = width
    net = nn.Sequential(*layers)
    net.apply(init_weights)
    return net


def video_decoder(in_channels: int = 1, grid_step: int = 16) -> nn.Sequential:
    """``(B, 256, T/8, H/g, W/g) -> (B, C, T, H, W)``, linear output (no activation)."""
    widths = (FEATURES, 128, 96)  # 256 -> 256 -> 128 -> 96, then 96 -> C
    # The encoder's layers mirrored: its last layer's stride is the decoder's first.
    spatial = _spatial_strides(grid_step)[:0:-1]
    layers: list[nn.Module] = []
    prev = FEATURES
    for width, hw in zip(widths, spatial):
        up = ConvTranspose3d(prev, width, 3, stride=(2, hw, hw), padding=1,
                             output_padding=(1, hw - 1, hw - 1))
        layers += _block(up, width)
        prev = width
    layers.append(
        ConvTranspose3d(prev, in_channels, 3, stride=(1, 2, 2), padding=1,
                        output_padding=(0, 1, 1))
    )
    net = nn.Sequential(*layers)
    net.apply(init_weights)
    return net
