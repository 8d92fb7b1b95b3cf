"""``memae-dist doctor``: can this cluster run memae-dist? A pass/fail table with fixes."""

from __future__ import annotations

import argparse

from memae_dist.commands.common import add_set_flag


def register(sub) -> None:
    p = sub.add_parser(
        "doctor", help="check Ray, GPUs, shared storage and the dataset on every node",
        description="Check the Ray version and cluster, the GPUs of every node, that the run "
                    "storage is writable and readable from every node, and that the dataset "
                    "manifest is readable. Exit code 1 when a check fails.")
    p.add_argument("--storage", help="run storage URI to check (default: run.storage)")
    p.add_argument("--data", help="dataset URI whose manifest to check (default: data.path)")
    p.add_argument("--address", help="Ray cluster GCS address HOST:6379 (default: RAY_ADDRESS, "
                                      "else a running local cluster)")
    p.add_argument("--config", help="YAML recipe or shipped name, for storage and data settings")
    add_set_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memae_dist.commands.common import experiment_config
    from memae_dist.doctor import format_table, run_doctor

    cfg = experiment_config(args)
    checks = run_doctor(cfg, address=args.address)
    print(format_table(checks), flush=True)
    return 1 if any(c.failed for c in checks) else 0
