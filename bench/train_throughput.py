"""Training throughput: our Ray Train loop against a plain PyTorch loop, and 2 workers against 1.

Measured in one run, on a synthetic set prepared at --size (the model is the paper's 3D-conv
MemAE from the ped2_lite recipe; the results in bench/RESULTS.md were measured when it had
N=2000 slots, it now has 500):

- ``plain``: one process, no Ray: the same model, Adam, micro-batch and precision, every
  training window held in memory as one uint8 tensor, shuffled; timed over --steps optimizer
  steps after --warmup steps;
- ``ray-1``: ``memae_dist.train.trainer.fit`` with 1 worker on a local Ray: the same model and
  batch, windows streamed by Ray Data from the prepared set on local disk. Throughput is taken
  from the run's own history: ``steady`` = clips / (epoch_s - time_to_first_batch_s) over the
  epochs after the first, ``epoch`` = whole-epoch clips/s (includes each epoch's pipeline
  start-up);
- ``cluster-1`` / ``cluster-2``: the same with 1 and 2 workers (placement SPREAD, same global
  batch) on a simulated two-node cluster (``ray.cluster_utils.Cluster``, --cpus-per-worker + 1
  CPUs per node).

Torch threads: Ray gives each worker OMP_NUM_THREADS = its CPUs; the plain loop uses the same
count (--cpus-per-worker). Repetitions alternate the variants; the table shows medians.

``--plain-only`` times the plain loop alone on random clips (no data preparation, no Ray), at
each ``--precision`` given: what a GPU node without Ray can tell about the training step, e.g.
the official recipe at 256x256 (``--size 256 --batch 14 --precision fp32 bf16``).

Usage: python bench/train_throughput.py [--device cpu|cuda] [--size 32] [--batch 8]
       [--steps 20] [--epochs 3] [--reps 3] [--cpus-per-worker 1] [--skip-cluster] [--json OUT]
       [--plain-only --precision auto|fp32|bf16 ... --cudnn-benchmark off|on ...
        --compile off|on ... --grid-step 16|8|4 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memae_dist.config import ExperimentConfig, load_config  # noqa: E402
from memae_dist.data.storage import write_bytes_atomic  # noqa: E402


def experiment(args, data: str, runs: str, name: str, workers: int,
               precision: str = "auto", grid_step: int = 16) -> ExperimentConfig:
    gpus = 1 if args.device == "cuda" else 0
    return load_config(ROOT / "configs" / "ped2_lite.yaml", [
        f"data.path={data}", f"run.storage={runs}", f"run.name={name}", "data.stride=1",
        f"train.precision={precision}", f"model.grid_step={grid_step}",
        f"train.batch_size={args.batch}", f"train.workers={workers}",
        f"train.cpus_per_worker={args.cpus_per_worker}", f"train.gpus_per_worker={gpus}",
        f"train.epochs={args.epochs}", f"train.max_steps_per_epoch={args.steps}",
        "train.placement=SPREAD", "train.tensorboard=false", "data.shuffle_buffer=256",
    ])


def prepare(args, root: Path) -> str:
    from memae_dist.data.importers.synthetic import SyntheticConfig, generate_synthetic

    data = str(root / "data")
    generate_synthetic(data, SyntheticConfig(seed=0, size=(args.size, args.size),
                                             train_videos=6, test_videos=1,
                                             frames_per_video=96), workers=2)
    return data


def windows_in_memory(data: str, window: int) -> torch.Tensor:
    """Every stride-1 training window, (N, L, H, W) uint8."""
    from memae_dist.data.manifest import load_manifest
    from memae_dist.data.shards import read_video_frames

    manifest = load_manifest(data)
    clips = []
    for video in manifest.videos("train"):
        frames, _ = read_video_frames(manifest.shard_uri(data, video))
        view = np.lib.stride_tricks.sliding_window_view(frames, window, axis=0)
        clips.append(np.ascontiguousarray(view.transpose(0, 3, 1, 2)))
    return torch.from_numpy(np.concatenate(clips))


def plain_loop(cfg: ExperimentConfig, clips: torch.Tensor, args,
               cudnn_benchmark: bool = False, compiled: bool = False) -> float:
    """clips/s of a textbook single-process loop over in-memory data."""
    from memae_dist.models import build_model, memae_loss
    from memae_dist.train.precision import Precision, memory_format

    device = torch.device(args.device)
    # cuDNN autotunes each convolution shape on its first call; the warm-up steps absorb it.
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.set_num_threads(max(1, int(args.cpus_per_worker)))
    torch.manual_seed(0)
    fmt = memory_format(cfg.train, cfg.model.arch, device)
    model = build_model(cfg.model).to(device, memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    net = torch.compile(model) if compiled else model  # compiled in the warm-up steps
    precision = Precision(cfg.train, device)
    order = torch.randperm(len(clips))
    b = cfg.train.batch_size

    def step(i: int) -> None:
        idx = order[(i * b) % (len(clips) - b):][:b]
        x = clips[idx].to(device).float().div_(127.5).sub_(1.0).unsqueeze(1)
        x = x.contiguous(memory_format=fmt)
        with precision.autocast():
            loss, _ = memae_loss(net(x), x, cfg.model.effective_entropy_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * b / (time.perf_counter() - t0)


def ray_run(cfg: ExperimentConfig) -> dict:
    from memae_dist.train.trainer import fit

    history = fit(cfg).history
    rows = history[1:] or history  # the first epoch warms up
    steady = [r["clips"] / max(r["epoch_s"] - r["time_to_first_batch_s"], 1e-9) for r in rows]
    return {"steady": statistics.median(steady),
            "epoch": statistics.median(r["clips_per_s"] for r in rows),
            "data_wait_frac": statistics.median(r["data_wait_frac"] for r in rows)}


def local_section(args, data: str, runs: str) -> dict:
    import ray

    clips = windows_in_memory(data, 16)
    out: dict = {"plain": [], "ray-1": []}
    for rep in range(args.reps):
        cfg = experiment(args, data, runs, f"local-{rep}", workers=1)
        out["plain"].append(plain_loop(cfg, clips, args))
        out["ray-1"].append(ray_run(cfg))
    ray.shutdown()
    return out


def cluster_section(args, data: str, runs: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    node = {"num_cpus": int(args.cpus_per_worker) + 1, "object_store_memory": 150 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"RAY_ADDRESS": cluster.address}})
    out: dict = {"cluster-1": [], "cluster-2": []}
    try:
        for rep in range(args.reps):
            for workers in (1, 2):
                cfg = experiment(args, data, runs, f"cluster{workers}-{rep}", workers)
                out[f"cluster-{workers}"].append(ray_run(cfg))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return out


def plain_only(args) -> dict:
    """Plain-loop clips/s per precision (and cuDNN autotuning), alternating, on random clips."""
    clips = torch.randint(0, 256, (max(4 * args.batch, 64), 16, args.size, args.size),
                          dtype=torch.uint8)
    variants = [(p, c == "on", k == "on", g) for p in args.precision
                for c in args.cudnn_benchmark for k in args.compile for g in args.grid_step]
    res: dict[str, list[float]] = {}
    for _ in range(args.reps):
        for precision, bench, compiled, grid in variants:
            name = (precision + (" cudnn.benchmark" if bench else "")
                    + (" compile" if compiled else "") + (f" grid {grid}" if grid != 16 else ""))
            cfg = experiment(args, "unused", "unused", "plain", 0, precision, grid)
            res.setdefault(name, []).append(plain_loop(cfg, clips, args, bench, compiled))
            print(f"plain {name}: {res[name][-1]:.1f} clips/s", flush=True)
    for name, rates in res.items():
        print(f"median {name}: {median_of(rates):.1f} clips/s (size {args.size}, "
              f"batch {args.batch}, {args.steps} steps, device {args.device})")
    return res


def median_of(runs: list, key: str | None = None) -> float:
    return statistics.median(r[key] if key else r for r in runs)


def report(res: dict, args) -> None:
    plain = median_of(res["plain"])
    ray1 = median_of(res["ray-1"], "steady")
    print(f"\nclips/s, medians of {args.reps} (size {args.size}, batch {args.batch}, "
          f"{args.steps} steps/epoch, device {args.device}):")
    print(f"  plain single-process loop      {plain:8.2f}")
    print(f"  ray-1 steady / whole epoch     {ray1:8.2f} / "
          f"{median_of(res['ray-1'], 'epoch'):.2f}   ratio steady/plain {ray1 / plain:.3f}")
    if "cluster-1" in res:
        c1, c2 = median_of(res["cluster-1"], "steady"), median_of(res["cluster-2"], "steady")
        print(f"  2-node cluster 1 / 2 workers   {c1:8.2f} / {c2:.2f}   speed-up {c2 / c1:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--skip-cluster", action="store_true")
    p.add_argument("--json", help="write the raw figures here")
    p.add_argument("--plain-only", action="store_true",
                   help="only the plain loop, on random clips, without Ray")
    p.add_argument("--precision", nargs="+", default=["auto"],
                   choices=("auto", "fp32", "bf16"), help="with --plain-only")
    p.add_argument("--cudnn-benchmark", nargs="+", default=["off"], choices=("off", "on"),
                   help="with --plain-only on cuda: torch.backends.cudnn.benchmark, alternated")
    p.add_argument("--compile", nargs="+", default=["off"], choices=("off", "on"),
                   help="with --plain-only: torch.compile the model (default mode), alternated")
    p.add_argument("--grid-step", nargs="+", type=int, default=[16], choices=(16, 8, 4),
                   help="with --plain-only: model.grid_step (frame pixels per memory query), "
                        "alternated")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU")
    if args.plain_only:
        res = plain_only(args)
        if args.json:
            # oneDNN's ISA cap (e.g. AVX2) emulates an older CPU: bf16 speed depends on it.
            out = {"args": vars(args), "plain": res,
                   "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}
            write_bytes_atomic(args.json, json.dumps(out, indent=2).encode())
        return
    logging.basicConfig(level=logging.WARNING)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    import ray

    with tempfile.TemporaryDirectory(prefix="memae-bench-") as tmp:
        ray.init(num_cpus=int(args.cpus_per_worker) + 2, include_dashboard=False,
                 object_store_memory=200 * 2**20, logging_level="WARNING", log_to_driver=False)
        data = prepare(args, Path(tmp))
        res = local_section(args, data, str(Path(tmp) / "runs"))
        if not args.skip_cluster and args.device == "cpu":
            res.update(cluster_section(args, data, str(Path(tmp) / "runs")))
    report(res, args)
    if args.json:
        write_bytes_atomic(args.json, json.dumps({"args": vars(args), "results": res},
                                                 indent=2).encode())


if __name__ == "__main__":
    main()
