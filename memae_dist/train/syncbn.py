"""BatchNorm over the global batch, on any backend.

With DDP each worker sees ``1/world`` of the global batch; plain BatchNorm normalises with that
share's statistics, so the gradients differ from a single process training on the whole batch.
``torch.nn.SyncBatchNorm`` fixes this on GPUs only. ``GlobalBatchNorm`` does the same with
differentiable all-reduces, which gloo (CPU) supports too: the backward pass all-reduces the
statistics' gradients, so every worker's gradient includes the other workers' losses exactly as
the single-process gradient does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over workers whose backward sums the gradients over workers too."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce(x: Tensor) -> Tensor:
    return _AllReduceSum.apply(x)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm(_BatchNorm):
    """Drop-in for BatchNorm1d/2d/3d (same parameters and buffers, so checkpoints match)."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _world() > 1):
            return super().forward(x)  # eval, or a single process: the stock kernel
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()
        local = torch.cat([xf.sum(dims), xf.new_tensor([x.numel() // c])])  # (C + 1,)
        total = all_reduce(local)
        n = total[c]
        mean = total[:c] / n  # (C,)
        centred = xf - mean.view(shape)
        # Two passes (mean, then squared deviations) as the stock kernel: E[x^2]-E[x]^2 loses
        # digits when |mean| >> std.
        var = all_reduce(centred.square().sum(dims)) / n  # (C,) biased, used to normalise
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), n.detach())
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = self.momentum
        if factor is None:  # cumulative moving average, as BatchNorm does
            factor = 1.0 / float(self.num_batches_tracked)
        unbiased = var * (n / (n - 1).clamp(min=1))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def convert_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Every BatchNorm of ``module`` normalised over the global batch.

    GPUs get ``nn.SyncBatchNorm`` (fused NCCL kernels); other devices ``GlobalBatchNorm``. The
    new layers reuse the old parameters and buffers, so optimizers and checkpoints still match.
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out
