"""``memae-dist demo``: synthetic data -> Ray Train -> paper-protocol AUC, on a laptop."""

from __future__ import annotations

import argparse

from memae_dist.commands.common import int_at_least, local_folder, print_metrics


def register(sub) -> None:
    p = sub.add_parser("demo", help="synthetic data -> Ray Train -> paper-protocol AUC")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--workers", type=int_at_least(0), default=2,
                   help="training workers (default: 2; 0 = in this process)")
    p.add_argument("--epochs", type=int_at_least(1), default=None,
                   help="override the demo's epochs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memae_dist.demo import run_demo

    metrics = run_demo(local_folder(args.out), workers=args.workers, epochs=args.epochs)
    print_metrics(metrics)
    print(f"results in {args.out}: metrics.json, frames.csv, scores.png, roc.png")
    return 0
