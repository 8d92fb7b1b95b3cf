"""``memae-dist prepare KIND --src PATH --dst URI``: import a dataset into the frame store."""

from __future__ import annotations

import argparse

from memae_dist.commands.common import frame_size


def register(sub) -> None:
    p = sub.add_parser("prepare", help="import a dataset into the sharded frame format")
    p.add_argument("kind", help="ucsd-ped2, ucsd-ped1, synthetic, ...")
    p.add_argument("--src", help="source folder (not for synthetic)")
    p.add_argument("--dst", required=True, help="dataset URI: path, file:// or s3://")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="frame size")
    p.add_argument("--workers", type=int, default=None, help="parallel import tasks")
    p.add_argument("--seed", type=int, default=0, help="seed (synthetic)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable videos, list them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memae_dist.data import prepare

    manifest = prepare.run_import(
        args.kind, src=args.src, dst=args.dst, size=frame_size(args.size), workers=args.workers,
        seed=args.seed, skip_bad=args.skip_bad,
    )
    print(f"prepared {args.kind} -> {args.dst}")
    for split, info in prepare.summarize(manifest).items():
        print(f"  {split}: {info['videos']} videos, {info['frames']} frames, "
              f"{info['abnormal']} abnormal")
    return 0
