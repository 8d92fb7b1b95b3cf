"""Probe: a checkpoint with its BatchNorm statistics recomputed, optionally of averaged weights.

What ``train.precise_bn_batches`` does at the end of each epoch, applied afterwards to a
finished run's checkpoints, so its effect on the evaluation can be measured on the same
weights; with several checkpoints their weights are averaged first (uniformly, as in stochastic
weight averaging), and the statistics are then those of the averaged weights.

    python bench/bn_recompute.py --checkpoint RUN/checkpoint_epoch_0040 --data DATA \
        --out OUT [--batches 64] [--json F]
    python bench/bn_recompute.py --checkpoint RUN/checkpoint_epoch_0039 RUN/checkpoint_epoch_0040 \
        --data DATA --out OUT

Writes OUT (a checkpoint folder ``memae-dist evaluate`` reads), evaluates it with the recipe's
error into OUT.eval, and with ``--json`` appends the result (auc_paper, per-video AUCs) to F.
The training windows are the run's (``data.window``, ``data.stride``), in a seeded random
order; ``--batches K`` keeps the last K micro-batches of it, 0 all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from memae_dist.data.shards import owned_window_starts, read_video_frames
from memae_dist.data.storage import write_bytes_atomic
from memae_dist.evaluate.score import model_from_state
from memae_dist.train.checkpoint import CONFIG_FILE, STATE_FILE, load_state
from memae_dist.train.precise_bn import RecentBatches, recompute_batchnorm


def averaged(folders: list[Path]) -> dict:
    """The last checkpoint's payload with the uniform average of every checkpoint's weights."""
    payloads = [load_state(f) for f in folders]
    out = payloads[-1]
    for key, value in out["model"].items():
        if value.is_floating_point():
            mean = sum(p["model"][key].double() for p in payloads) / len(payloads)
            out["model"][key] = mean.to(value.dtype)
    return out


def training_batches(data: Path, window: int, stride: int, batch: int, keep: int,
                     seed: int) -> RecentBatches:
    clips = []
    for shard in sorted((data / "train").glob("*.parquet")):
        frames, _ = read_video_frames(str(shard))
        n = len(frames)  # one whole video: the windows its segments own together
        clips += [frames[s:s + window]
                  for s in owned_window_starts(0, n, n, n, 0, window, stride)]
    random.Random(seed).shuffle(clips)
    full = len(clips) // batch
    recent = RecentBatches(keep or full)
    for i in range(full):
        recent.add(torch.from_numpy(np.stack(clips[i * batch:(i + 1) * batch])), None)
    return recent


def write_checkpoint(payload: dict, like: Path, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in like.iterdir():
        if f.is_file() and f.name != STATE_FILE:
            shutil.copy(f, tmp / f.name)
    torch.save(payload, tmp / STATE_FILE)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def evaluate(ckpt: Path, data: Path) -> dict:
    out = ckpt.with_name(ckpt.name + ".eval")
    subprocess.run([sys.executable, "-m", "memae_dist.cli", "evaluate", "--checkpoint",
                    str(ckpt), "--data", str(data), "--out", str(out), "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    m = json.loads((out / "metrics.json").read_text())
    return {"auc_paper": m["auc_paper"], "auc_per_video_mean": m["auc_per_video_mean"],
            "per_video": {v["name"]: v["auc"] for v in m["per_video"] if v["auc"] is not None}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", nargs="+", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="the run's prepared data folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batches", type=int, default=0, help="micro-batches to average (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    config = json.loads((args.checkpoint[-1] / CONFIG_FILE).read_text())
    payload = averaged(args.checkpoint)
    model, cfg = model_from_state(config, payload["model"])
    # Batches of the global batch's size: BatchNorm statistics span it when trained on workers.
    recent = training_batches(args.data, cfg.data.window, cfg.data.stride,
                              cfg.train.batch_size // cfg.train.grad_accum, args.batches, args.seed)
    used, seconds = recompute_batchnorm(model, recent, arch=cfg.model.arch,
                                        device=torch.device("cpu"),
                                        memory_format=torch.contiguous_format,
                                        autocast=contextlib.nullcontext)
    payload["model"] = model.state_dict()
    write_checkpoint(payload, args.checkpoint[-1], args.out)
    row = {"checkpoints": [str(c) for c in args.checkpoint], "batches": used,
           "recompute_s": round(seconds, 1), **evaluate(args.out, args.data)}
    print(json.dumps(row))
    if args.json:
        rows = json.loads(args.json.read_text()) if args.json.exists() else []
        write_bytes_atomic(str(args.json), json.dumps(rows + [row], indent=1).encode())


if __name__ == "__main__":
    main()
