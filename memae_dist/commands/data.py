"""``memae-dist data info|verify URI``: inspect a prepared dataset."""

from __future__ import annotations

import argparse
import json

from memae_dist.commands.common import add_storage_config_flag, int_at_least, storage_config


def register(sub) -> None:
    p = sub.add_parser("data", help="inspect a prepared dataset (info, verify)")
    verbs = p.add_subparsers(dest="data_command", required=True)
    info = verbs.add_parser("info", help="videos, frames, windows, abnormal frames, bytes stored "
                                         "(reads the manifest only)")
    info.add_argument("uri", help="dataset URI: path, file:// or s3://")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument("--window", type=int_at_least(1), default=None,
                      help="frames per window (default 16; 1 for still images)")
    info.add_argument("--stride", type=int_at_least(1), default=1, help="window stride (default 1)")
    add_storage_config_flag(info)
    info.set_defaults(func=run_info)
    verify = verbs.add_parser("verify", help="read every shard, check sizes and checksums")
    verify.add_argument("uri", help="dataset URI: path, file:// or s3://")
    add_storage_config_flag(verify)
    verify.set_defaults(func=run_verify)


def run_info(args: argparse.Namespace) -> int:
    from memae_dist.data.info import dataset_info, format_info
    info = dataset_info(args.uri, args.window, args.stride, storage_config(args))
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from memae_dist.data.info import verify_dataset

    checked, problems = verify_dataset(args.uri, storage_config(args))
    for problem in problems:
        print(f"BAD: {problem}")
    print(f"{checked - len(problems)} of {checked} shards OK")
    if problems:  # a rerun re-hashes every shard against its import's record
        print("to repair: rerun the 'memae-dist prepare' that wrote the dataset; it checks "
              "every shard and writes exactly the BAD ones again")
    return 1 if problems else 0
