"""Numeric precision, memory layout and wrapping of the model on one worker.

bf16 autocast needs no loss scaling; fp16 does, and its ``GradScaler`` state is saved in
checkpoints so a resumed run keeps its scale.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from memae_dist.train.config import TrainConfig

log = logging.getLogger("memae_dist.train")


class Precision:
    """Autocast context, loss scaling and the optimizer step for one precision setting."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        mode = cfg.precision
        if mode == "auto":
            mode = "bf16" if device.type == "cuda" else "fp32"
        self.mode = mode
        self.device_type = device.type
        if device.type == "cpu" and mode in ("bf16", "fp16") and not cpu_has_native(mode):
            log.warning("train.precision=%s: this CPU has no AMX %s tiles, so training runs "
                        "no faster than fp32 and up to 30x slower; use fp32", mode, mode)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        self.scaler = torch.amp.GradScaler(device.type, enabled=mode == "fp16")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the gradients -> False where fp16's scaler dropped the step: gradients that
        overflowed its scale leave the weights as they were, and the scale is halved."""
        if not self.scaler.is_enabled():
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)


def cpu_has_native(mode: str) -> bool:
    """Whether this CPU runs ``mode`` ("bf16"/"fp16") convolutions natively (AMX tiles).

    Measured on the paper's 3D-conv net: bf16 with AMX is 2.4x fp32; with AVX-512 bf16 but no
    AMX it only ties fp32, and on AVX2 (emulated) it is 30x slower.
    """
    probe = {"bf16": "_is_amx_tile_supported", "fp16": "_is_amx_fp16_supported"}[mode]
    return bool(getattr(torch.cpu, probe, lambda: False)())


def memory_format(cfg: TrainConfig, arch: str, device: torch.device) -> torch.memory_format:
    """channels_last_3d where it helps: 3D convolutions on GPU (cuDNN's NDHWC kernels) and bf16
    on CPU (oneDNN's bf16 kernels: 1.24x the contiguous layout's training step)."""
    fast = device.type == "cuda" or (device.type == "cpu" and cfg.precision == "bf16")
    if arch == "mlp":  # (B, D) vectors have no channels to put last
        return torch.contiguous_format
    if cfg.memory_format == "channels_last" or (cfg.memory_format == "auto" and fast):
        return torch.channels_last_3d if arch == "video" else torch.channels_last
    return torch.contiguous_format


def wrap_model(model: nn.Module, cfg: TrainConfig, world: int) -> nn.Module:
    """DDP across workers (Ray picks NCCL or gloo), then ``torch.compile`` when asked.

    ``model`` is already on its device; the returned module is what the training step calls,
    while ``model`` itself stays the one to save and to validate with.
    """
    import ray.train.torch

    wrapped = model
    if world > 1:
        keep_grad_layout(model)
        wrapped = ray.train.torch.prepare_model(model, move_to_device=False)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def keep_grad_layout(model: nn.Module) -> None:
    """Hand each gradient over with its parameter's strides.

    A weight with a size-1 dimension, such as the video decoder's last transposed convolution
    (96 -> 1 channels, weight (96, 1, 3, 3, 3)), has two stride layouts over the same memory.
    In fp32 on CPU, oneDNN's backward returns the channels-last one for a contiguous weight,
    autograd accepts it as contiguous, and DDP, which compares strides exactly, warns in every
    worker's log that the gradient does not match its bucket. Only parameters with a size-1
    dimension get the hook, and it copies only a gradient whose strides differ: 10 KB a step
    here (no measurable change in step time).
    """
    for param in model.parameters():
        if param.requires_grad and 1 in param.shape:
            param.register_hook(_with_strides(param.stride()))


def _with_strides(stride: tuple[int, ...]):
    # The hook keeps the strides, not the parameter: no reference cycle through its hooks.
    def hook(grad: torch.Tensor) -> torch.Tensor:
        if grad.stride() == stride:
            return grad
        return torch.empty_strided(grad.shape, stride, dtype=grad.dtype,
                                   device=grad.device).copy_(grad)
    return hook
