"""``memae-dist``: the command line. Thin: parse, call the library, print.

User errors (bad files, URIs, settings) end with one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from memae_dist.errors import UserError

log = logging.getLogger("memae_dist")


def _size(values: list[int] | None) -> tuple[int, int] | None:
    if values is None:
        return None
    h, w = values
    if h < 16 or w < 16 or h % 16 or w % 16:
        raise UserError(f"--size must be two multiples of 16 (>= 16), got {h} {w}")
    return h, w


def cmd_prepare(args: argparse.Namespace) -> int:
    from memae_dist.data import prepare

    manifest = prepare.run_import(
        args.kind, src=args.src, dst=args.dst, size=_size(args.size), workers=args.workers,
        seed=args.seed, skip_bad=args.skip_bad,
    )
    summary = prepare.summarize(manifest)
    print(f"prepared {args.kind} -> {args.dst}")
    for split, info in summary.items():
        print(f"  {split}: {info['videos']} videos, {info['frames']} frames, "
              f"{info['abnormal']} abnormal")
    return 0


def train_config(args: argparse.Namespace):
    from memae_dist.config import load_config

    overrides = list(args.set or [])
    for flag, key in (("data", "data.path"), ("epochs", "train.epochs"),
                      ("workers", "train.workers"), ("storage", "run.storage"),
                      ("name", "run.name"), ("cpus_per_worker", "train.cpus_per_worker"),
                      ("gpus_per_worker", "train.gpus_per_worker")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(resolve_config_path(args.config), overrides)


def resolve_config_path(name: str | None) -> Path | None:
    """A YAML path, or the name of a shipped recipe (``demo``, ``ped2``, ``ped2_lite``)."""
    if name is None:
        return None
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    from importlib.resources import files

    shipped = files("memae_dist.configs") / f"{name}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    raise UserError(f"config not found: {name} (a YAML file or a shipped recipe name)")


def cmd_train(args: argparse.Namespace) -> int:
    from memae_dist.train.trainer import fit

    cfg = train_config(args)
    result = fit(cfg, address=args.address)
    last = result.history[-1] if result.history else {}
    if last:
        print(f"epoch {last['epoch']}: loss {last['loss']:.5f}  recon {last['recon']:.5f}  "
              f"{last['clips_per_s']:.1f} clips/s")
    print(f"run: {result.run_uri}")
    print(f"checkpoint: {result.checkpoint_uri or '(none: --workers 0 keeps no checkpoints)'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from memae_dist.evaluate.run import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data, Path(args.out), split=args.split,
                                  error=args.error, batch_size=args.batch_size)
    print_metrics(metrics)
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0


def print_metrics(metrics: dict) -> None:
    keys = ("auc_paper", "auc_micro", "auc_per_video_mean", "average_precision", "eer",
            "n_frames_scored", "n_abnormal")
    width = max(len(k) for k in keys)
    for key in keys:
        value = metrics.get(key)
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {text}")


def cmd_demo(args: argparse.Namespace) -> int:
    from memae_dist.demo import run_demo

    metrics = run_demo(Path(args.out), workers=args.workers, epochs=args.epochs)
    print_metrics(metrics)
    print(f"results in {args.out}: metrics.json, scores.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memae-dist", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="synthetic data -> Ray Train -> paper-protocol AUC")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--workers", type=int, default=2, help="training workers (default: 2)")
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("prepare", help="import a dataset into the sharded frame format")
    p.add_argument("kind", help="ucsd-ped2, ucsd-ped1, synthetic, ...")
    p.add_argument("--src", help="source folder (not for synthetic)")
    p.add_argument("--dst", required=True, help="dataset URI: path, file:// or s3://")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="frame size")
    p.add_argument("--workers", type=int, default=None, help="parallel import tasks")
    p.add_argument("--seed", type=int, default=0, help="seed (synthetic)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable videos, list them")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train (or resume) a run with Ray Train")
    p.add_argument("--config", help="YAML recipe or shipped name (demo, ped2, ped2_lite)")
    p.add_argument("--data", help="prepared dataset URI (data.path)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--workers", type=int, help="0 = in-process debug mode")
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--storage", help="run storage URI (default: runs)")
    p.add_argument("--name", help="run name; rerun with the same name to resume")
    p.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="paper-protocol AUC of a checkpoint on a test split")
    p.add_argument("--checkpoint", required=True, help="checkpoint URI or run URI")
    p.add_argument("--data", required=True, help="prepared dataset URI")
    p.add_argument("--out", required=True, help="folder for metrics.json, frames.csv, plots")
    p.add_argument("--split", default="test")
    p.add_argument("--error", default="mse", choices=["mse", "mae"])
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        return args.func(args)
    except UserError as exc:
        print(f"memae-dist: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memae-dist: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        user = find_user_error(exc)
        if user is None:
            raise
        print(f"memae-dist: error: {user}", file=sys.stderr)
        return 2


def find_user_error(exc: BaseException) -> UserError | None:
    """Ray wraps errors raised on workers; dig out a ``UserError`` if that is what happened."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
