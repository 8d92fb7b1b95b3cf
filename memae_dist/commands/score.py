"""``memae-dist score``: per-frame anomaly scores of a prepared dataset or raw videos, with Ray."""

from __future__ import annotations

import argparse
from pathlib import PurePosixPath

from memae_dist.commands.common import (
    add_storage_config_flag,
    file_target,
    float_at_least,
    frame_size,
    int_at_least,
    storage_config,
)

SCORES_SUFFIXES = (".parquet", ".pq")


def register(sub) -> None:
    p = sub.add_parser("score", help="per-frame anomaly scores (Parquet) with Ray Data actors")
    p.add_argument("--checkpoint", required=True, help="checkpoint URI or run URI (latest)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="prepared dataset URI")
    src.add_argument("--videos", metavar="PATH_OR_URI",
                     help="a video file or a folder of videos (local or s3://), prepared "
                          "on the fly")
    p.add_argument("--out", required=True, help="scores file URI (.parquet): path or s3://")
    add_scoring_flags(p)
    p.add_argument("--labels", help="--videos: labels JSON or folder of <video>.npy (optional)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="--videos: frame size, multiples of 16 (default: the checkpoint's "
                        "training size)")
    p.add_argument("--prepared", metavar="URI",
                   help="--videos: where the prepared frames go (default: beside --out, its name "
                   "without .parquet plus _frames)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def add_scoring_flags(p: argparse.ArgumentParser, workers_default: int = 1) -> None:
    """Flags shared by ``score`` and ``evaluate``."""
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--workers", type=int_at_least(0), default=workers_default,
                   help=f"scoring actors (default {workers_default}); 0 = in this process")
    p.add_argument("--gpus-per-worker", type=float_at_least(0), default=0.0,
                   help="GPUs per actor (bf16 on GPU); default 0 = CPU; with --workers 0, "
                        "> 0 scores in this process on its GPU")
    p.add_argument("--cpus-per-worker", type=float_at_least(0, above=True), default=None,
                   help="CPUs (torch threads) per actor; default: cores / workers")
    p.add_argument("--batch-size", type=int_at_least(1), default=32,
                   help="windows per forward pass")
    p.add_argument("--error", choices=["mse", "mae"],
                   help="window error (default: the checkpoint's eval.error; mse unless its "
                        "recipe says otherwise)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto = bf16 on GPU, fp32 on CPU")
    p.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    add_storage_config_flag(p)


def score_config(args: argparse.Namespace):
    from memae_dist.evaluate.batch_score import ScoreConfig
    from memae_dist.runtime import require_torch_gpu

    if not args.workers:  # before any footage is prepared or any output made
        require_torch_gpu(args.gpus_per_worker)
    return ScoreConfig(split=args.split, error=args.error, batch_size=args.batch_size,
                       workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                       gpus_per_worker=args.gpus_per_worker, precision=args.precision,
                       progress=not getattr(args, "no_progress", False))


def check_scores_name(uri: str, storage=None, data: str | None = None,
                      checkpoint: str | None = None) -> None:
    """Scores are one Parquet file: a folder, a name that promises another format, or a file of
    the dataset or checkpoint being read, is refused up front."""
    from memae_dist.errors import UserError

    file_target(uri, "scores.parquet", storage=storage,
                keep=((data, "the dataset"), (checkpoint, "the checkpoint")))
    suffix = PurePosixPath(uri.rstrip("/")).suffix.lower()
    if suffix and suffix not in SCORES_SUFFIXES:
        raise UserError(f"--out {uri}: scores are written as Parquet; name the file *.parquet "
                        "('memae-dist evaluate' also writes frames.csv)")


def run(args: argparse.Namespace) -> int:
    from memae_dist.errors import UserError
    from memae_dist.evaluate import ingest
    from memae_dist.evaluate.batch_score import score_dataset
    from memae_dist.evaluate.score import read_model_state

    storage = storage_config(args)
    check_scores_name(args.out, storage, args.data, args.checkpoint)
    cfg = score_config(args)
    data = args.data
    if args.videos:
        _, config, _, trained_on = read_model_state(args.checkpoint, storage)
        size = frame_size(args.size) or ingest.checkpoint_frame_size(config, storage,
                                                                      trained_on)
        ingest.check_trained_size(size, trained_on)  # refused after the import otherwise
        if size is None:
            raise UserError("--size H W is needed: the checkpoint's training data (for its frame "
                            "size) is not reachable from here")
        data = ingest.prepared_uri(args.out, args.prepared)
        manifest = ingest.prepare_videos(args.videos, data, size, labels=args.labels,
                                         # 0: the import stays in this process too, no Ray
                                         workers=args.workers, progress=cfg.progress,
                                         storage=storage)
        _note_other_splits(manifest, args.split)
        _check_long_enough(manifest, args.split, int(config["data"]["window"]), args.videos)
    elif args.labels or args.size or args.prepared:
        raise UserError("--labels, --size and --prepared go with --videos")
    result = score_dataset(args.checkpoint, data, args.out, cfg, storage=storage,
                           address=args.address)
    videos = len(set(result.table.column("video").to_pylist()))
    print(f"scored {result.table.num_rows} frames of {videos} video{'' if videos == 1 else 's'} "
          f"in {result.seconds:.1f} s ({result.frames_per_s:.1f} frames/s)")
    print(f"checkpoint: {result.meta['checkpoint']}")  # the one a run URI resolved to
    if args.videos:
        print(f"prepared frames: {data}")
    print(f"scores: {args.out}")
    return 0


def _check_long_enough(manifest: dict, split: str, window: int, source: str) -> None:
    """Refuses --videos none of which fills one window, naming them rather than the manifest
    of the frames staged from them."""
    from memae_dist.errors import UserError

    videos = (manifest.get("splits", {}).get(split) or {}).get("videos", [])
    if videos and all(v["num_frames"] < window for v in videos):
        listed = ", ".join(f"{v['name']} ({v['num_frames']} frames)" for v in videos[:5])
        more = f" and {len(videos) - 5} more" if len(videos) > 5 else ""
        raise UserError(f"--videos {source}: no video is as long as the model's {window}-frame "
                        f"window, so there is nothing to score: {listed}{more}")


def _note_other_splits(manifest: dict, split: str) -> None:
    """Videos in a train/ or val/ subfolder of --videos are imported into that split; only
    --split is scored, so the others are named rather than left out without a word."""
    for other, body in sorted(manifest.get("splits", {}).items()):
        count = len((body or {}).get("videos", []))
        if other != split and count:
            print(f"note: {count} video(s) under {other}/ are not scored (--split {other} "
                  "scores them)")
