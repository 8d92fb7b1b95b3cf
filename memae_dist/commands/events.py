"""``memae-dist events``: alarms (runs of frames at or above a threshold) from a scores file."""

from __future__ import annotations

import argparse
from pathlib import PurePosixPath

from memae_dist.commands.common import (
    add_storage_config_flag,
    file_target,
    float_at_least,
    int_at_least,
    storage_config,
)

SHOWN = 20  # events printed; the --out file holds them all


def register(sub) -> None:
    p = sub.add_parser("events", help="alarms from a scores file: runs of frames whose raw "
                                      "error reaches a threshold")
    p.add_argument("--scores", required=True, help="scores file written by 'memae-dist score'")
    p.add_argument("--threshold", required=True, type=float_at_least(0.0),
                   help="raw error at or above which a frame is flagged ('memae-dist evaluate' "
                        "prints thresholds for false-positive budgets and the best F1)")
    p.add_argument("--min-frames", type=int_at_least(1), default=1,
                   help="drop events shorter than this many frames (default 1)")
    p.add_argument("--max-gap", type=int_at_least(0), default=0,
                   help="join events separated by at most this many unflagged frames "
                        "(default 0)")
    p.add_argument("--out", help="CSV file (path or s3:// URI) with every event")
    add_storage_config_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memae_dist.data.storage import write_bytes_atomic
    from memae_dist.errors import UserError
    from memae_dist.evaluate.batch_score import read_scores, video_scores
    from memae_dist.evaluate.events import event_summary, events_csv, find_events

    storage = storage_config(args)
    if args.out is not None:
        file_target(args.out, "events.csv", storage=storage, inputs=(args.scores,))
        suffix = PurePosixPath(args.out.rstrip("/")).suffix.lower()
        if suffix and suffix not in (".csv", ".txt"):
            raise UserError(f"--out {args.out}: events are written as CSV; name the file *.csv")
    table, meta = read_scores(args.scores, storage)
    if meta.get("content") == "images":
        raise UserError(f"{args.scores} holds scores of still images: an image has no "
                        "neighbours in time to make an event; flag each image whose score is "
                        "at or above the threshold")
    videos = video_scores(table)
    labelled = {v.name for v in video_scores(table, labelled_only=True)}
    events = [e for v in videos for e in find_events(
        v, args.threshold, min_frames=args.min_frames, max_gap=args.max_gap,
        labelled=v.name in labelled)]
    if args.out is not None:
        write_bytes_atomic(args.out, events_csv(events), storage)
    print_events(events, event_summary(videos, events, labelled), args.threshold,
                 meta.get("error"))
    if args.out is not None:
        print(f"events: {args.out}")
    return 0


def print_events(events: list, summary: dict, threshold: float, error: str | None) -> None:
    # The error named: a threshold read off scores of the other error flags nonsense.
    kind = f" ({error} window error)" if error else ""
    print(f"{summary['events']} event(s) at score >= {threshold!r}{kind} in "
          f"{summary['videos_with_events']} of {summary['videos']} video(s)")
    if "anomalies" in summary:
        print(f"  labelled anomalies detected: {summary['anomalies_detected']} of "
              f"{summary['anomalies']}; false alarms (no abnormal frame): "
              f"{summary['false_alarms']}")
    if events:
        print(f"  {'video':<12} {'frames':>13} {'length':>6} {'peak frame':>10} "
              f"{'peak score':>11}")
    for e in events[:SHOWN]:
        span = f"{e.first_frame}-{e.last_frame}"
        print(f"  {e.video:<12} {span:>13} {e.frames:>6} {e.peak_frame:>10} "
              f"{e.peak_score:>11.6g}")
    if len(events) > SHOWN:
        print(f"  ... {len(events) - SHOWN} more (--out writes them all)")
