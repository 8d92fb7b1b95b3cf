"""Global BatchNorm: two gloo processes give the gradients of one process on the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from memae_dist.train.syncbn import GlobalBatchNorm, convert_batchnorm
from tests.cluster.localcluster import free_port


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.LeakyReLU(0.2),
                         nn.Conv3d(4, 1, 3, padding=1))


def layout(net: nn.Module, bf16: bool) -> nn.Module:
    """bf16 runs take the channels-last layout, as the trainer gives them on a CPU."""
    return net.to(memory_format=torch.channels_last_3d) if bf16 else net


def loss_of(net: nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    if not bf16:
        return (net(x) ** 2).mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return (net(x.contiguous(memory_format=torch.channels_last_3d)).float() ** 2).mean()


def ddp_worker(rank: int, world: int, port: int, x: torch.Tensor, out: str, bf16: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = layout(convert_batchnorm(small_net(), "cpu"), bf16)
    ddp = nn.parallel.DistributedDataParallel(model)
    loss_of(ddp, x.chunk(world)[rank], bf16).backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    grads["running_var"] = model[1].running_var
    torch.save(grads, f"{out}/rank{rank}.pt")
    # Both ranks past their last collective before either tears gloo down: a rank that exits
    # while its peer's gloo threads still talk to it aborts ("terminate called without an
    # active exception"), now and then.
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-channels-last"])
def test_two_workers_match_one_process_on_the_global_batch(tmp_path, bf16):
    x = torch.randn(8, 1, 4, 6, 6) * 3 + 1  # (B, C, T, H, W), mean far from 0
    mp.spawn(ddp_worker, args=(2, free_port(), x, str(tmp_path), bf16), nprocs=2)
    ref = layout(small_net(), bf16)
    loss_of(ref, x, bf16).backward()
    expected = {k: p.grad for k, p in ref.named_parameters()}
    expected["running_var"] = ref[1].running_var
    # bf16 activations carry 3 significant digits; the two sides round in different places.
    tol = {"rtol": 3e-2, "atol": 3e-3} if bf16 else {"rtol": 1e-4, "atol": 1e-6}
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, **tol, msg=key)


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
