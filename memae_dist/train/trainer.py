"""Driver side of training: Ray set-up, the TorchTrainer, and what a finished run hands back.

A run is ``(run.storage, run.name)``. Rerunning the same command resumes it: Ray Train finds the
run's checkpoints in storage and hands the latest to the new workers; a worker that dies is
replaced and the group restarts from the latest checkpoint (up to ``train.max_failures`` times).
While it trains, the driver holds the run's lock (``data.lock.RunLock``): one live process per run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from memae_dist.config import ExperimentConfig, from_dict, to_plain
from memae_dist.data.manifest import check_model_input, load_manifest
from memae_dist.data.storage import absolute, exists, join, portable_fs, read_bytes
from memae_dist.errors import UserError
from memae_dist.runtime import check_room_for_data, ensure_ray, require_torch_gpu
from memae_dist.train.checkpoint import (
    HISTORY_FILE,
    STATE_FILE,
    best_checkpoint,
    checkpoint_epoch,
    forget_missing,
    latest_checkpoint,
    prune,
    read_checkpoint_config,
    restore_point,
    torch_load,
    unreadable_state,
)
from memae_dist.train.transfer import drop_cut_off_uploads

__all__ = ["TrainResult", "ensure_ray", "fit", "run_uri"]

log = logging.getLogger("memae_dist.train")


@dataclass
class TrainResult:
    run_uri: str
    checkpoint_uri: str | None
    metrics: dict
    history: list[dict]
    # The best checkpoint by train.checkpoint_metric (None when no metric is configured).
    best_checkpoint_uri: str | None = None
    # False when the run stopped early (interrupted): rerun the same command to continue.
    completed: bool = True
    # Epochs finished by checkpoint_uri.
    epochs_done: int = 0


def run_uri(cfg: ExperimentConfig) -> str:
    return join(absolute(cfg.run.storage), cfg.run.name)


def for_workers(cfg: ExperimentConfig) -> dict:
    """The config as workers and the Ray controller get it: local paths made absolute, since
    their working directory is not the driver's."""
    tree = cfg.to_dict()
    tree["run"]["storage"] = absolute(cfg.run.storage)
    tree["data"]["path"] = absolute(cfg.data.path)
    return tree


def completed_epochs(run: str, cfg: ExperimentConfig) -> int:
    """Epochs finished by the checkpoint a (re)start continues from."""
    point = restore_point(run, cfg.storage)
    return checkpoint_epoch(point) if point else 0


def check_same_model(run: str, cfg: ExperimentConfig, size: tuple[int, int] | None = None,
                     resuming: bool = True) -> None:
    """A run's model is fixed when it first starts: resumed with other model settings, its
    weights would not load (a changed shape), or one history would mix two experiments. So is
    what the model sees: clips of ``data.window`` frames of the first run's ``size``.
    ``resuming``: training goes on, so changed recipe settings are worth a warning."""
    point = restore_point(run, cfg.storage)
    if point is None:
        return
    try:
        saved = read_checkpoint_config(point, cfg.storage)
    except UserError as exc:
        raise UserError(f"{exc}{_resume_advice(point)}") from None
    model = saved.get("model") or {}
    changed = [f"model.{key}={model[key]!r} (now {value!r})"
               for key, value in to_plain(cfg.model).items()
               if key in model and model[key] != value]
    data = saved.get("data") or {}
    if data.get("window", cfg.data.window) != cfg.data.window:
        changed.append(f"data.window={data['window']!r} (now {cfg.data.window!r})")
    trained = trained_size(point, cfg.storage)
    if trained and size and trained != tuple(size):
        changed.append(f"{trained[0]}x{trained[1]} frames (now {size[0]}x{size[1]} in "
                       f"{cfg.data.path})")
    if changed:
        raise UserError(f"run {run} was started with {', '.join(changed)}; a run keeps its "
                        "model when it resumes: drop the change, or give the run a new --name")
    if not resuming:
        return
    check_history(point, cfg.storage)
    if data.get("path") and data["path"] != absolute(cfg.data.path):
        log.warning("%s resumes on %s; it was trained on %s until now", run,
                    absolute(cfg.data.path), data["path"])
    _warn_changed_recipe(run, saved, cfg)


# Settings that shape what the model learns, beside the model's own (refused above): a run may
# resume with new ones (a lower learning rate for the last epochs is common), but its history
# then mixes two recipes, which whoever reads it should know. Where and how fast it runs
# (workers, precision, ...) and train.epochs (how a run is extended) are not listed.
RECIPE_KEYS = {"train": ("batch_size", "lr", "lr_schedule", "weight_decay", "grad_accum",
                         "seed", "max_steps_per_epoch"),
               "data": ("train_split", "stride", "augment")}


def _warn_changed_recipe(run: str, saved: dict, cfg: ExperimentConfig) -> None:
    train = saved.get("train") or {}
    before = (train.get("checkpoint_metric", ""), train.get("checkpoint_mode", "auto"))
    if before[0] and not cfg.train.checkpoint_metric:
        log.warning("%s resumes without train.checkpoint_metric (was %r): its best checkpoint "
                    "(RUN/best) stays as that metric chose it, and is no longer updated",
                    run, before[0])
    elif before != (cfg.train.checkpoint_metric, cfg.train.checkpoint_mode) and before[0]:
        log.warning("%s resumes with train.checkpoint_metric=%r, checkpoint_mode=%r (was %r, "
                    "%r): its best checkpoint (RUN/best) is chosen afresh from the next epoch",
                    run, cfg.train.checkpoint_metric, cfg.train.checkpoint_mode, *before)
    now = {"train": to_plain(cfg.train), "data": to_plain(cfg.data)}
    changed = [f"{section}.{key}={saved[section][key]!r} (now {now[section][key]!r})"
               for section, keys in RECIPE_KEYS.items() for key in keys
               if key in (saved.get(section) or {}) and saved[section][key] != now[section][key]]
    if changed:
        log.warning("%s resumes with %s: its history from here on follows the new settings",
                    run, ", ".join(changed))


def trained_size(ckpt_uri: str, storage=None) -> tuple[int, int] | None:
    """The frame size the checkpoint a run resumes from was trained on (None for checkpoints
    older than the record). Read on the driver, so a damaged one is one line here, naming it,
    before any worker tries to restore it."""
    import io

    state_uri = join(ckpt_uri, STATE_FILE)
    try:
        state = torch_load(io.BytesIO(read_bytes(state_uri, storage)))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated, foreign: unreadable_state says which
        raise UserError(f"{unreadable_state(state_uri, exc)}{_resume_advice(ckpt_uri)}"
                        ) from None
    size = (state.get("data") or {}).get("size") if isinstance(state, dict) else None
    return (int(size[0]), int(size[1])) if size and len(size) == 2 else None


def check_history(ckpt_uri: str, storage=None) -> None:
    """The history a resumed run continues from must parse: read on the driver, like the
    state, so a truncated one is one line, not a traceback from every worker."""
    uri = join(ckpt_uri, HISTORY_FILE)
    if not exists(uri, storage):
        return
    try:
        rows = json.loads(read_bytes(uri, storage))
    except ValueError:
        rows = None
    if not isinstance(rows, list):
        raise UserError(f"cannot read checkpoint {uri}: not a JSON list of epochs (truncated?)"
                        f"{_resume_advice(ckpt_uri)}")


def _resume_advice(ckpt_uri: str) -> str:
    return (f"; the run resumes from its newest checkpoint: delete {ckpt_uri} to resume from "
            "the one before it, or start a new run with another --name")


class TrainData:
    """The training dataset, built by Ray Train each time a worker group starts.

    Ray Data numbers the executions of a dataset from 0; the shard order of an epoch is a
    function of (seed, first_epoch + execution). Building the dataset when the workers start,
    with ``first_epoch`` read from the checkpoint they restore, keeps that order right after a
    driver rerun *and* after a worker-group restart inside one run.
    """

    def __init__(self, experiment: dict):
        self.experiment = experiment

    def __call__(self):
        from memae_dist.data.stream import window_dataset

        cfg = from_dict(ExperimentConfig, self.experiment)
        first = completed_epochs(run_uri(cfg), cfg)
        seed = cfg.train.seed if cfg.train.deterministic else None
        ds = window_dataset(cfg.data.path, cfg.data, seed=seed, first_epoch=first,
                            storage=cfg.storage)
        # The epoch line already reports clips/s and the time blocked on data; Ray Data's own
        # bars, redrawn every epoch, fill a job's log with hundreds of lines.
        ds.context.enable_progress_bars = False
        # Ray Train applies data_config's options to the workers' shards; its debug mode
        # (--workers 0) iterates this dataset as it is.
        ds.context.execution_options.preserve_order = cfg.train.deterministic
        return ds


def fit(cfg: ExperimentConfig, address: str | None = None, callbacks=(),
        exclusive: bool = True) -> TrainResult:
    """Train (or resume) the run named ``cfg.run.name`` in ``cfg.run.storage``.

    ``callbacks``: Ray Train callbacks (a sweep passes one that forwards metrics to Tune).
    ``exclusive``: hold the run's lock (``RunLock``) while training; a sweep passes False,
    since Tune already runs each trial once and restarts trials on any node at any time.
    """
    from memae_dist.data.lock import RunLock
    from memae_dist.doctor import preflight

    if not cfg.data.path:
        raise UserError("data.path is not set: pass --data URI or set data.path in the config")
    if not cfg.train.workers:
        require_torch_gpu(cfg.train.gpus_per_worker)
    preflight(cfg, address)  # storage + manifest on every node, before any worker starts
    manifest = load_manifest(cfg.data.path, cfg.storage)
    check_dataset(cfg, manifest)
    for warning in training_split_warnings(cfg, manifest):
        log.warning("%s", warning)
    run = run_uri(cfg)
    with RunLock(run, cfg.storage, cfg.run.lock_ttl_s if exclusive else 0):
        drop_cut_off_uploads(run, cfg.storage)
        done = completed_epochs(run, cfg)
        check_same_model(run, cfg, manifest.size, resuming=done < cfg.train.epochs)
        if done:  # an attempt cut off before its own pruning left more than it keeps
            prune(run, cfg.train.keep_checkpoints, cfg.storage)
        if done >= cfg.train.epochs:
            log.info("%s already finished %d epochs (train.epochs=%d): nothing to do", run,
                     done, cfg.train.epochs)
            return finished(run, cfg, {})
        if done:
            log.info("resuming %s after epoch %d", run, done)
        # Checkpoints record the frame size: scoring refuses data at a size the model never
        # saw, and export takes its input size from there.
        trained_on = {"size": list(manifest.size)}
        forget_missing(run, cfg.storage)  # after the pruning above: it may drop what Ray names
        metrics = run_trainer(cfg, address, callbacks, trained_on)
        prune(run, cfg.train.keep_checkpoints, cfg.storage)
        return finished(run, cfg, metrics)


def check_dataset(cfg: ExperimentConfig, manifest, val: bool = True) -> None:
    """The dataset suits the run: the model's input size, at least one batch of windows and
    (``val``) a usable validation split; driver-side, before any worker starts."""
    from memae_dist.data.manifest import check_enough_windows
    from memae_dist.train.validate import check_val_split

    check_model_input(manifest, cfg.model, cfg.data.path)
    check_enough_windows(manifest, cfg.data, cfg.train.batch_size, cfg.data.path)
    if val:
        check_val_split(cfg, manifest)


def training_split_warnings(cfg: ExperimentConfig, manifest) -> list[str]:
    """What is wrong with learning normality from ``data.train_split``: labelled anomalies in
    it (learned as normal), or the very split that evaluation scores. A warning, not a refusal:
    a study of contaminated training data does this on purpose."""
    split, warnings = cfg.data.train_split, []
    videos = manifest.videos(split)
    abnormal = [v for v in videos if v.abnormal]
    if abnormal:
        frames = sum(int(manifest.frame_labels(v).sum()) for v in abnormal)
        warnings.append(
            f"data.train_split={split!r} of {cfg.data.path} holds {frames} abnormal frames in "
            f"{len(abnormal)} of its {len(videos)} videos: the model learns them as normal; "
            "train on a split of normal footage")
    if split == cfg.eval.split:
        warnings.append(f"data.train_split={split!r} is also eval.split: the model would be "
                        "scored on the frames it trained on")
    return warnings


def run_trainer(cfg: ExperimentConfig, address: str | None, callbacks,
                data: dict | None = None) -> dict:
    """Start Ray if needed, run the TorchTrainer, and return its final metrics."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from memae_dist.train.loop import train_loop_per_worker

    train_cpus = cfg.train.workers * cfg.train.cpus_per_worker
    ensure_ray(train_cpus, address, gpus_needed=cfg.train.workers * cfg.train.gpus_per_worker)
    check_room_for_data(train_cpus)
    fs, storage_path = portable_fs(absolute(cfg.run.storage), cfg.storage)
    experiment = for_workers(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": experiment, "data": data or {}},
        torch_config=TorchConfig(backend="nccl" if cfg.train.gpus_per_worker else "gloo"),
        scaling_config=scaling_config(cfg),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks),
        ),
        datasets={"train": TrainData(experiment)},
        dataset_config=data_config(cfg),
    )
    try:
        result = trainer.fit()
    except SystemExit:
        # Ray's SIGINT handler aborts the run, then exits; callers see an interruption.
        raise KeyboardInterrupt("training aborted by SIGINT") from None
    except Exception as exc:
        raise_if_workers_lost(exc, cfg)
        raise
    if result.error is not None:
        raise_if_workers_lost(result.error, cfg)
        raise result.error
    return dict(result.metrics or {})


def raise_if_workers_lost(error: BaseException, cfg: ExperimentConfig) -> None:
    """Losing workers is no bug to show a traceback for: one line, and how to go on."""
    lost = workers_lost(error)
    if lost:
        done = completed_epochs(run_uri(cfg), cfg)
        raise UserError(
            f"training stopped: {lost} after epoch {done} (train.max_failures="
            f"{cfg.train.max_failures} restarts allowed); its checkpoint is kept: rerun the "
            "same command to resume, or raise train.max_failures to let the run restart its "
            "workers itself") from error


def workers_lost(error: BaseException) -> str | None:
    """What happened, when training failed because workers or their nodes went away (killed,
    out of memory, node lost or preempted) rather than by an error in the training code."""
    from ray.train.v2._internal.exceptions import (
        WorkerHealthCheckFailedError,
        WorkerHealthCheckTimeoutError,
    )
    from ray.train.v2.api.exceptions import PreemptionError

    if isinstance(error, PreemptionError):
        return "a node was preempted"
    gone = (WorkerHealthCheckFailedError, WorkerHealthCheckTimeoutError)
    # The other ranks then fail too, in the collective that waited for the lost one (a gloo
    # "connection closed by peer"): the lost worker is the cause worth naming.
    ranks = sorted(rank for rank, failure in
                   (getattr(error, "worker_failures", None) or {}).items()
                   if isinstance(failure, gone))
    if ranks:
        return (f"training worker{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} "
                "lost (killed, out of memory, or its node went away)")
    return None


def finished(run: str, cfg: ExperimentConfig, metrics: dict) -> TrainResult:
    latest = latest_checkpoint(run, cfg.storage)
    history = read_history(latest, cfg) if latest else []
    done = checkpoint_epoch(latest) if latest else 0
    if not metrics and history:
        metrics = history[-1]
    if done < cfg.train.epochs:
        log.warning("%s stopped after epoch %d of %d; rerun the same command to resume", run,
                    done, cfg.train.epochs)
    best = best_checkpoint(run, cfg.storage) if cfg.train.checkpoint_metric else None
    return TrainResult(run, latest, metrics, history, best,
                       completed=done >= cfg.train.epochs, epochs_done=done)


def scaling_config(cfg: ExperimentConfig):
    import ray.train

    t = cfg.train
    resources = {"CPU": t.cpus_per_worker}
    if t.gpus_per_worker:
        resources["GPU"] = t.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=t.workers, use_gpu=t.gpus_per_worker > 0, resources_per_worker=resources,
        placement_strategy=t.placement,
    )


def data_config(cfg: ExperimentConfig):
    import ray.train
    from ray.data import ExecutionOptions

    options = ExecutionOptions()
    # Parallel read tasks finish in any order; a bit-exact run needs the planned order, and
    # blocks dealt to workers by node locality would depend on where each read task ran.
    options.preserve_order = cfg.train.deterministic
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=options,
                                enable_shard_locality=not cfg.train.deterministic)


def read_history(ckpt_uri: str, cfg: ExperimentConfig) -> list[dict]:
    """The run's history: ``RUN/history.json`` if it reaches the checkpoint, else the copy in
    the checkpoint (rank 0 writes the former after each report; it has checkpoint times)."""
    run_history = join(ckpt_uri.rstrip("/").rsplit("/", 1)[0], HISTORY_FILE)
    epoch = checkpoint_epoch(ckpt_uri)
    for uri in (run_history, join(ckpt_uri, HISTORY_FILE)):
        if exists(uri, cfg.storage):
            try:
                rows = json.loads(read_bytes(uri, cfg.storage))
            except ValueError:  # cut off while written: the checkpoint's copy will do
                log.warning("%s is not valid JSON (truncated?): reading the history from the "
                            "checkpoint", uri)
                continue
            if isinstance(rows, list) and rows and rows[-1].get("epoch") == epoch:
                return rows
    return []
