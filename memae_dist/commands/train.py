"""``memae-dist train``: train or resume a run with Ray Train.

The same command scales from ``--workers 0`` (in-process, for debugging) to many nodes
(``--address`` of a running cluster, ``--storage s3://...``); rerunning it with the same
``--name`` and ``--storage`` resumes the run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from memae_dist.commands.common import add_experiment_flags, experiment_config

INTERRUPTED = 130


def register(sub) -> None:
    p = sub.add_parser("train", help="train (or resume) a run with Ray Train")
    add_experiment_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memae_dist.train.trainer import fit

    cfg = experiment_config(args)
    result = fit(cfg, address=args.address)
    last = result.history[-1] if result.history else {}
    if last:
        # A finished run rerun with fewer epochs trains nothing: no "epoch 2/1".
        total = max(cfg.train.epochs, last["epoch"])
        line = (f"epoch {last['epoch']}/{total}: loss {last['loss']:.5f}  "
                f"recon {last['recon']:.5f}  {last['clips_per_s']:.1f} clips/s")
        if "val_auc" in last:
            line += f"  val_auc {last['val_auc']:.4f}"
        print(line)
    print(f"run: {result.run_uri}")
    print(f"checkpoint: {result.checkpoint_uri or '(none)'}")
    if result.best_checkpoint_uri:
        print(f"best ({cfg.train.checkpoint_metric}): {result.best_checkpoint_uri}")
    if not result.completed:
        print(f"stopped after epoch {result.epochs_done} of {cfg.train.epochs}: rerun the same "
              "command to resume", file=sys.stderr)
        return INTERRUPTED
    return 0
