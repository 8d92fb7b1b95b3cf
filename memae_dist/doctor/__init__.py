"""``memae-dist doctor`` and the preflight that ``train`` / ``tune`` run: can this cluster work?

The checks: the Ray version; that the cluster answers; per node, the Ray and Python versions,
that ``memae_dist`` imports and which GPUs torch sees; that the run storage is writable, readable
and deletable from the driver *and from every node*; that the dataset manifest is readable
everywhere. The storage check writes a marker from the driver, reads it back on each node, has
each node write its own marker, reads those back on the driver and deletes them all. A local
folder passes on one machine and fails on a multi-node cluster unless it is a shared mount, which
is the mistake this exists to catch: checkpoints written where the other nodes cannot see them.

Every failure carries its fix. :func:`preflight` runs the storage and manifest part before any
training worker starts, so a bad URI fails a job in seconds instead of after the workers are up.
"""

from __future__ import annotations

import logging
import os
import time

from memae_dist.config import ExperimentConfig
from memae_dist.data.storage import describe, join
from memae_dist.doctor.checks import DOCTOR_HINT, FAIL, PASS, SKIP, WARN, Check, format_table
from memae_dist.doctor.cluster import (
    address_problem,
    connect,
    gpu_check,
    ray_version_check,
    resources_check,
)
from memae_dist.doctor.storage_checks import storage_and_node_checks, storage_fix, storage_root
from memae_dist.errors import UserError

__all__ = ["FAIL", "PASS", "SKIP", "WARN", "Check", "address_problem", "format_table",
           "gpu_check", "preflight", "run_doctor", "storage_fix"]

log = logging.getLogger("memae_dist.doctor")


def run_doctor(cfg: ExperimentConfig, address: str | None = None) -> list[Check]:
    """Every check, for ``cfg.run.storage`` and ``cfg.data.path`` (when set)."""
    checks = [ray_version_check()]
    cluster, nodes = connect(address, log_to_driver=False, required=False)
    checks.append(cluster)
    if nodes:
        import ray

        checks.append(resources_check(nodes, cfg, ray.available_resources().get("CPU", 0.0)))
    checks += storage_and_node_checks(cfg, nodes, system=True)
    return checks


def preflight(cfg: ExperimentConfig, address: str | None = None) -> None:
    """Raise a ``UserError`` within seconds when the run storage or the dataset is unusable.

    The driver checks come first and need no cluster. On a cluster reached by ``address`` or
    ``RAY_ADDRESS`` (as inside ``ray job submit``), and on any initialised Ray of several
    nodes, every node then repeats them; a local Ray started here has only this machine.
    """
    import ray

    start = time.monotonic()
    log.info("run %s: storage %s", cfg.run.name,
             describe(join(storage_root(cfg), cfg.run.name), cfg.storage))
    if cfg.data.path:
        log.info("data: %s", describe(cfg.data.path, cfg.storage))
    checks = storage_and_node_checks(cfg, [], system=False)
    nodes: list[dict] = []
    in_worker = ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    # Inside a Ray worker (a Tune trial) the driver that started it has checked the nodes.
    if not any(c.failed for c in checks) and not in_worker and (
        ray.is_initialized() or address or os.environ.get("RAY_ADDRESS")
    ):
        # Same connection ensure_ray would make; it then finds Ray initialised.
        cluster, nodes = connect(address, log_to_driver=True, required=True)
        checks.append(cluster)
        # A cluster reached by address runs in its own environment (its machines, endpoint,
        # credentials) even with one node; a Ray started here shares this process's.
        attached = address or os.environ.get("RAY_ADDRESS")
        nodes = nodes if attached or len(nodes) > 1 else []
        if nodes:
            checks += storage_and_node_checks(cfg, nodes, system=False)
    failed = [c for c in checks if c.failed]
    if failed:
        hint = "" if any(c.fix == DOCTOR_HINT for c in failed) else f" ({DOCTOR_HINT})"
        raise UserError("preflight failed, nothing was started: "
                        + " | ".join(c.line() for c in failed) + hint)
    log.info("preflight passed in %.1f s: storage and dataset usable from the driver%s",
             time.monotonic() - start, f" and all {len(nodes)} nodes" if nodes else "")
