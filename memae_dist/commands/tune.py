"""``memae-dist tune``: a hyperparameter sweep (Ray Tune over Ray Train), resumable by name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memae_dist.commands.common import (
    add_set_flag,
    add_worker_resource_flags,
    quoted,
)


def register(sub) -> None:
    p = sub.add_parser("tune", help="hyperparameter sweep with Ray Tune (ASHA, random/optuna)")
    p.add_argument("--space", required=True,
                   help="search-space YAML, or a shipped name (memae_video, memae_image, smoke)")
    p.add_argument("--config", help="base experiment YAML or shipped recipe name")
    p.add_argument("--data", help="prepared dataset URI (data.path)")
    p.add_argument("--samples", type=int, help="trials to sample (default: the space's samples)")
    p.add_argument("--scheduler", default="asha", choices=["asha", "fifo"],
                   help="trial scheduler: asha stops weak trials early (default: asha)")
    p.add_argument("--search", default="random", choices=["random", "optuna"],
                   help="search algorithm (default: random)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what fits)")
    p.add_argument("--workers-per-trial", type=int, help="Train workers per trial")
    add_worker_resource_flags(p)
    p.add_argument("--storage", help="sweep storage URI (default: run.storage)")
    p.add_argument("--name", help="sweep name; rerun with the same name to resume")
    p.add_argument("--out", default="tune_out",
                   help="folder for trials.csv, plot, best.yaml: a local path or s3:// prefix "
                        "(published when the sweep ends; default: tune_out)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search algorithm (default: 0)")
    p.add_argument("--val-from-test", metavar="K|NAMES",
                   help="first move K labelled test videos, or the named ones (06 or 01,04; "
                        "6 is a count, 6, a name), into a val split")
    p.add_argument("--no-test", action="store_true",
                   help="skip scoring the test split with the best checkpoint")
    p.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    p.add_argument("--show-space", action="store_true",
                   help="print the search space's YAML (a shipped one to copy and edit) and exit")
    add_set_flag(p)
    p.set_defaults(func=run)


def resolve_space(name: str) -> Path:
    """A space file, or the name of a shipped one (``tune_spaces/``, packaged with memae-dist)."""
    from memae_dist.commands.common import resolve_yaml

    return resolve_yaml(name, "memae_dist.tune_spaces", "search space")


def run(args: argparse.Namespace) -> int:
    from memae_dist.commands.common import local_folder, refuse_twice, resolve_config_path
    from memae_dist.commands.outdir import output_folder
    from memae_dist.config import load_config
    from memae_dist.data.storage import is_remote
    from memae_dist.tune.results import BEST_JSON, OUT_FILES
    from memae_dist.tune.space import load_space

    if args.show_space:  # an installed package has no tune_spaces/ folder to look in
        path = resolve_space(args.space)
        load_space(path)
        print(f"# {path}\n{path.read_text(encoding='utf-8')}", end="")
        return 0
    remote = bool(args.out.strip()) and is_remote(args.out)
    if not remote:
        local_folder(args.out)  # then made and checked for other sweeps before any trial
    space = load_space(resolve_space(args.space))
    overrides = [f"data.path={quoted(args.data)}"] if args.data else []
    refuse_twice({"data.path": f"--data {args.data}"} if args.data else {}, args.set)
    cfg = load_config(resolve_config_path(args.config), overrides + (args.set or []),
                      labels=[f"--data {args.data}"] if args.data else [])
    # An s3:// --out is staged locally and published when the sweep command ends (also with no
    # best trial, or stopped by Ctrl-C or SIGTERM: the table is the record); not on an error.
    # A rerun continues from the published results (the test score is reused).
    with output_folder(args.out, cfg.storage, commit=BEST_JSON, owned=OUT_FILES, resume=True,
                       publish_interrupted=True) as out:
        result = sweep(args, space, cfg, out, args.out if remote else None)
    return summarise(result, args.out if remote else str(out))


def sweep(args: argparse.Namespace, space, cfg, out: Path, published: str | None):
    from memae_dist.data.storage import first_missing_folder, local_path, remove_empty_folders
    from memae_dist.errors import UserError
    from memae_dist.tune.sweep import SweepOptions, run_sweep

    opts = SweepOptions(
        samples=args.samples, scheduler=args.scheduler, search=args.search,
        max_concurrent=args.max_concurrent, workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
        storage=args.storage, name=args.name, out=out, published=published, seed=args.seed,
        test=not args.no_test, val_from_test=args.val_from_test, address=args.address,
    )
    created = first_missing_folder(str(out))
    try:
        return run_sweep(space, cfg, opts)
    except UserError:
        # Refused before any result: no empty --out folder is left for the user to clear.
        if created is not None:
            remove_empty_folders(local_path(str(out)), created)
        raise


def summarise(result, out: str) -> int:
    from memae_dist.data.storage import join
    from memae_dist.evaluate.definitions import PROTOCOLS

    print(f"sweep: {result.path}")
    print(f"table: {join(out, 'trials.csv')}")
    if result.interrupted:
        print("memae-dist: sweep interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if result.best is None:
        print(f"memae-dist: {no_best_reason(result.rows)}", file=sys.stderr)
        return 1
    print(f"best: trial {result.best.trial_id}, {result.objective.metric} "
          f"{result.best.objective:.5g} -> {join(out, 'best.yaml')}")
    print(f"best checkpoint: {result.checkpoint}")
    if result.test_metrics:
        test = result.test_metrics
        key = PROTOCOLS[test.get("protocol", "paper")][0]  # auc_micro for still images
        auc = test.get(key)
        print(f"test split '{test.get('split')}' (scored once, best trial only): "
              f"{key} {'undefined' if auc is None else f'{auc:.4f}'}")
    return 0


def no_best_reason(rows) -> str:
    """One line: why the sweep has no best trial, with the first trial error when trials
    failed (a bad --data fails every trial alike; its cause belongs on this line, not only in
    the table)."""
    from memae_dist.data.redact import redact_text
    from memae_dist.tune.results import ERROR

    line = "no trial finished with a finite objective"
    failed = [r for r in rows if r.status == ERROR]
    if not failed:
        return line
    first = failed[0]
    error = first.error.removeprefix("memae_dist.errors.UserError: ")
    count = "every trial" if len(failed) == len(rows) else f"{len(failed)} of {len(rows)} trials"
    # A trial's error may echo an endpoint URL with its password, as a UserError may.
    return redact_text(f"{line}: {count} failed; trial {first.trial_id}: {error}")
