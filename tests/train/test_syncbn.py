"""Global BatchNorm: two gloo processes give the gradients of one process on the whole batch."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from memae_dist.train.syncbn import GlobalBatchNorm, convert_batchnorm


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.LeakyReLU(0.2),
                         nn.Conv3d(4, 1, 3, padding=1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, world: int, port: int, x: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = convert_batchnorm(small_net(), "cpu")
    ddp = nn.parallel.DistributedDataParallel(model)
    (ddp(x.chunk(world)[rank]) ** 2).mean().backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    grads["running_var"] = model[1].running_var
    torch.save(grads, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_workers_match_one_process_on_the_global_batch(tmp_path):
    x = torch.randn(8, 1, 4, 6, 6) * 3 + 1  # (B, C, T, H, W), mean far from 0
    mp.spawn(ddp_worker, args=(2, free_port(), x, str(tmp_path)), nprocs=2)
    ref = small_net()
    (ref(x) ** 2).mean().backward()
    expected = {k: p.grad for k, p in ref.named_parameters()}
    expected["running_var"] = ref[1].running_var
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_conversion_keeps_parameters_and_checkpoint_keys():
    net = small_net()
    params = list(net.parameters())
    keys = list(net.state_dict())
    converted = convert_batchnorm(net, "cpu")
    assert isinstance(converted[1], GlobalBatchNorm)
    assert all(a is b for a, b in zip(params, converted.parameters()))  # optimizer still valid
    assert list(converted.state_dict()) == keys  # checkpoints load into the plain model
    x = torch.randn(4, 1, 4, 6, 6)
    converted.eval(), small_net().eval()
    # Outside a process group (and in eval mode) it is the stock BatchNorm.
    torch.testing.assert_close(converted.train()(x), small_net().train()(x))
