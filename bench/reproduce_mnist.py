"""The MemAE paper's one-class MNIST protocol (Sec. 4.1) with the package's image network.

For each digit d: train on d's training images only; test on d's held-out images plus images
of the other digits as anomalies (30% of the test set, as in the paper); the anomaly score of an
image is its reconstruction MSE; report the AUC per digit and the mean, for the three variants
(``ae``, ``memae_nonsparse``, ``memae``).

Data: ``mnist_5k.csv.gz`` (500 images per digit, 784 pixels then the label). Each digit's
images are split once (seeded): ``--train-frac`` (80%, 400 images) for training, the rest held
out; a digit's anomalies are drawn from the other digits' held-out images only, so no test
image was ever trained on. Pixels are scaled to [0, 1].

Model and loss are the package's own (``build_model`` with ``arch=image``, ``memae_loss``); N=100
slots as in the paper, lambda = 2/N, alpha = 0.0002, Adam 3e-4, 100 epochs, and
``memory_query=flatten``: the whole (64, 4, 4) code is one query, so a slot is a prototype of a
whole digit (one query per code position, the video net's way, reconstructs other digits from
parts and scored 0.83 here). This is a benchmark of the model, so the loop is a plain
in-process PyTorch loop (the distributed trainer serves the video sets).

Usage: python bench/reproduce_mnist.py [--csv ../shared/data/mnist_5k/mnist_5k.csv.gz]
       [--epochs 100] [--seeds 0] [--variants ae,memae_nonsparse,memae] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memae_dist.data.storage import write_bytes_atomic  # noqa: E402
from memae_dist.models import ModelConfig, build_model  # noqa: E402
from memae_dist.models.loss import memae_loss  # noqa: E402

PAPER = {"ae": 0.9619, "memae_nonsparse": 0.9725, "memae": 0.9751}


def load(csv: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(csv, read_options=pacsv.ReadOptions(autogenerate_column_names=True))
    values = np.stack([c.to_numpy() for c in table.columns], axis=1)
    images = values[:, :784].astype(np.float32).reshape(-1, 1, 28, 28) / 255.0
    return images, values[:, 784].astype(np.int64)


def split(labels: np.ndarray, train_frac: float, seed: int) -> tuple[dict, dict]:
    """Per digit: indices of its training images and of its held-out images."""
    rng = np.random.default_rng(seed)
    train, held = {}, {}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        cut = int(round(train_frac * len(idx)))
        train[digit], held[digit] = idx[:cut], idx[cut:]
    return train, held


def test_set(digit: int, held: dict, anomaly_frac: float, seed: int) -> tuple[np.ndarray, ...]:
    normal = held[digit]
    others = np.concatenate([held[d] for d in range(10) if d != digit])
    n_anom = int(round(len(normal) * anomaly_frac / (1 - anomaly_frac)))
    anomalies = np.random.default_rng(seed + 1000 + digit).choice(others, n_anom, replace=False)
    index = np.concatenate([normal, anomalies])
    return index, np.concatenate([np.zeros(len(normal)), np.ones(n_anom)])


def train_one(cfg: ModelConfig, x: torch.Tensor, args, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), args.batch):
            batch = x[order[start:start + args.batch]]  # (B, 1, 28, 28)
            if len(batch) < 2:  # BatchNorm needs two samples
                continue
            loss, _ = memae_loss(model(batch), batch, cfg.effective_entropy_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def scores(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    recon = torch.cat([model(x[i:i + 256]).recon for i in range(0, len(x), 256)])
    return ((recon - x) ** 2).flatten(1).mean(1).numpy()  # (B,) per-image MSE


def run_variant(variant: str, images, labels, args, seed: int) -> list[float]:
    cfg = ModelConfig(arch="image", variant=variant, num_slots=args.slots,
                      shrink_threshold=args.shrink, entropy_weight=args.entropy,
                      memory_query=args.query)
    train_idx, held = split(labels, args.train_frac, seed)
    x = torch.from_numpy(images)
    aucs = []
    for digit in range(10):
        model = train_one(cfg, x[train_idx[digit]], args, seed * 100 + digit)
        index, y = test_set(digit, held, args.anomaly_frac, seed)
        aucs.append(float(roc_auc_score(y, scores(model, x[index]))))
        print(f"{variant} seed {seed} digit {digit}: AUC {aucs[-1]:.4f}", flush=True)
    return aucs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path,
                        default=ROOT.parent / "shared/data/mnist_5k/mnist_5k.csv.gz")
    parser.add_argument("--variants", default="ae,memae_nonsparse,memae")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--slots", type=int, default=100)
    parser.add_argument("--shrink", type=float, default=0.02, help="lambda (2/N for N=100)")
    parser.add_argument("--entropy", type=float, default=0.0002)
    parser.add_argument("--query", choices=("flatten", "position"), default="flatten",
                        help="model.memory_query: one query per image or per code position")
    parser.add_argument("--train-frac", type=float, default=0.8)
    parser.add_argument("--anomaly-frac", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/mnist.json")
    args = parser.parse_args()
    if not args.csv.exists():
        sys.exit(f"MNIST file not found: {args.csv}")
    torch.set_num_threads(args.threads)
    images, labels = load(args.csv)
    rows, t0 = [], time.perf_counter()
    for variant in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            t = time.perf_counter()
            aucs = run_variant(variant, images, labels, args, seed)
            rows.append({"variant": variant, "seed": seed, "auc_per_digit": aucs,
                         "mean_auc": statistics.fmean(aucs), "wall_s": time.perf_counter() - t})
            print(f"{variant} seed {seed}: mean AUC {rows[-1]['mean_auc']:.4f}", flush=True)
    summary = {v: {"mean_auc": statistics.fmean(r["mean_auc"] for r in rows if r["variant"] == v),
                   "paper": PAPER[v]} for v in dict.fromkeys(r["variant"] for r in rows)}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("csv", "json")}
    result = {"settings": settings, "runs": rows, "summary": summary,
              "total_wall_s": time.perf_counter() - t0,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "command": "python bench/reproduce_mnist.py " + " ".join(sys.argv[1:])}
    write_bytes_atomic(str(args.json), json.dumps(result, indent=2).encode())
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
