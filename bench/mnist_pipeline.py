"""The one-class MNIST protocol through the product: ``prepare images`` -> ``train --config
mnist`` (Ray Train, Ray Data) -> ``evaluate`` (pooled image AUC), per digit.

The same images as ``bench/reproduce_mnist.py`` (its seeded split: 400 training images of the
digit; its 100 held-out images and 43 held-out images of other digits, 30% anomalies), written
as a ``train/good``, ``test/good``, ``test/other`` folder per digit. Where that script trains
the package's model in a plain loop on [0, 1] pixels, this one runs the product's own path on
the frame store's [-1, 1] inputs, so the two tables show what the pipeline costs or adds.

Usage: python bench/mnist_pipeline.py [--digits 0,1,...] [--set KEY=VALUE ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.reproduce_mnist import load, split, test_set  # noqa: E402
from memae_dist.data.storage import write_bytes_atomic  # noqa: E402


def write_digit(root: Path, images, labels, digit: int, seed: int) -> Path:
    """``root/train/good``, ``root/test/good`` and ``root/test/other`` as PNGs."""
    train_idx, held = split(labels, 0.8, seed)
    index, y = test_set(digit, held, 0.3, seed)
    groups = {"train/good": train_idx[digit], "test/good": index[y == 0],
              "test/other": index[y == 1]}
    for folder, idx in groups.items():
        (root / folder).mkdir(parents=True)
        for i in idx:
            pixels = (images[i, 0] * 255).round().astype(np.uint8)  # load() scaled to [0, 1]
            Image.fromarray(pixels).save(root / folder / f"{i:05d}.png")
    return root


def run_digit(digit: int, images, labels, args, work: Path) -> dict:
    from memae_dist.config import load_config
    from memae_dist.data.importers.images import import_images
    from memae_dist.evaluate.run import evaluate_checkpoint
    from memae_dist.train.trainer import fit

    data = str(work / f"data_{digit}")
    import_images(write_digit(work / f"src_{digit}", images, labels, digit, args.seed), data,
                  progress=False)
    cfg = load_config(ROOT / "configs" / "mnist.yaml", [
        f"data.path={data}", f"run.storage={work / 'runs'}", f"run.name=digit_{digit}",
        f"train.seed={args.seed * 100 + digit}", *args.set])
    t0 = time.perf_counter()
    result = fit(cfg)
    train_s = time.perf_counter() - t0
    metrics = evaluate_checkpoint(result.run_uri, data, work / f"eval_{digit}", workers=1)
    last = result.history[-1]
    return {"digit": digit, "auc": metrics["auc_micro"], "train_s": round(train_s, 1),
            "recon": last["recon"], "slots_used": last["slots_used"],
            "clips_per_s_median": statistics.median(r["clips_per_s"] for r in result.history)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path,
                        default=ROOT.parent / "shared/data/mnist_5k/mnist_5k.csv.gz")
    parser.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of configs/mnist.yaml")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/mnist_pipeline.json")
    args = parser.parse_args()
    if not args.csv.exists():
        sys.exit(f"MNIST file not found: {args.csv}")
    images, labels = load(args.csv)
    rows, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="memae-mnist-") as tmp:
        for digit in (int(d) for d in args.digits.split(",")):
            rows.append(run_digit(digit, images, labels, args, Path(tmp)))
            print(f"digit {digit}: AUC {rows[-1]['auc']:.4f} ({rows[-1]['train_s']:.0f} s "
                  "of training)", flush=True)
    result = {"runs": rows, "mean_auc": statistics.fmean(r["auc"] for r in rows),
              "settings": {"seed": args.seed, "set": args.set, "config": "configs/mnist.yaml"},
              "total_wall_s": round(time.perf_counter() - t0, 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "command": "python bench/mnist_pipeline.py " + " ".join(sys.argv[1:])}
    write_bytes_atomic(str(args.json), json.dumps(result, indent=2).encode())
    print(f"mean AUC {result['mean_auc']:.4f} over {len(rows)} digits")


if __name__ == "__main__":
    main()
