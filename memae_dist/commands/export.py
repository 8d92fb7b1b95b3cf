"""``memae-dist export``: a checkpoint as an ONNX, pt2 or TorchScript model (docs/EXPORT.md)."""

from __future__ import annotations

import argparse
from pathlib import PurePosixPath

from memae_dist.commands.common import (
    add_storage_config_flag,
    file_target,
    int_at_least,
    storage_config,
)


def register(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX, pt2 or TorchScript, verified")
    p.add_argument("--checkpoint", required=True, help="checkpoint URI or run URI (latest)")
    p.add_argument("--format", required=True, choices=["onnx", "pt2", "torchscript"],
                   help="onnx (ONNX Runtime), pt2 (torch.export), torchscript")
    p.add_argument("--out", required=True, help="output file: path or s3:// URI")
    p.add_argument("--size", type=int_at_least(1), nargs=2, metavar=("H", "W"),
                   help="frame size (default: the checkpoint's training size)")
    p.add_argument("--error", choices=["mse", "mae"],
                   help="window error computed by the exported graph (default: the "
                        "checkpoint's eval.error)")
    add_storage_config_flag(p)
    p.set_defaults(func=run)


# File suffixes that promise a format: a model written under another one's name is refused.
# A pt2 package is .pt2 only: torch.export.load warns about (and falls back on) any other name.
SUFFIX_FORMATS = {".onnx": ("onnx",), ".pt2": ("pt2",), ".ts": ("torchscript",),
                  ".pt": ("torchscript",)}


def check_out(out: str, fmt: str, storage=None, checkpoint: str | None = None) -> None:
    """Refuse, before the export's minutes, an --out that is a folder or names another format."""
    from memae_dist.errors import UserError

    file_target(out, f"model.{fmt}", storage=storage, inputs=(checkpoint,),
                keep=((checkpoint, "the checkpoint"),))
    formats = SUFFIX_FORMATS.get(PurePosixPath(out).suffix.lower())
    if formats is not None and fmt not in formats:
        raise UserError(f"--out {out}: the name says {formats[0]}, but --format is {fmt}")


def run(args: argparse.Namespace) -> int:
    from memae_dist.evaluate.export import export_model

    storage = storage_config(args)
    check_out(args.out, args.format, storage, args.checkpoint)
    result = export_model(args.checkpoint, args.format, args.out,
                          size=tuple(args.size) if args.size else None, error=args.error,
                          storage=storage)
    h, w = result.size
    shape = f"{result.window}x{h}x{w} clips" if result.arch == "video" else f"{h}x{w} images"
    print(f"exported {result.format} for {shape} -> {result.path}")
    print(f"max |exported - PyTorch| on random clips: {result.max_abs_diff:.2e}")
    print(f"checkpoint: {result.checkpoint}")  # the one a run URI resolved to
    return 0
