"""Training on one CPU machine: worker layout and precision, through the product's own ``fit()``.

The same recipe (``configs/ped2_lite.yaml``: the paper's 3D-conv MemAE, global batch 4) in
four variants, on one prepared set, alternating, so machine load hits all of them:

- ``w2-fp32``: 2 workers x 1 CPU, fp32 (what ``ped2_lite`` ran before): DDP over gloo and the
  global BatchNorm, whose all-reduces make the two workers wait for each other every layer;
- ``w2-bf16``: the same with bf16 autocast and the channels-last 3D layout (oneDNN's bf16
  kernels; AMX tiles where the CPU has them);
- ``w1-fp32``: 1 worker x every core, fp32 (the stock BatchNorm kernel, no all-reduce);
- ``w1-bf16``: the same in bf16 and channels-last.

Global batch, learning rate and BatchNorm statistics are the same in all four (the global
BatchNorm makes 2 x 2 clips normalise as 1 x 4), so the layouts train the same model; only the
speed differs. Throughput comes from each run's own history: ``steady`` = clips / (epoch time -
time to first batch) over the epochs after the first.

Usage: python bench/cpu_layouts.py [--data PREPARED] [--size 64] [--steps 40] [--epochs 3]
       [--reps 2] [--variants w2-fp32,w2-bf16,w1-fp32,w1-bf16] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train_throughput import prepare, ray_run  # noqa: E402  (bench/ is this script's folder)

from memae_dist.config import ExperimentConfig, load_config  # noqa: E402
from memae_dist.data.storage import write_bytes_atomic  # noqa: E402
from memae_dist.train.precision import cpu_has_native  # noqa: E402

CORES = os.cpu_count() or 1
VARIANTS = {  # workers, CPUs per worker, precision, memory format
    "w2-fp32": (2, max(CORES // 2, 1), "fp32", "contiguous"),
    "w2-bf16": (2, max(CORES // 2, 1), "bf16", "channels_last"),
    "w1-fp32": (1, CORES, "fp32", "contiguous"),
    "w1-bf16": (1, CORES, "bf16", "channels_last"),
}


def experiment(args, data: str, runs: str, name: str, variant: str) -> ExperimentConfig:
    workers, cpus, precision, layout = VARIANTS[variant]
    return load_config(ROOT / "configs" / "ped2_lite.yaml", [
        f"data.path={data}", f"run.storage={runs}", f"run.name={name}",
        f"train.workers={workers}", f"train.cpus_per_worker={cpus}",
        f"train.precision={precision}", f"train.memory_format={layout}",
        f"train.epochs={args.epochs}", f"train.max_steps_per_epoch={args.steps}",
        "train.tensorboard=false", "train.keep_checkpoints=1",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="a prepared set (default: a synthetic one at --size)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"--variants: unknown variant {v!r} (choose from {', '.join(VARIANTS)})")
    logging.basicConfig(level=logging.WARNING)
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    res: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="memae-layouts-") as tmp:
        # Logical CPUs beyond the cores leave Ray Data room for its read tasks.
        ray.init(num_cpus=CORES + 2, include_dashboard=False, object_store_memory=300 * 2**20,
                 logging_level="WARNING", log_to_driver=False)
        data = args.data or prepare(args, Path(tmp))  # synthetic, at --size
        for rep in range(args.reps):
            for v in variants:
                cfg = experiment(args, data, f"{tmp}/runs", f"{v}-{rep}", v)
                rate = ray_run(cfg)["steady"]
                res[v].append(rate)
                print(f"rep {rep} {v}: {rate:.2f} clips/s", flush=True)
        ray.shutdown()
    base = statistics.median(res[variants[0]])
    summary = {v: {"clips_per_s": statistics.median(r), "ratio": statistics.median(r) / base}
               for v, r in res.items()}
    for v, s in summary.items():
        print(f"{v:8s} {s['clips_per_s']:7.2f} clips/s  {s['ratio']:.2f}x {variants[0]}")
    if args.json:
        out = {"command": "python bench/cpu_layouts.py " + " ".join(sys.argv[1:]),
               "machine": f"{platform.machine()}, {CORES} cores, "
                          f"AMX bf16: {cpu_has_native('bf16')}",
               "runs": res, "summary": summary}
        write_bytes_atomic(str(args.json), json.dumps(out, indent=2).encode())


if __name__ == "__main__":
    main()
