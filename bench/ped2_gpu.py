"""The ``paper`` Ped2 profile's recipe on one GPU node that has no Ray.

The GPU nodes lent to this work carry PyTorch but not Ray, and Ray's wheel (79 MB) is more than
such a node takes in, so ``reproduce_ped2.py --profile paper`` (which trains through Ray Train)
cannot run there. This script trains the same recipe (``configs/ped2.yaml``: 16x256x256 clips,
windows of stride 1, Adam 1e-4, batch 14, N = 2000, lambda 0.0025, alpha 0.0002) through the
product's own epoch, ``train.step.run_epoch``: model, loss, mixed precision (bf16 autocast on a
GPU), channels-last layout, non-finite guard and memory-health statistics are the trainer's.
Checkpoints are written by ``train.checkpoint.save_checkpoint`` and scored by
``evaluate_checkpoint`` in this process (the ``evaluate --workers 0`` path), by MAE (the official
MemAE measure) and MSE, under the paper protocol.

What differs from a Ray run is only the window source: every stride-1 window of the training
split is cut on the GPU from frames kept there (read from the prepared store), in a full shuffle
each epoch like the official code's DataLoader, instead of Ray Data's streamed windows and local
shuffle buffer; and nothing goes to object storage.

The trainer's dataset checks and the evaluation's (a labelled split to score) run first, so a
time-boxed node never trains what cannot report. Training stops after ``train.epochs`` or when
the next epoch and a last evaluation would pass ``--budget-s`` (counted from the start,
evaluations included); the checkpoints at every ``--eval-every`` epochs and the last are
evaluated (a budget that allows no epoch evaluates nothing, exit 1). Progress is rewritten to
``--json`` after every epoch, so a run cut off at its limit still reports.

Usage: python bench/ped2_gpu.py --data PREPARED_256 --json OUT.json [--variant memae]
       [--seed 0] [--budget-s 420] [--eval-every 10] [--work DIR] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memae_dist.commands.common import int_at_least  # noqa: E402
from memae_dist.config import load_config  # noqa: E402
from memae_dist.data.manifest import load_manifest  # noqa: E402
from memae_dist.data.shards import read_video_frames  # noqa: E402
from memae_dist.data.storage import write_bytes_atomic  # noqa: E402
from memae_dist.errors import UserError  # noqa: E402
from memae_dist.evaluate.batch_score import scorable_videos  # noqa: E402
from memae_dist.evaluate.run import evaluate_checkpoint  # noqa: E402
from memae_dist.train.checkpoint import (  # noqa: E402
    TrainState,
    checkpoint_dir_name,
    save_checkpoint,
)
from memae_dist.train.step import new_worker, run_epoch  # noqa: E402
from memae_dist.train.trainer import check_dataset  # noqa: E402

HISTORY_KEYS = ("epoch", "step", "loss", "recon", "entropy", "clips_per_s", "epoch_s",
                "data_wait_frac", "slots_used", "slot_usage_perplexity", "top_slot_share",
                "memory_collapse", "skipped_batches")


class DeviceWindows:
    """Every window of a split, cut on the device from frames kept there: a stand-in for a Ray
    Data shard (``iter_torch_batches``), shuffled in full each epoch."""

    def __init__(self, videos: list[np.ndarray], window: int, stride: int,
                 device: torch.device):
        self.frames = torch.from_numpy(np.concatenate(videos)).to(device)  # (F, H, W) uint8
        starts, owner, first = [], [], [0]
        for i, frames in enumerate(videos):
            span = range(first[-1], first[-1] + len(frames) - window + 1, stride)
            starts += span
            owner += [i] * len(span)
            first.append(first[-1] + len(frames))
        self.starts = torch.tensor(starts, device=device)
        self.video = torch.tensor(owner, device=device)
        self.first = torch.tensor(first[:-1], device=device)
        self.offsets = torch.arange(window, device=device)

    def __len__(self) -> int:
        return len(self.starts)

    def iter_torch_batches(self, *, batch_size: int, drop_last: bool, local_shuffle_seed: int,
                           **_ignored):
        gen = torch.Generator().manual_seed(local_shuffle_seed)
        order = torch.randperm(len(self), generator=gen).to(self.frames.device)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for i in range(0, stop, batch_size):
            pick = order[i:i + batch_size]
            starts = self.starts[pick]
            yield {"clip": self.frames[starts[:, None] + self.offsets],  # (B, T, H, W) uint8
                   "video": self.video[pick],
                   "start": starts - self.first[self.video[pick]]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared Ped2 (train and test splits)")
    p.add_argument("--json", type=Path, required=True, help="results, rewritten every epoch")
    p.add_argument("--recipe", type=Path, default=ROOT / "configs" / "ped2.yaml")
    p.add_argument("--variant", default="memae", choices=["memae", "memae_nonsparse", "ae"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="wall-clock budget for training and evaluation together")
    p.add_argument("--eval-every", type=int_at_least(1), default=10,
                   help="also evaluate every N epochs")
    p.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "ped2_gpu",
                   help="checkpoints and evaluation folders")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="recipe override, as 'memae-dist train --set'")
    return p.parse_args()


def load_windows(data: str, cfg, device: torch.device) -> DeviceWindows:
    """The training split on the device, once the trainer's own dataset checks and the
    evaluation's (a labelled split to score) have passed: nothing trains that cannot report."""
    manifest = load_manifest(data)
    check_dataset(cfg, manifest)
    scorable_videos(manifest, data, cfg.eval.split, cfg.data.window, need_labels=True)
    videos = [read_video_frames(manifest.shard_uri(data, v))[0]
              for v in manifest.videos(cfg.data.train_split)]
    return DeviceWindows(videos, cfg.data.window, cfg.data.stride, device)


def evaluate(w, state: TrainState, args, size: list[int]) -> dict:
    """Save the epoch's checkpoint as the trainer does, then score the test split with it."""
    ckpt = args.work / "run" / checkpoint_dir_name(state.epoch)
    ckpt.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, w.model, w.optimizer, state, w.cfg.to_dict(),
                    w.precision.state_dict(), data={"size": size})
    row: dict = {"epoch": state.epoch}
    t0 = time.perf_counter()
    for error in ("mae", "mse"):
        m = evaluate_checkpoint(str(ckpt), args.data, args.work / f"eval_{state.epoch:03d}_{error}",
                                error=error, workers=0,
                                gpus_per_worker=1.0 if w.device.type == "cuda" else 0.0)
        row[f"auc_paper_{error}"] = m["auc_paper"]
        row[f"auc_micro_{error}"] = m.get("auc_micro")
    row["eval_s"] = round(time.perf_counter() - t0, 1)
    print(f"epoch {state.epoch}: auc_paper mae {row['auc_paper_mae']:.4f} "
          f"mse {row['auc_paper_mse']:.4f} ({row['eval_s']} s)", flush=True)
    return row


def write(path: Path, result: dict) -> None:
    write_bytes_atomic(str(path), (json.dumps(plain(result), indent=1) + "\n").encode())


def plain(value):
    """JSON without NaN/Infinity literals (not JSON, and many readers refuse them): null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def describe(device: torch.device) -> str:
    gpu = f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""
    return (f"{platform.machine()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def train(args: argparse.Namespace, result: dict) -> None:
    t_start = time.perf_counter()
    cfg = load_config(args.recipe, [f"model.variant={args.variant}", f"train.seed={args.seed}",
                                    f"data.path={json.dumps(args.data)}", *args.overrides])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    windows = load_windows(args.data, cfg, device)
    w, state = new_worker(cfg, device), TrainState(starts=1)
    if cfg.train.compile:
        w.net = torch.compile(w.model)
    size = list(load_manifest(args.data).size)
    result.update(machine=describe(device), precision=w.precision.mode,
                  train_windows=len(windows), size=size,
                  recipe={k: v for k, v in cfg.to_dict().items()
                          if k in ("model", "data", "train")})  # no storage settings
    epoch_s, eval_s = 0.0, 60.0  # until measured
    for epoch in range(cfg.train.epochs):
        if time.perf_counter() - t_start + epoch_s + eval_s > args.budget_s:
            result["stopped"] = f"time budget ({args.budget_s:.0f} s) after epoch {epoch}"
            break
        metrics = run_epoch(w, windows, epoch, state)
        epoch_s = metrics["epoch_s"]
        result["history"].append({k: metrics.get(k) for k in HISTORY_KEYS})
        last = state.epoch == cfg.train.epochs
        if last or state.epoch % args.eval_every == 0:
            result["evals"].append(evaluate(w, state, args, size))
            eval_s = result["evals"][-1]["eval_s"]
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        write(args.json, result)
    if state.epoch and (not result["evals"] or result["evals"][-1]["epoch"] != state.epoch):
        result["evals"].append(evaluate(w, state, args, size))
    # The first epoch pays for cuDNN's algorithm search; later ones show the steady rate.
    rates = [h["clips_per_s"] for h in result["history"][1:] or result["history"]] or [0.0]
    result.update(epochs_done=state.epoch, wall_s=round(time.perf_counter() - t_start, 1),
                  clips_per_s_median=round(statistics.median(rates), 1))


def main() -> int:
    args = parse_args()
    result: dict = {"command": "python bench/ped2_gpu.py " + " ".join(sys.argv[1:]),
                    "variant": args.variant, "seed": args.seed, "history": [], "evals": []}
    try:
        train(args, result)
    except UserError as exc:  # a bad dataset or setting: one line, before any training
        print(f"ped2_gpu.py: error: {exc}", file=sys.stderr)
        return 2
    write(args.json, result)
    if not result["evals"]:
        print(f"ped2_gpu.py: {result['stopped']}: nothing trained, nothing evaluated "
              "(raise --budget-s)", file=sys.stderr)
        return 1
    best = max(result["evals"], key=lambda e: e["auc_paper_mae"])
    print(f"{result['epochs_done']} epochs in {result['wall_s']} s, "
          f"{result['clips_per_s_median']} clips/s; last auc_paper (MAE) "
          f"{result['evals'][-1]['auc_paper_mae']:.4f}, best {best['auc_paper_mae']:.4f} "
          f"at epoch {best['epoch']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
