"""The paper's 2D-conv encoder/decoder for 28x28 images (MNIST, Sec. 4.1).

Paper notation Conv2(k, s, c) / Dconv2(k, s, c): encoder Conv2(1,2,16)-Conv2(3,2,32)-Conv2(3,2,64),
decoder Dconv2(3,2,64)-Dconv2(3,2,32)-Dconv2(3,2,1), with BN + LeakyReLU(0.2) after every layer but
the last as in the official video net. Spatial path: 28 -> 14 -> 7 -> 4 -> 7 -> 14 -> 28.
"""

from __future__ import annotations

from torch import nn

from memae_dist.models.init import init_weights

FEATURES = 64  # channels of the (B, 64, 4, 4) encoding, i.e. the memory slot size C
CODE_SIZE = 4  # height = width of the encoding of a 28x28 image


def _block(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.LeakyReLU(0.2, inplace=True)]


def image_encoder(in_channels: int = 1) -> nn.Sequential:
    """``(B, C, 28, 28) -> (B, 64, 4, 4)``."""
    net = nn.Sequential(
        *_block(nn.Conv2d(in_channels, 16, 1, stride=2), 16),  # 28 -> 14
        *_block(nn.Conv2d(16, 32, 3, stride=2, padding=1), 32),  # 14 -> 7
        *_block(nn.Conv2d(32, FEATURES, 3, stride=2, padding=1), FEATURES),  # 7 -> 4
    )
    net.apply(init_weights)
    return net


def image_decoder(in_channels: int = 1) -> nn.Sequential:
    """``(B, 64, 4, 4) -> (B, C, 28, 28)``, linear output (no activation)."""
    # output_padding picks the odd/even size on each step so 4 lands back on exactly 28.
    net = nn.Sequential(
        *_block(nn.ConvTranspose2d(FEATURES, 64, 3, stride=2, padding=1), 64),  # 4 -> 7
        *_block(nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), 32),  # 14
        nn.ConvTranspose2d(32, in_channels, 3, stride=2, padding=1, output_padding=1),  # 28
    )
    net.apply(init_weights)
    return net
