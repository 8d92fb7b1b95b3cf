"""Wrapping for DDP: gradients reach DDP's buckets in their parameters' layout."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from memae_dist.config import load_config
from memae_dist.models.build import build_model
from memae_dist.train.precision import keep_grad_layout
from tests.cluster.localcluster import free_port

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def video_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(load_config(CONFIG).model)


def backward(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 16, 32, 32, generator=gen)  # (B, C, T, H, W), fp32 contiguous, as on CPU
    model(x).recon.square().mean().backward()


def odd_strides(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.grad.stride() != p.stride()]


def test_every_gradient_keeps_its_parameters_strides():
    model, plain = video_model(), video_model()
    keep_grad_layout(model)
    backward(model)
    backward(plain)
    assert odd_strides(model) == []
    # The values are untouched: only the layout of a size-1 dimension may differ.
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=1)
    model = video_model()
    keep_grad_layout(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            backward(ddp)
            ddp.zero_grad(set_to_none=True)
    with open(out, "w") as f:
        f.write("\n".join(str(w.message).splitlines()[0] for w in caught))
    dist.destroy_process_group()


def test_ddp_sees_no_stride_mismatch(tmp_path):
    out = tmp_path / "warnings.txt"
    mp.spawn(ddp_worker, args=(free_port(), str(out)), nprocs=1)
    assert "Grad strides do not match" not in out.read_text()
