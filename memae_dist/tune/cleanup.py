"""Giving back the Train workers' resources of trials that Tune stops from outside.

When ASHA stops a trial (or a sweep is interrupted), Tune ends the trial's driver actor; the
Train controller it owns dies with it, but the placement group that holds the trial's workers
belongs to the job and stays. Ray Train's own cleaner needs the Ray dashboard's state API, which
a local Ray started without a dashboard (or a machine running several Ray instances) does not
provide; there every stopped trial would keep its CPUs/GPUs until the sweep ends, and a small
cluster soon has nothing left to schedule on.

So each trial's controller records its workers' placement groups in a registry actor owned by
the sweep driver, and a Tune callback removes the groups of every trial that has ended (a
finished run has removed its own already: then this is a no-op).
"""

from __future__ import annotations

import hashlib
import logging
import time

import ray
from ray import tune
from ray.train.v2._internal.execution.callback import WorkerGroupCallback

log = logging.getLogger("memae_dist.tune")

NAMESPACE = "memae_dist"
# Seconds between a trial's end and the removal of its groups: its actors stop first.
GRACE_S = 2.0


def registry_name(sweep_uri: str) -> str:
    """The same name for the same sweep, so a resumed sweep finds its registry."""
    return "memae-tune-pgs-" + hashlib.sha1(sweep_uri.encode()).hexdigest()[:12]


@ray.remote(num_cpus=0)
class PlacementGroupRegistry:
    """trial id -> placement groups (hex ids) its Train controller created."""

    def __init__(self):
        self.groups: dict[str, list[str]] = {}

    def add(self, trial_id: str, group: str) -> None:
        self.groups.setdefault(trial_id, []).append(group)

    def pop(self, trial_id: str) -> list[str]:
        return self.groups.pop(trial_id, [])

    def pop_all(self) -> list[str]:
        out = [g for groups in self.groups.values() for g in groups]
        self.groups.clear()
        return out


def start_registry(name: str):
    return PlacementGroupRegistry.options(name=name, namespace=NAMESPACE,
                                          get_if_exists=True).remote()


class RecordPlacementGroups(WorkerGroupCallback):
    """Train controller side: report each worker group's placement group to the registry."""

    def __init__(self, registry: str, trial_id: str):
        self.registry = registry
        self.trial_id = trial_id

    def after_worker_group_start(self, worker_group) -> None:
        try:
            group = worker_group.get_worker_group_state().placement_group_handle.placement_group
            registry = ray.get_actor(self.registry, namespace=NAMESPACE)
        except (AttributeError, ValueError) as exc:  # no registry: not run by a sweep driver
            log.debug("placement group not recorded: %s", exc)
            return
        registry.add.remote(self.trial_id, group.id.hex())


class ReleaseEndedTrials(tune.Callback):
    """Tune driver side: remove the placement groups of trials that ended, shortly after."""

    def __init__(self, registry: str):
        self.registry = registry
        self.ended: dict[str, float] = {}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.monotonic()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.monotonic()

    def on_step_begin(self, iteration, trials, **info):
        due = [t for t, at in self.ended.items() if time.monotonic() - at >= GRACE_S]
        if not due:
            return
        try:
            registry = ray.get_actor(self.registry, namespace=NAMESPACE)
        except ValueError:
            return
        for trial_id in due:
            del self.ended[trial_id]
            remove_groups(ray.get(registry.pop.remote(trial_id)))


def release_all(registry) -> None:
    """After the sweep: every group still recorded belongs to a trial that is over."""
    remove_groups(ray.get(registry.pop_all.remote()))


def remove_groups(groups: list[str]) -> None:
    from ray.util import placement_group_table
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for hex_id in groups:
        info = placement_group_table().get(hex_id)
        if info is None or info.get("state") == "REMOVED":
            continue
        log.info("releasing placement group %s of an ended trial", hex_id)
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(hex_id)))
