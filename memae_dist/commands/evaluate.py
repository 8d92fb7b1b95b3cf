"""``memae-dist evaluate``: paper-protocol metrics of a checkpoint on a prepared split."""

from __future__ import annotations

import argparse
from pathlib import Path

from memae_dist.commands.common import print_metrics


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="paper-protocol AUC of a checkpoint on a test split")
    p.add_argument("--checkpoint", required=True, help="checkpoint URI or run URI")
    p.add_argument("--data", required=True, help="prepared dataset URI")
    p.add_argument("--out", required=True, help="folder for metrics.json, frames.csv, plots")
    p.add_argument("--split", default="test")
    p.add_argument("--error", default="mse", choices=["mse", "mae"])
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memae_dist.evaluate.run import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data, Path(args.out), split=args.split,
                                  error=args.error, batch_size=args.batch_size)
    print_metrics(metrics)
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0
