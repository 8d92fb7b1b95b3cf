"""Precise BatchNorm: statistics recomputed with the final weights, alone and across workers."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from memae_dist.train.precise_bn import RecentBatches, recompute_batchnorm
from memae_dist.train.syncbn import convert_batchnorm
from tests.cluster.localcluster import free_port

CPU = torch.device("cpu")


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.LeakyReLU(0.2),
                         nn.Conv3d(4, 1, 3, padding=1), nn.BatchNorm3d(1))


def clips(count: int, batch: int, seed: int = 1) -> list[torch.Tensor]:
    """uint8 clips (B, L, H, W) as the frame store delivers them."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (batch, 4, 6, 6), generator=gen, dtype=torch.uint8)
            for _ in range(count)]


def recompute(net: nn.Module, batches: list[torch.Tensor], keep: int, world: int = 1):
    recent = RecentBatches(keep)
    for clip in batches:
        recent.add(clip, None)
    return recompute_batchnorm(net, recent, arch="video", device=CPU,
                               memory_format=torch.contiguous_format,
                               autocast=contextlib.nullcontext, world=world)


def expected_first_norm(net: nn.Module, batches: list[torch.Tensor]):
    """Equal-weight mean of each batch's mean and unbiased variance after the first conv."""
    with torch.no_grad():
        acts = [net[0](clip.float().div(127.5).sub(1).unsqueeze(1)) for clip in batches]
    means = torch.stack([a.mean(dim=(0, 2, 3, 4)) for a in acts])
    variances = torch.stack([a.transpose(0, 1).flatten(1).var(dim=1) for a in acts])
    return means.mean(0), variances.mean(0)


def test_statistics_are_the_equal_average_over_the_newest_batches_and_nothing_else_moves():
    net = small_net().eval()
    net[1].running_mean.fill_(5.0)  # stale statistics, far from the data's
    before = {k: v.clone() for k, v in net.named_parameters()}
    batches = clips(7, batch=3)
    used, seconds = recompute(net, batches, keep=5)
    assert used == 5 and seconds >= 0
    mean, var = expected_first_norm(net, batches[-5:])  # only the newest five count
    torch.testing.assert_close(net[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[1].running_var, var, rtol=1e-5, atol=1e-6)
    assert int(net[1].num_batches_tracked) == 5
    # Weights, momentum and the mode are as they were.
    assert all(torch.equal(before[k], v) for k, v in net.named_parameters())
    assert net[1].momentum == 0.1 and net[4].momentum == 0.1 and not net.training


def test_nothing_held_or_no_batchnorm_leaves_the_statistics_alone():
    net = small_net()
    stale = net[1].running_mean.clone().fill_(5.0)
    net[1].running_mean.copy_(stale)
    assert recompute(net, clips(3, batch=2), keep=0) == (0, 0.0)  # precise_bn_batches = 0
    assert torch.equal(net[1].running_mean, stale)
    plain = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1))
    assert recompute(plain, clips(3, batch=2), keep=3) == (0, 0.0)


def worker(rank: int, world: int, port: int, batches: list[torch.Tensor], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    net = convert_batchnorm(small_net(), "cpu")
    # Each worker holds its half of every global batch; rank 1 one batch more (its epoch ran
    # longer): the common count is taken, so neither waits on a collective the other skips.
    mine = [b.chunk(world)[rank] for b in batches]
    if rank == 1:
        mine = clips(1, batch=2, seed=9) + mine
    used, _ = recompute(net, mine, keep=10, world=world)
    torch.save({"used": used, **{k: v for k, v in net.state_dict().items() if "running" in k}},
               f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_two_workers_agree_with_one_process_on_the_global_batches(tmp_path):
    batches = clips(3, batch=4)
    mp.spawn(worker, args=(2, free_port(), batches, str(tmp_path)), nprocs=2)
    ref = small_net()
    recompute(ref, batches, keep=10)
    expected = {k: v for k, v in ref.state_dict().items() if "running" in k}
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got.pop("used") == 3
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-6, msg=key)
