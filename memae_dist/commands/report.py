"""``memae-dist report``: per-video plots, ROC, triptychs, memory slots and an index.html."""

from __future__ import annotations

import argparse

from memae_dist.commands.common import add_storage_config_flag, storage_config


def register(sub) -> None:
    p = sub.add_parser("report", help="figures and an index.html from a scores file")
    p.add_argument("--scores", required=True, help="scores file written by 'memae-dist score'")
    p.add_argument("--out", required=True,
                   help="output folder (index.html and PNGs): a path or an s3:// prefix")
    p.add_argument("--checkpoint", help="model for the reconstructions (default: the one "
                                        "recorded in the scores file)")
    p.add_argument("--data", help="prepared dataset with the frames (default: the recorded one)")
    p.add_argument("--frame", action="append", metavar="VIDEO:FRAME", dest="frames",
                   help="frame to explain with a triptych (repeatable); default: --top")
    p.add_argument("--top", type=int, default=4,
                   help="triptychs of the N highest-scoring frames, one per video (default 4)")
    p.add_argument("--slots", type=int, default=32, help="memory slots to decode (default 32)")
    p.add_argument("--max-videos", type=int, default=200,
                   help="regularity plots (error histograms for an image set) for at most this "
                   "many videos or groups (default 200)")
    add_storage_config_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memae_dist.commands.outdir import output_folder
    from memae_dist.data.storage import is_remote, join
    from memae_dist.errors import UserError
    from memae_dist.evaluate.report import REPORT_FILES, build_report

    for flag in ("top", "slots", "max_videos"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    storage = storage_config(args)
    with output_folder(args.out, storage, commit="index.html", owned=REPORT_FILES) as out:
        report = build_report(args.scores, out, checkpoint=args.checkpoint, data=args.data,
                              frames=args.frames, top=args.top, slots=args.slots,
                              max_videos=args.max_videos, storage=storage)
    plots = "group histograms" if report.images else "video plots"
    print(f"{len(report.videos)} {plots}, {len(report.triptychs)} triptychs"
          + (", ROC" if report.roc else "") + (", memory slots" if report.memory else ""))
    for note in report.notes:
        print(f"  note: {note}")
    print(f"report: {join(args.out, 'index.html') if is_remote(args.out) else report.index}")
    return 0
