"""``memae-dist prepare KIND --src PATH --dst URI``: import a dataset into the frame store."""

from __future__ import annotations

import argparse
import os
from contextlib import suppress

from memae_dist.commands.common import (
    add_storage_config_flag,
    frame_size,
    int_at_least,
    storage_config,
)


def register(sub) -> None:
    from memae_dist.data.prepare import KINDS

    p = sub.add_parser("prepare", help="import a dataset into the sharded frame format")
    p.add_argument("kind", help=", ".join(KINDS))
    p.add_argument("--src", help="source folder (not for synthetic)")
    p.add_argument("--dst", required=True, help="dataset URI: path, file:// or s3://")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="stored frame size, multiples of 16 up to 4096 (default 256 256; "
                        "synthetic: 32 32; images: any size, default 28 28, the image net's "
                        "input)")
    p.add_argument("--workers", type=int_at_least(0), default=None,
                   help="parallel import tasks (default: one per CPU; 0: one video at a "
                        "time in this process, without Ray)")
    p.add_argument("--labels", help="folder: labels JSON file or folder of <video>.npy")
    p.add_argument("--split", choices=("train", "test", "val"),
                   help="folder: split of sources outside train/test/val folders (default train)")
    p.add_argument("--seed", type=int_at_least(0), default=None,
                   help="synthetic: seed of the generated set (default 0)")
    p.add_argument("--videos", type=int_at_least(1), nargs=2, metavar=("TRAIN", "TEST"),
                   help="synthetic: training and test videos (default 8 6)")
    p.add_argument("--frames", type=int_at_least(32), default=None,
                   help="synthetic: frames per video (default 96)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable videos (images: single images), list them")
    add_storage_config_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memae_dist.data import prepare, storage
    from memae_dist.errors import UserError

    # Refused, not ignored: a user who passes one expects it to change something.
    given = {"--seed": args.seed, "--videos": args.videos, "--frames": args.frames}
    given = {flag: value for flag, value in given.items() if value is not None}
    if given and args.kind != "synthetic":
        raise UserError(f"{next(iter(given))} is for 'prepare synthetic'; {args.kind} reads "
                        "its frames")
    train_videos, test_videos = given.get("--videos", (None, None))
    synthetic = {key: value for key, value in (
        ("seed", args.seed), ("train_videos", train_videos), ("test_videos", test_videos),
        ("frames_per_video", args.frames)) if value is not None}
    if args.skip_bad and args.kind == "synthetic":
        raise UserError("--skip-bad is for imports; 'prepare synthetic' has no bad source")
    # The video nets halve the frame size four times; the image net is fixed at 28x28.
    size = frame_size(args.size, multiple=1 if args.kind == "images" else 16)
    created = storage.first_missing_folder(args.dst)
    try:
        manifest = prepare.run_import(
            args.kind, src=args.src, dst=args.dst, size=size, workers=args.workers,
            synthetic=synthetic, skip_bad=args.skip_bad, labels=args.labels, split=args.split,
            progress=not args.no_progress, storage_cfg=storage_config(args),
        )
    except BaseException:
        # A first import refused before any shard was kept leaves no empty folders behind;
        # written shards stay, for the rerun to reuse.
        if created is not None:
            _remove_empty_tree(storage.local_path(args.dst), created)
        raise
    print(f"prepared {args.kind} -> {args.dst}")
    units = ("groups", "images") if manifest.get("content") == "images" else ("videos", "frames")
    for split, info in prepare.summarize(manifest).items():
        print(f"  {split}: {info['videos']} {units[0]}, {info['frames']} {units[1]}, "
              f"{info['abnormal']} abnormal")
    # An image set skips single images, each reason naming its file; the group stays.
    lead = "left out of group" if manifest.get("content") == "images" else "skipped"
    for item in manifest.get("skipped", []):
        print(f"  {lead} {item['split']}/{item['video']}: {item['reason']}")
    return 0


def _remove_empty_tree(root: str, outermost: str) -> None:
    """Remove the empty folders under ``root``, then ``root`` and its new parents if empty."""
    from memae_dist.data import storage

    for folder, _, _ in sorted(os.walk(root), key=lambda item: -len(item[0])):
        with suppress(OSError):
            os.rmdir(folder)
    storage.remove_empty_folders(root, outermost)
