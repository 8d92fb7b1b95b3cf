"""Connecting to Ray, or starting a local Ray sized for training plus Ray Data."""

from __future__ import annotations

import math
import os

from memae_dist.errors import UserError

# The object store is kept small by default: frames travel as compact uint8 blocks, and on a
# laptop Ray's default (30% of RAM per node) would take memory training needs.
DEFAULT_OBJECT_STORE_BYTES = 512 * 1024**2


def ensure_ray(cpus_needed: float = 0.0, address: str | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), or start a local Ray.

    A local Ray advertises more logical CPUs than the machine has: logical CPUs are only a
    scheduling budget, and training workers that hold every core would leave Ray Data's read
    tasks nothing, which stalls the stream.
    """
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, log_to_driver=True)
        return
    cores = os.cpu_count() or 1
    ray.init(
        # "local": never join a cluster that some `ray start` left running on this machine.
        address="local",
        num_cpus=max(cores, math.ceil(cpus_needed)) + 2,
        object_store_memory=int(os.environ.get("MEMAE_OBJECT_STORE_BYTES",
                                               DEFAULT_OBJECT_STORE_BYTES)),
        # Ray Train's placement-group cleaner polls the state API, which the dashboard serves;
        # without it every run logs "Failed to query Ray Train Controller actor state" each
        # second. A busy port 8265 makes Ray take the next free one.
        include_dashboard=True,
        log_to_driver=True,
    )


def check_room_for_data(cpus_for_training: float) -> None:
    """Refuse to start when training workers would leave Ray Data no CPU to read with."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    if total - cpus_for_training < 1.0:
        raise UserError(
            f"the Ray cluster has {total:g} CPUs and the training workers take "
            f"{cpus_for_training:g} (train.workers x train.cpus_per_worker): Ray Data needs at "
            "least 1 free CPU to read clips; lower train.cpus_per_worker (fractions are fine) "
            "or start Ray with more logical CPUs (ray start --num-cpus)"
        )
