"""``memae-dist evaluate``: AUC / AP / EER of a checkpoint (or of a scores file), per video too."""

from __future__ import annotations

import argparse
import math

from memae_dist.commands.common import storage_config
from memae_dist.commands.score import add_scoring_flags, score_config


def _protocol_help() -> str:
    from memae_dist.evaluate.definitions import PROTOCOL_HELP, PROTOCOLS

    lines = [f"{name}: {text} [{', '.join(PROTOCOLS[name])}]"
             for name, text in PROTOCOL_HELP.items()]
    return ("which numbers are the headline AUC / AP / EER (all are computed and written): "
            + "; ".join(lines) + ". Default: paper for videos, micro for still images")


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="AUC, AP and EER of a checkpoint on a labelled split")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint URI or run URI (scores it first)")
    src.add_argument("--scores", help="an existing 'memae-dist score' file: no model needed")
    p.add_argument("--data", help="prepared dataset URI (with --checkpoint)")
    p.add_argument("--out", required=True,
                   help="folder for metrics.json, frames.csv, plots: a path or an s3:// prefix")
    p.add_argument("--protocol", default=None, choices=["paper", "micro", "per-video"],
                   help=_protocol_help())
    add_scoring_flags(p, workers_default=1)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memae_dist.commands.outdir import output_folder
    from memae_dist.data.storage import is_remote, join, same_file
    from memae_dist.errors import UserError
    from memae_dist.evaluate.batch_score import score_dataset
    from memae_dist.evaluate.run import (
        EVALUATION_FILES,
        SCORES_FILE,
        evaluate_scores,
        evaluate_table,
    )

    storage = storage_config(args)
    remote = bool(args.out.strip()) and is_remote(args.out)
    owned = EVALUATION_FILES
    if args.scores:
        refuse_scoring_flags(args)
        if remote and same_file(join(args.out, SCORES_FILE), args.scores):
            owned = tuple(n for n in owned if n != SCORES_FILE)  # the input stays
    elif not args.data:
        raise UserError("--checkpoint needs --data (the prepared dataset to score)")
    scoring = None if args.scores else score_config(args)
    with output_folder(args.out, storage, commit="metrics.json", owned=owned) as out:
        if args.scores:
            metrics = evaluate_scores(args.scores, out, args.protocol, storage)
        else:
            # Scored in memory: the folder is made, and written, once scoring has worked.
            result = score_dataset(args.checkpoint, args.data, None, scoring, storage=storage,
                                   address=args.address, need_labels=True)
            metrics = evaluate_table(result.table, result.meta, out, args.protocol,
                                     scores_uri=join(args.out, SCORES_FILE) if remote else None,
                                     scored=True)
    print_evaluation(metrics)
    if not args.scores:  # the checkpoint a run URI resolved to
        print(f"checkpoint: {metrics['checkpoint']}")
    print(f"metrics: {join(args.out, 'metrics.json') if remote else out / 'metrics.json'}")
    return 0


# Flags that steer the scoring of a checkpoint: a scores file was scored already.
SCORING_ONLY = ("data", "split", "error", "workers", "gpus_per_worker", "cpus_per_worker",
                "batch_size", "precision", "address")


def refuse_scoring_flags(args: argparse.Namespace) -> None:
    from memae_dist.errors import UserError

    parser = args.verbs[args.command]
    given = [f"--{name.replace('_', '-')}" for name in SCORING_ONLY
             if getattr(args, name) != parser.get_default(name)]
    if given:
        raise UserError(f"{', '.join(given)}: only with --checkpoint; --scores {args.scores} "
                        "was scored already (its data, split and error are in it)")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def print_evaluation(metrics: dict) -> None:
    """Headline of the chosen protocol, every number with its meaning, then per video."""
    from memae_dist.evaluate.definitions import units

    head = metrics["headline"]
    print(f"protocol {head['protocol']}: {metrics['protocol_meaning']}")
    print(f"  AUC {_fmt(head['auc'])}   AP {_fmt(head['ap'])}   EER {_fmt(head['eer'])}")
    one_class = _one_class(metrics)
    if one_class:
        print(f"  ({one_class})")
    print("all numbers:")
    width = max(len(k) for k in metrics["definitions"])
    for key, meaning in metrics["definitions"].items():
        print(f"  {key:<{width}}  {_fmt(metrics.get(key)):>8}  {meaning}")
    unit, item = units(metrics.get("content"))
    print(f"per {unit}:")
    print(f"  {unit:<12} {item + 's':>7} {'abnormal':>8} {'AUC':>8} {'AP':>8} {'EER':>8}")
    for v in metrics["per_video"]:
        print(f"  {v['name']:<12} {v['n_frames']:>7} {v['n_abnormal']:>8} {_fmt(v['auc']):>8} "
              f"{_fmt(v['ap']):>8} {_fmt(v['eer']):>8}")
    unscored = metrics.get("unscored_videos") or []
    if unscored:
        print(f"  not scored, shorter than the model's window (in no number above): "
              f"{', '.join(unscored[:10])}{' ...' if len(unscored) > 10 else ''}")
    print_thresholds(metrics.get("thresholds"), metrics.get("split"))


def _one_class(metrics: dict) -> str | None:
    """Why AUC, AP and EER are undefined, when the scored frames hold one class only."""
    split, abnormal = metrics.get("split"), metrics.get("n_abnormal")
    if abnormal == 0:
        return (f"no scored frame of split '{split}' is abnormal: AUC, AP and EER need "
                "anomalies; the false-positive thresholds below need normal frames only")
    if abnormal == metrics.get("n_frames_scored"):
        return (f"every scored frame of split '{split}' is abnormal: AUC, AP, EER and "
                "thresholds need normal frames too")
    return None


def print_thresholds(thresholds: dict | None, split: str | None) -> None:
    """The raw-error thresholds a live system would flag ``score >= threshold`` with.

    Printed in full: each is a frame's score, and a rounded-up copy passed to ``events
    --threshold`` would no longer flag that frame."""
    if not thresholds:
        return
    print(f"thresholds on the raw error ('score' column of 'memae-dist score'), read off split "
          f"'{split}'; flag score >= threshold:")
    for p in thresholds["at_fpr"]:
        budget = f"  false positives <= {p['target_fpr']:.1%}:"
        normal = p.get("normal_frames")
        if p["threshold"] is None and normal and normal * p["target_fpr"] < 1:
            print(f"{budget} none (this split has {normal} normal frames: a budget under one "
                  f"of them needs at least {math.ceil(1 / p['target_fpr'])})")
            continue
        if p["threshold"] is None:  # the highest errors of this split are normal frames'
            print(f"{budget} none (no threshold flags a frame within this budget)")
            continue
        recall = "-" if p["tpr"] is None else f"{p['tpr']:.4f}"
        print(f"{budget} threshold {p['threshold']!r}  (FPR {p['fpr']:.4f}, recall {recall})")
    f1 = thresholds["best_f1"]
    if f1 is None:  # normal frames only
        print("  best F1: - (no abnormal frame in this split: recall and F1 need anomalies)")
        return
    print(f"  best F1 {f1['f1']:.4f}: threshold {f1['threshold']!r}  (precision "
          f"{f1['precision']:.4f}, recall {f1['recall']:.4f})")
