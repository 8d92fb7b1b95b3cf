"""``memae-dist train``: train or resume a run with Ray Train."""

from __future__ import annotations

import argparse

from memae_dist.commands.common import add_experiment_flags, experiment_config


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
        print(f"epoch {last['epoch']}: loss {last['loss']:.5f}  recon {last['recon']:.5f}  "
              f"{last['clips_per_s']:.1f} clips/s")
    print(f"run: {result.run_uri}")
    print(f"checkpoint: {result.checkpoint_uri or '(none)'}")
    return 0
