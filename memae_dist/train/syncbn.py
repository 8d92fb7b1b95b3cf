"""BatchNorm over the global batch, on any backend.

With DDP each worker sees ``1/world`` of the global batch; plain BatchNorm normalises with that
share's statistics, so the gradients differ from a single process training on the whole batch.
``torch.nn.SyncBatchNorm`` fixes this on GPUs only. ``GlobalBatchNorm`` does the same with
collectives gloo (CPU) supports too: one all-gather of the per-worker statistics in the forward
pass and one all-reduce of two per-channel sums in the backward pass, so every worker's gradient
includes the other workers' losses exactly as the single-process gradient does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, biased variance, count) of ``x`` per channel over every worker's batch, in fp32.

    Local statistics from the stock kernel (one fused pass, fp32 accumulators even for bf16
    input), one all-gather of 2C + 1 numbers, then Chan's pairwise combination: exact and
    stable even when |mean| >> std.
    """
    # A float weight selects the kernel's mixed-type path: fp32 statistics for bf16 input.
    ones = torch.ones(x.shape[1], device=x.device)
    _, mean, invstd = torch.native_batch_norm(x, ones, None, None, None, True, 0.0, eps)
    var = invstd.square().reciprocal() - eps  # (C,) biased
    n = mean.new_full((1,), x.numel() // x.shape[1])
    local = torch.cat([mean, var, n])  # (2C + 1,)
    parts = [torch.empty_like(local) for _ in range(_world())]
    dist.all_gather(parts, local)
    c = mean.numel()
    table = torch.stack(parts)  # (W, 2C + 1)
    means, variances, counts = table[:, :c], table[:, c:2 * c], table[:, 2 * c:]
    total = counts.sum()
    gmean = (counts * means).sum(0) / total
    gvar = (counts * (variances + (means - gmean).square())).sum(0) / total
    return gmean, gvar, total


class _GlobalNorm(torch.autograd.Function):
    """BatchNorm's forward and backward with statistics over every worker's batch.

    The elementwise work runs in the stock BatchNorm kernels (eval-mode forward and backward
    with the global statistics, fused, bf16- and channels-last-aware); what those kernels leave
    out is the gradient through the statistics, added afterwards from two per-channel sums
    all-reduced over the workers. Weight and bias gradients stay local: DDP averages them.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        mean, var, n = _global_stats(x, eps)
        y = torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps, False)
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps, ctx.total, ctx.has_bias = eps, n, bias is not None
        ctx.mark_non_differentiable(mean, var, n)
        return y, mean, var, n

    @staticmethod
    def backward(ctx, gy: Tensor, *_):
        x, weight, mean, var = ctx.saved_tensors
        # Eval-mode backward: dx as if the statistics were constants, and the local sums
        # sum(dy) (= bias grad) and sum(dy * xhat) (= weight grad) in the same fused pass.
        dx, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            gy.contiguous(memory_format=_layout(x)), x, weight, mean, var, None, None, False,
            ctx.eps, [True, True, True])
        totals = torch.cat([sum_dy.float(), sum_dy_xhat.float()])
        dist.all_reduce(totals)
        mean_dy, mean_dy_xhat = (totals / ctx.total).chunk(2)
        invstd = torch.rsqrt(var + ctx.eps)
        gain = invstd if weight is None else invstd * weight.float()
        # What the statistics add: -gain * (mean(dy) + xhat * mean(dy * xhat)), linear in x.
        k = -gain * invstd * mean_dy_xhat
        c = mean * gain * invstd * mean_dy_xhat - gain * mean_dy
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        # In the activations' dtype: mixed bf16/fp32 elementwise kernels are 40x slower.
        dx = dx.addcmul_(x, k.to(dx.dtype).view(shape)).add_(c.to(dx.dtype).view(shape))
        grad_w = sum_dy_xhat if weight is not None else None
        grad_b = sum_dy if ctx.has_bias else None
        return dx, grad_w, grad_b, None


def _layout(x: Tensor) -> torch.memory_format:
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class GlobalBatchNorm(_BatchNorm):
    """Drop-in for BatchNorm1d/2d/3d (same parameters and buffers, so checkpoints match)."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _world() > 1):
            return super().forward(x)  # eval, or a single process: the stock kernel
        y, mean, var, n = _GlobalNorm.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            self._update_running(mean, var, n)
        return y

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
