"""The memory-health figures of an epoch, and the collapse warning with the advice that fits."""

import logging

import torch

from memae_dist.train.history import EpochStats, memory_health


def stats(mass: list[float], clips: float = 8.0) -> EpochStats:
    return EpochStats(clips=clips, slot_mass=torch.tensor(mass, dtype=torch.float64))


def test_a_healthy_memory_is_measured_and_not_warned_about(caplog):
    with caplog.at_level(logging.WARNING, "memae_dist.train"):
        health = memory_health(stats([1.0, 1.0, 2.0, 0.0]), min_used_slots=2)
    assert health["slots_used"] == 3 and health["slots_used_frac"] == 0.75
    assert abs(health["top_slot_share"] - 0.5) < 1e-9 and not health["memory_collapse"]
    assert caplog.text == ""


def test_collapse_is_recorded_and_warned_with_the_advice_for_the_addressing(caplog):
    with caplog.at_level(logging.WARNING, "memae_dist.train"):
        one = memory_health(stats([0.0, 3.0, 0.0, 0.0]), min_used_slots=2)
        zero = memory_health(stats([0.0] * 4), min_used_slots=2, cosine=True)
        # Every DDP rank holds the same reduced figures; only rank 0 says so.
        other_rank = memory_health(stats([0.0] * 4), min_used_slots=2, warn=False)
    assert other_rank == zero
    assert one["memory_collapse"] and one["slots_used"] == 1 and one["top_slot_share"] == 1.0
    assert zero["memory_collapse"] and zero["slots_used"] == 0
    first, second = caplog.text.strip().splitlines()
    assert ("memory collapse: 1 of 4 slots received weight this epoch (threshold 2); try a "
            "shrink threshold between 1/N and 3/N (model.shrink_threshold)") in first
    assert ("memory collapse: 0 of 4 slots received weight this epoch (threshold 2); with "
            "cosine addressing use a shrink threshold below 1/N") in second


def test_an_epoch_without_a_step_is_not_a_collapse(caplog):
    with caplog.at_level(logging.WARNING, "memae_dist.train"):
        assert memory_health(stats([0.0] * 4, clips=0), min_used_slots=2) == {}
    assert caplog.text == ""
