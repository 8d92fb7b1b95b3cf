"""``memae-dist tune``: a Ray Tune sweep of distributed training runs, resumable by name.

Ray Tune schedules trials; each trial trains through Ray Train (``trainable.py``). Tune cannot
see the resources the Train workers request, so the trial itself asks for a sliver of a CPU and
the sweep limits how many trials run at once to what the cluster can hold (``plan_concurrency``).
Rerunning with the same ``--name`` and ``--storage`` resumes: finished trials are kept,
unfinished ones continue from their last epoch checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memae_dist.config import ExperimentConfig, check_folder_name, from_dict
from memae_dist.data.lock import RunLock
from memae_dist.data.storage import absolute, join, portable_fs
from memae_dist.errors import Terminated, UserError
from memae_dist.train.validate import check_val_split
from memae_dist.tune import cleanup
from memae_dist.tune import results as res
from memae_dist.tune.objective import DIVERGED, OBJECTIVE, Objective, resolve_objective
from memae_dist.tune.record import check_same_sweep, score_test_once, space_fingerprint
from memae_dist.tune.space import SearchSpace
from memae_dist.tune.stop import orderly_sigterm
from memae_dist.tune.trainable import keep_credentials_out_of_trials, run_trial
from memae_dist.tune.valsplit import val_selection, with_val_split

log = logging.getLogger("memae_dist.tune")

# Logical CPUs a trial's own driver holds: it only waits on its TorchTrainer.
TRIAL_CPU = 0.05
# CPUs kept free of Train workers so Ray Data's read tasks can always run.
DATA_RESERVE_CPU = 1.0


@dataclass
class SweepOptions:
    # Trials to sample (each one a full grid when the space has grid parameters);
    # None = the space file's ``samples``.
    samples: int | None = None
    # "asha" stops weak trials early; "fifo" runs every trial to the end.
    scheduler: str = "asha"
    # "random" sampling or "optuna" (TPE; needs the optuna package, no grid parameters).
    search: str = "random"
    # Trials at once; None = as many as the cluster holds.
    max_concurrent: int | None = None
    # Train workers, CPUs and GPUs per worker of every trial; None = the config's train.*.
    workers_per_trial: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    # Where the sweep lives (STORAGE/NAME) and what it is called; None = run.storage / space name.
    storage: str | None = None
    name: str | None = None
    # Local folder for trials.csv, the plot, best.yaml and the test metrics.
    out: Path = Path("tune_out")
    # The S3 prefix ``out`` (then a staging folder) is published to, for messages and files.
    published: str | None = None
    # Seed of the search algorithm.
    seed: int = 0
    # Score the test split once with the best checkpoint.
    test: bool = True
    # Carve this many (or these comma-separated) labelled test videos into the val split first.
    val_from_test: str | None = None
    address: str | None = None
    # Extra Tune callbacks (progress hooks, loggers).
    callbacks: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.scheduler not in ("asha", "fifo"):
            raise UserError(f"--scheduler must be asha or fifo, got {self.scheduler!r}")
        if self.search not in ("random", "optuna"):
            raise UserError(f"--search must be random or optuna, got {self.search!r}")
        for key in ("samples", "max_concurrent", "workers_per_trial"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
        if self.name is not None:
            check_folder_name(self.name, "--name")


@dataclass
class SweepResult:
    path: str  # the sweep's URI (STORAGE/NAME)
    rows: list[res.TrialRow]
    objective: Objective
    best: res.TrialRow | None
    checkpoint: str | None
    test_metrics: dict | None
    interrupted: bool


def run_sweep(space: SearchSpace, cfg: ExperimentConfig, opts: SweepOptions) -> SweepResult:
    """Run (or resume) the sweep ``STORAGE/NAME`` and write its results into ``opts.out``."""
    from ray import tune

    cfg = with_absolute_paths(trial_scale(cfg, opts))
    # A space that reaches a bad config, or an --out the results cannot go to, fails before
    # --val-from-test writes into the dataset.
    space.check_against(cfg.to_dict())
    check_search(opts, space)
    res.check_out(opts.out, sweep_uri(space, cfg, opts), opts.published)
    # Ray, and the GPUs the trials ask for, before anything is written: a refused start leaves
    # the dataset uncarved and no sweep record, so the corrected command is still this sweep.
    selection = val_selection(cfg, opts)
    concurrent = start_ray(cfg, opts, (opts.samples or space.samples) * space.grid_size)
    preflight_sweep(cfg, *_Sweep.where(space, cfg, opts), opts.address)
    check_trial_data(space, cfg)  # also before the carve: a refusal leaves the data as it was
    cfg = with_val_split(cfg, selection)
    objective = resolve_objective(space.objective, cfg)
    cfg = keep_best_by(cfg, objective)
    sweep = _Sweep.plan(space, cfg, opts, objective)
    check_val_split(cfg)
    with RunLock(sweep.uri, cfg.storage, cfg.run.lock_ttl_s, what="sweep"):
        check_same_sweep(sweep.uri, cfg, {"space": space_fingerprint(space), "config": sweep.base,
                                          "samples": sweep.samples, "search": opts.search,
                                          "scheduler": opts.scheduler, "seed": opts.seed})
        registry_name = cleanup.registry_name(sweep.uri)
        registry = cleanup.start_registry(registry_name)
        log.info("sweep %s: %d trials, up to %d at once, objective %s (%s)", sweep.uri,
                 sweep.total, concurrent, objective.metric, objective.mode)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, space=space, base=sweep.base,
                                 objective=objective, sweep_uri=sweep.uri,
                                 registry=registry_name),
            {"cpu": TRIAL_CPU},
        )
        keep_credentials_out_of_trials()
        tuner = make_tuner(sweep, trainable, concurrent, registry_name)
        with orderly_sigterm() as stop:
            try:
                tuner.fit()
            except KeyboardInterrupt:
                # Tune turns Ctrl-C, and a SIGTERM (`ray job stop`, `kill`), into an orderly
                # stop; a SIGTERM that stopped the local Ray too (sent to the whole process
                # group: `timeout`, systemd, a CI cancel) arrives as this. The partial table is
                # written, then the exit code. No call to Ray from here: it would wait a
                # minute for the Ray that is gone, then abort the process with the run's lock
                # still held. The groups go with the driver's job.
                with suppress(Exception):
                    write_table(sweep)
                raise
            except BaseException:
                cleanup.release_all(registry)
                raise
            cleanup.release_all(registry)
            if stop.requested:  # Tune has saved its state: the table, then SIGTERM's exit
                write_table(sweep)
                raise Terminated
        return finish(sweep)


@dataclass
class _Sweep:
    """What every stage of one sweep reads: its inputs and where it lives."""

    space: SearchSpace
    cfg: ExperimentConfig  # the trials' base config (trial_scale, with_val_split, keep_best_by)
    opts: SweepOptions
    objective: Objective
    samples: int
    storage: str  # a URI, or an absolute path (trials and other nodes see the same folder)
    name: str
    uri: str  # STORAGE/NAME, absolute when local
    fs: Any  # pyarrow filesystem and path of ``uri``, for Tune
    fs_path: str

    @property
    def base(self) -> dict:
        return self.cfg.to_dict()

    @property
    def total(self) -> int:
        return self.samples * self.space.grid_size

    @staticmethod
    def where(space: SearchSpace, cfg: ExperimentConfig, opts: SweepOptions) -> tuple[str, str]:
        """(storage, name) of the sweep."""
        return absolute(opts.storage or cfg.run.storage), opts.name or space.name

    @classmethod
    def plan(cls, space: SearchSpace, cfg: ExperimentConfig, opts: SweepOptions,
             objective: Objective) -> _Sweep:
        storage, name = cls.where(space, cfg, opts)
        uri = sweep_uri(space, cfg, opts)
        fs, fs_path = portable_fs(uri, cfg.storage)
        return cls(space, cfg, opts, objective, opts.samples or space.samples, storage, name,
                   uri, fs, fs_path)


def sweep_uri(space: SearchSpace, cfg: ExperimentConfig, opts: SweepOptions) -> str:
    """STORAGE/NAME, absolute when local."""
    return join(absolute(opts.storage or cfg.run.storage), opts.name or space.name)


def make_tuner(sweep: _Sweep, trainable, concurrent: int, registry_name: str):
    """A new Tuner, or the one restored from the sweep folder (rerun = resume)."""
    from ray import tune

    fs, fs_path, opts = sweep.fs, sweep.fs_path, sweep.opts
    if tune.Tuner.can_restore(fs_path, storage_filesystem=fs):
        log.info("resuming sweep %s", sweep.uri)
        return tune.Tuner.restore(fs_path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False,
                                  storage_filesystem=fs)
    return tune.Tuner(
        trainable,
        param_space=sweep.space.tune_space(),
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE, mode=sweep.objective.mode, num_samples=sweep.samples,
            search_alg=make_search(opts, sweep.space, concurrent),
            scheduler=make_scheduler(opts, sweep.space, sweep.cfg),
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=fs_path.rsplit("/", 1)[1], storage_path=fs_path.rsplit("/", 1)[0],
            storage_filesystem=fs,
            stop=stop_diverged, failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[cleanup.ReleaseEndedTrials(registry_name), *opts.callbacks],
            verbose=1,
        ),
    )


def preflight_sweep(cfg: ExperimentConfig, storage: str, name: str,
                    address: str | None) -> None:
    """The training preflight (storage and dataset reachable from every node), for the sweep's
    folder, before any trial starts."""
    from memae_dist.doctor import preflight

    tree = cfg.to_dict()
    tree["run"] = {"storage": storage, "name": name}
    preflight(from_dict(ExperimentConfig, tree), address)


def check_trial_data(space: SearchSpace, cfg: ExperimentConfig) -> None:
    """The trainer's dataset checks for the base config and every corner of the space, before
    the first trial: a dataset that cannot feed a trial (under one batch of windows, frames of
    another size) would otherwise fail every trial alike, each with exit 1. The validation
    split is checked apart (``check_val_split``), once --val-from-test has carved it."""
    from memae_dist.data.manifest import load_manifest
    from memae_dist.train.trainer import check_dataset

    manifest = load_manifest(cfg.data.path, cfg.storage)
    check_dataset(cfg, manifest, val=False)
    space.check_against(cfg.to_dict(), lambda corner: check_dataset(corner, manifest, val=False))


def start_ray(cfg: ExperimentConfig, opts: SweepOptions, total: int) -> int:
    """Connect to (or start) Ray; returns how many trials run at once.

    A local Ray started here runs as many trials as the cores hold their workers (its logical
    CPUs are inflated for Ray Data); on a cluster, as many as its resources hold.
    """
    import ray

    from memae_dist.runtime import ensure_ray

    t = cfg.train
    local = not (ray.is_initialized() or opts.address or os.environ.get("RAY_ADDRESS"))
    wanted = opts.max_concurrent or max(1, (os.cpu_count() or 1) // max(1, math.ceil(
        t.workers * t.cpus_per_worker)))
    ensure_ray(min(wanted, total) * (t.workers * t.cpus_per_worker + TRIAL_CPU), opts.address,
               gpus_needed=t.workers * t.gpus_per_worker)
    return plan_concurrency(ray.cluster_resources(), t.workers, t.cpus_per_worker,
                            t.gpus_per_worker, total,
                            opts.max_concurrent or (wanted if local else None))


def write_table(sweep: _Sweep) -> list:
    """Read every trial back; write the table and the plot, and print the table."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(sweep.fs_path, storage_filesystem=sweep.fs)
    rows = res.collect(analysis, sweep.space, sweep.base, sweep.objective, sweep.uri,
                       sweep.cfg.train.epochs, sweep.cfg.storage)
    out = Path(sweep.opts.out)
    res.write_csv(rows, out / res.TABLE)
    res.plot(rows, sweep.space, sweep.objective, out / res.PLOT)
    print(res.format_table(rows, sweep.space, sweep.objective))
    return rows


def finish(sweep: _Sweep) -> SweepResult:
    """The table and the plot, then best.yaml and the test scored once."""
    space, cfg, base, objective, opts = (sweep.space, sweep.cfg, sweep.base, sweep.objective,
                                         sweep.opts)
    rows = write_table(sweep)
    interrupted = any(r.status not in res.FINISHED for r in rows)
    out = Path(opts.out)
    best = None if interrupted else res.best_row(rows, objective)
    checkpoint = test_metrics = None
    if best is not None:
        checkpoint = res.best_checkpoint(best, cfg.storage)
        res.write_best(out, best, space, base, sweep.name, objective, checkpoint)
        if opts.test and checkpoint:
            test_metrics = score_test_once(
                checkpoint, cfg, out / res.TEST_DIR,
                join(opts.published, res.TEST_DIR) if opts.published else None)
        res.write_summary(out, {
            "sweep": sweep.uri, "objective": asdict(objective), "trial": best.trial_id,
            "value": best.objective, "epoch": best.best_epoch, "params": best.params,
            "checkpoint": checkpoint, "test": test_metrics,
        })
    res.remove_stale(out, best=best is not None, test=test_metrics is not None)
    return SweepResult(sweep.uri, rows, objective, best, checkpoint, test_metrics, interrupted)


def with_absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Trials run in their own Tune trial folders, not in the driver's working directory: a
    relative --data or storage would name another folder there. best.yaml gets these too, so
    ``train --config best.yaml`` reads the same dataset from wherever it is run."""
    tree = cfg.to_dict()
    tree["data"]["path"] = absolute(cfg.data.path)
    tree["run"]["storage"] = absolute(cfg.run.storage)
    return from_dict(ExperimentConfig, tree)


def trial_scale(cfg: ExperimentConfig, opts: SweepOptions) -> ExperimentConfig:
    """The base config of every trial: its workers and resources, and stopping on divergence."""
    tree = cfg.to_dict()
    train = tree["train"]
    if opts.workers_per_trial is not None:
        train["workers"] = opts.workers_per_trial
    train["workers"] = max(1, train["workers"])  # a trial needs Ray Train (no debug mode)
    for key in ("cpus_per_worker", "gpus_per_worker"):
        if getattr(opts, key) is not None:
            train[key] = getattr(opts, key)
    train["on_nonfinite"] = "stop"  # a diverging trial must end, not skip batches forever
    return from_dict(ExperimentConfig, tree)


def keep_best_by(cfg: ExperimentConfig, objective: Objective) -> ExperimentConfig:
    """Each trial keeps its best epoch's checkpoint (RUN/best/) by the objective's metric."""
    tree = cfg.to_dict()
    tree["train"].update(checkpoint_metric=objective.metric, checkpoint_mode=objective.mode)
    return from_dict(ExperimentConfig, tree)


def plan_concurrency(resources: dict[str, float], workers: int, cpus_per_worker: float,
                     gpus_per_worker: float, total: int, requested: int | None) -> int:
    """Trials that fit at once: Train workers' CPUs/GPUs plus the trial driver, with a CPU
    left for Ray Data. Tune would otherwise start every trial and let their workers queue."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    per_trial = workers * cpus_per_worker + TRIAL_CPU
    fits = math.floor((cpus - DATA_RESERVE_CPU) / per_trial + 1e-9)
    if gpus_per_worker:
        fits = min(fits, math.floor(gpus / (workers * gpus_per_worker) + 1e-9))
    if fits < 1:
        raise UserError(
            f"one trial needs {workers} worker(s) x {cpus_per_worker} CPU"
            + (f" x {gpus_per_worker} GPU" if gpus_per_worker else "")
            + f" plus {DATA_RESERVE_CPU:g} CPU for data loading, but the cluster has "
            f"{cpus:g} CPU / {gpus:g} GPU; lower --workers-per-trial or --cpus-per-worker"
        )
    if requested is not None and requested > fits:
        log.warning("--max-concurrent %d: the cluster holds only %d trials at once; using %d",
                    requested, fits, fits)
    return max(1, min(fits, total, requested or fits))


def make_scheduler(opts: SweepOptions, space: SearchSpace, cfg: ExperimentConfig):
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    if opts.scheduler == "fifo":
        return FIFOScheduler()
    grace = space.scheduler.grace_period
    if grace >= cfg.train.epochs:
        log.warning("ASHA: grace_period %d >= train.epochs %d, no trial can stop early",
                    grace, cfg.train.epochs)
    # Rungs count epochs (not Tune iterations), so a resumed trial keeps its place.
    return AsyncHyperBandScheduler(time_attr="epoch", max_t=cfg.train.epochs,
                                   grace_period=min(grace, cfg.train.epochs),
                                   reduction_factor=space.scheduler.reduction_factor)


def check_search(opts: SweepOptions, space: SearchSpace) -> None:
    """Whether ``--search`` can sample ``space``: asked before the sweep records itself."""
    if opts.search == "random":
        return
    grid = [p.name for p in space.params if p.kind == "grid"]
    if grid:
        raise UserError(f"{space.source}: params.{grid[0]} uses grid, which --search optuna "
                        "cannot sample; use choice")
    try:
        import optuna  # noqa: F401
        from ray.tune.search.optuna import OptunaSearch  # noqa: F401
    except ImportError:
        raise UserError("--search optuna needs the optuna package "
                        "(pip install 'memae-dist[tune]')") from None


def make_search(opts: SweepOptions, space: SearchSpace, concurrent: int):
    """The search algorithm, limited to ``concurrent`` trials at once (Tune ignores
    ``max_concurrent_trials`` for a search algorithm passed in)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if opts.search == "random":
        return BasicVariantGenerator(random_state=opts.seed, max_concurrent=concurrent)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    return ConcurrencyLimiter(OptunaSearch(sampler=optuna.samplers.TPESampler(seed=opts.seed)),
                              max_concurrent=concurrent)


def stop_diverged(trial_id: str, result: dict[str, Any]) -> bool:
    """Stop a trial whose objective or loss went non-finite (the loop stops on NaN losses)."""
    return bool(result.get(DIVERGED))


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
