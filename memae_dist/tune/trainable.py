"""One sweep trial: a Tune function trainable that builds and fits a ``TorchTrainer``.

Ray 2.x (Train V2) no longer nests a trainer inside ``Tuner``; instead each trial is a small
driver: it turns the sampled values into a full experiment config, and runs the normal training
entry point (``train.trainer.fit``) with a callback that forwards every epoch's metrics to Tune.
The trial itself holds almost no resources; its Train workers request their own.

Each trial trains a normal run (``SWEEP/runs/<trial id>``), so an interrupted sweep resumes its
unfinished trials from their last epoch checkpoint, and the best trial's checkpoint is an
ordinary checkpoint that ``evaluate`` and ``train --config`` understand.
"""

from __future__ import annotations

from typing import Any

from memae_dist.config import ExperimentConfig, from_dict
from memae_dist.data.storage import join
from memae_dist.tune.cleanup import RecordPlacementGroups
from memae_dist.tune.objective import Objective, ObjectiveReportCallback
from memae_dist.tune.space import SearchSpace

RUNS_DIR = "runs"


def keep_credentials_out_of_trials() -> None:
    """Stop Ray Tune from copying the driver's ``AWS_*`` keys into every trial's runtime env.

    Tune does it for its own storage syncing; but a runtime env is stored by the cluster, shown
    in its dashboard and logged by the runtime-env agent, where the keys do not belong. Trials,
    like training workers, read them from their node's environment (CLUSTER.md), which a
    local Ray started by this process inherits.
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(
        name for name in class_cache.ENV_VARS_TO_PROPAGATE if not name.startswith("AWS_"))


class TrialDiverged(RuntimeError):
    """The trial's loss became NaN/inf: it is stopped and marked, the sweep goes on."""


def trial_config(space: SearchSpace, base: dict[str, Any], sample: dict[str, Any],
                 sweep_uri: str, trial_id: str) -> ExperimentConfig:
    tree = space.apply(base, sample)
    tree["run"] = {**tree.get("run", {}), "storage": join(sweep_uri, RUNS_DIR), "name": trial_id}
    return from_dict(ExperimentConfig, tree)


def run_trial(sample: dict[str, Any], *, space: SearchSpace, base: dict[str, Any],
              objective: Objective, sweep_uri: str, registry: str = "") -> None:
    """The Tune trainable (bound to the sweep's constants with ``tune.with_parameters``)."""
    import ray.tune

    from memae_dist.train.trainer import completed_epochs, fit, run_uri

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(space, base, sample, sweep_uri, trial_id)
    done_before = completed_epochs(run_uri(cfg), cfg)
    callbacks = [ObjectiveReportCallback(objective)]
    if registry:  # so the sweep can free this trial's workers if Tune stops it
        callbacks.append(RecordPlacementGroups(registry, trial_id))
    try:
        result = fit(cfg, callbacks=callbacks, exclusive=False)
    except Exception as exc:
        reason = divergence(exc)
        if reason is not None:
            raise TrialDiverged(f"trial {trial_id} diverged: {reason}") from None
        raise
    if done_before >= cfg.train.epochs and result.history:
        # An interrupted sweep can leave a trial whose run finished after Tune stopped
        # listening; the rerun trains nothing, so hand Tune the final epoch it missed.
        ray.tune.report(objective.annotate(result.history[-1]))


def divergence(exc: BaseException) -> str | None:
    """The non-finite-loss message inside a (Ray-wrapped) training error, if that is the cause.

    Worker exceptions cross process boundaries and may be re-wrapped, so the check looks at
    both the exception chain and the text Ray carries along.
    """
    seen: set[int] = set()
    stack = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if type(err).__name__ in ("NonFiniteLoss", "TrialDiverged"):
            return str(err).splitlines()[0] if str(err) else type(err).__name__
        stack += [err.__cause__, err.__context__]
        stack += list(getattr(err, "worker_failures", {}).values())
    text = str(exc)
    for line in text.splitlines():
        if "NonFiniteLoss" in line or "non-finite" in line:
            return line.strip().split("NonFiniteLoss: ")[-1]
    return None
