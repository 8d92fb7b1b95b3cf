"""Scoring throughput: ``memae-dist score`` against the official MemAE test loop, same machine.

Baseline ("official"): the authors' ``script_testing.py`` way. Frames were resized once to JPEG
files and one index ``.mat`` was written per window (their MATLAB preparation, not timed); then,
for every stride-1 window, its index file is read, the 16 JPEG frames are decoded, converted and
normalised one by one, the clip goes through the model alone (batch 1, the plain model), and the
error is brought back to the host.

Ours: ``score_dataset`` (the ``score`` verb) on the prepared Parquet frames: Ray Data actors that
load the model once (BatchNorm folded; channels-last on a CPU), cut windows from stored segments
and run ``--batch-size`` windows per forward pass (bf16 autocast on a GPU). Ray itself is
started before the clock; actor start-up and model loading are timed.

Both use the same untrained model of the paper's configuration (N = 2000 slots; throughput does
not depend on the weights) and the same UCSD Ped2 test videos. Runs alternate (baseline, ours)
``--repeats`` times so load changes on a shared machine hit both; medians are reported. The
baseline may stop after ``--max-windows`` windows per repeat (it is slow on a CPU).

    python bench/scoring.py --size 64 64 --videos 1            # CPU: a few minutes
    python bench/scoring.py --size 256 256 --videos 12         # the paper's setting, on a GPU
    python bench/scoring.py --model-only --repeats 8           # batching alone, no data

``--prepared DIR`` keeps the prepared videos (Parquet store and JPEG copies) in DIR and reuses
them on the next run, so a GPU node can be handed data prepared elsewhere; with ``--workers 0``
ours scores in the benchmark's own process (the ``score --workers 0`` path, on the GPU when there
is one) and Ray is not needed at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.io import loadmat, savemat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from memae_dist.config import load_config  # noqa: E402
from memae_dist.data.manifest import load_manifest  # noqa: E402
from memae_dist.data.storage import write_bytes_atomic  # noqa: E402
from memae_dist.evaluate.batch_score import ScoreConfig, score_dataset  # noqa: E402
from memae_dist.evaluate.score import use_bf16  # noqa: E402
from memae_dist.models import build_model  # noqa: E402
from memae_dist.train.checkpoint import TrainState, save_checkpoint  # noqa: E402

PED2 = REPO / ".." / "shared" / "data" / "ucsd_ped2"


def make_checkpoint(folder: Path, data: str) -> str:
    cfg = load_config(None, ["model.num_slots=2000", f"data.path={data}"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    folder.mkdir(parents=True)
    save_checkpoint(folder, model, torch.optim.Adam(model.parameters()), TrainState(),
                    cfg.to_dict())
    return str(folder)


def prepare(ped2: Path, videos: int, size: tuple[int, int], root: Path) -> tuple[str, Path]:
    """The chosen test videos twice: our Parquet store, and resized JPEGs for the baseline.

    A folder prepared earlier with the same videos and size is reused as it is."""
    data, jpegs = root / "data", root / "jpeg"
    if (data / "manifest.json").exists() and jpegs.is_dir():
        manifest = load_manifest(str(data))
        if list(manifest.size) == list(size) and len(manifest.videos("test")) == videos:
            return str(data), jpegs
        sys.exit(f"{root} holds another preparation ({manifest.size}, "
                 f"{len(manifest.videos('test'))} videos): pass another --prepared folder")
    from memae_dist.data.importers.ucsd import ucsd_videos
    from memae_dist.data.writer import write_dataset

    specs = [s for s in ucsd_videos(ped2, "ped2") if s.split == "test"][:videos]
    done, jpegs = jpegs, root / "jpeg.partial"  # renamed once complete: never half reused
    shutil.rmtree(jpegs, ignore_errors=True)
    data = str(data)
    write_dataset(specs, data, size, name="ped2-bench", source="ucsd-ped2", progress=False)
    from memae_dist.data.shards import read_video_frames

    manifest = load_manifest(data)
    for v in manifest.videos("test"):
        frames, _ = read_video_frames(manifest.shard_uri(data, v))
        (jpegs / v.name).mkdir(parents=True)
        for i, f in enumerate(frames):
            Image.fromarray(f).save(jpegs / v.name / f"{i:03d}.jpg", quality=95)
        # The official clip index: one .mat per window naming its video and 16 frame numbers.
        index = jpegs / f"{v.name}_idx"
        index.mkdir()
        for start in range(len(frames) - 15):
            savemat(index / f"{v.name}_i{start + 1:03d}.mat",
                    {"v_name": v.name, "idx": np.arange(start, start + 16)[None]})
    jpegs.rename(done)
    return data, done


@torch.no_grad()
def official_loop(model, jpegs: Path, device: torch.device, max_windows: int) -> tuple[int, float]:
    """(windows scored, seconds): per window, its index file, 16 JPEG decodes, batch 1."""
    done, t0 = 0, time.perf_counter()
    for video in sorted(p for p in jpegs.iterdir() if not p.name.endswith("_idx")):
        for index_file in sorted((jpegs / f"{video.name}_idx").iterdir()):
            if done >= max_windows:
                return done, time.perf_counter() - t0
            frame_idx = loadmat(index_file)["idx"][0, :]
            frames = [torch.from_numpy(np.asarray(Image.open(video / f"{i:03d}.jpg"), np.float32)
                                       / 255.0).sub_(0.5).div_(0.5)[None, None]
                      for i in frame_idx]
            clip = torch.cat(frames, 1)[None].to(device)  # (1, 1, 16, H, W)
            recon = model(clip).recon
            r = recon - clip
            err = torch.sum(r ** 2, dim=1) ** 0.5  # the official per-pixel error map
            err.view(1, -1).mean(-1).cpu().tolist()
            done += 1
    return done, time.perf_counter() - t0


@torch.no_grad()
def model_only(size: tuple[int, int], batch: int, repeats: int, device: torch.device,
               precision: str = "auto") -> dict:
    """The model alone, alternating 3-second runs, clips/s: the official way (plain model,
    batch 1, fp32), the plain model at ``batch``, and what ``score`` runs (``for_inference``:
    BatchNorm folded, channels-last on a CPU; bf16 autocast on a GPU) at ``batch``."""
    from memae_dist.models.fuse import for_inference, inference_layout

    plain = build_model(load_config(None, ["model.num_slots=2000"]).model).eval().to(device)
    fast = for_inference(plain, device)
    layout = inference_layout(device)
    bf16 = use_bf16(precision, device)

    def rate(model, b: int, memory_format=torch.contiguous_format, autocast=False) -> float:
        x = (torch.rand((b, 1, 16, *size), device=device) * 2 - 1).contiguous(
            memory_format=memory_format)
        with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            model(x)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 3:
                model(x).recon.float().sum().item()  # .item() waits for a GPU
                n += b
        return n / (time.perf_counter() - t0)

    runs: dict[str, list[float]] = {"official_b1": [], f"plain_b{batch}": [], f"score_b{batch}": []}
    for _ in range(repeats):
        runs["official_b1"].append(rate(plain, 1))
        runs[f"plain_b{batch}"].append(rate(plain, batch))
        runs[f"score_b{batch}"].append(rate(fast, batch, layout, bf16))
        print("   ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items())
              + f"   clips/s, load {os.getloadavg()[0]:.1f}", flush=True)
    out: dict = {k + "_clips_per_s": [round(v, 2) for v in vals] for k, vals in runs.items()}
    for key in (f"plain_b{batch}", f"score_b{batch}"):
        ratios = [m / o for o, m in zip(runs["official_b1"], runs[key])]
        out[f"{key}_ratio_median"] = round(statistics.median(ratios), 2)
    return out


def compare(data: str, jpegs: Path, ckpt_dir: Path, args, device: torch.device,
            gpu: bool) -> tuple[list[float], list[float], list[float]]:
    """Alternating repeats, frames/s: the official loop, ours (timed by ``score_dataset``),
    ours end to end (checkpoint and manifest reads included)."""
    from memae_dist.evaluate.score import load_model

    ckpt = make_checkpoint(ckpt_dir, data)
    model = load_model(ckpt).model.to(device)
    cfg = ScoreConfig(workers=args.workers, batch_size=args.batch_size, progress=False,
                      gpus_per_worker=1.0 if gpu else 0.0, precision=args.precision)
    base, ours, ends = [], [], []
    for _ in range(args.repeats):
        n, s = official_loop(model, jpegs, device, args.max_windows)
        base.append(n / s)
        t0 = time.perf_counter()
        result = score_dataset(ckpt, data, None, cfg)
        ends.append(result.table.num_rows / (time.perf_counter() - t0))
        ours.append(result.frames_per_s)
        print(f"official {base[-1]:.2f} frames/s   score {ours[-1]:.2f} frames/s "
              f"(end to end {ends[-1]:.2f})   load {os.getloadavg()[0]:.1f}", flush=True)
    return base, ours, ends


def machine(gpu: bool) -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
            + (f", {torch.cuda.get_device_name()}" if gpu else ""))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ped2", type=Path, default=PED2, help="UCSD Ped2 ('frames' layout)")
    p.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    p.add_argument("--videos", type=int, default=2, help="test videos used (of 12)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-windows", type=int, default=60, help="baseline windows per repeat")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: the GPU when torch sees one")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="ours: auto = bf16 on GPU, fp32 on CPU (the baseline is always fp32)")
    p.add_argument("--model-only", action="store_true",
                   help="only time the model at batch 1 vs --batch-size (no data, no Ray)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--prepared", type=Path,
                   help="keep the prepared videos here and reuse them on later runs")
    return p.parse_args()


def end_to_end(args: argparse.Namespace, device: torch.device, gpu: bool) -> dict:
    """The official test loop against ``score`` on the same videos, repeats interleaved."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="memae-bench-")))
        if args.workers:
            import ray

            # A private local Ray (never a cluster someone else started on this machine).
            ray.init(address="local", num_cpus=(os.cpu_count() or 1) + 2,
                     include_dashboard=False, object_store_memory=512 * 2**20,
                     logging_level="WARNING")
            stack.callback(ray.shutdown)
        data, jpegs = prepare(args.ped2, args.videos, tuple(args.size), args.prepared or tmp)
        base, ours, ends = compare(data, jpegs, tmp / "ckpt", args, device, gpu)
        frames = sum(v.num_frames - 15 for v in load_manifest(data).videos("test"))
    out = {
        "machine": machine(gpu),
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "device": device.type, "size": list(args.size), "videos": args.videos,
        "frames_scored": frames, "repeats": args.repeats, "workers": args.workers,
        "batch_size": args.batch_size, "precision": args.precision,
        "official_fps_median": round(statistics.median(base), 2),
        "score_fps_median": round(statistics.median(ours), 2),
        "score_end_to_end_fps_median": round(statistics.median(ends), 2),
    }
    out["ratio"] = round(out["score_fps_median"] / out["official_fps_median"], 2)
    # Each repeat's pair ran back to back, under about the same machine load.
    out["ratio_per_repeat"] = [round(o / b, 2) for b, o in zip(base, ours)]
    return out


def main() -> int:
    args = parse_args()
    reuse = args.prepared and (args.prepared / "data" / "manifest.json").exists()
    if not args.model_only and not reuse and not (args.ped2 / "testing" / "frames").is_dir():
        sys.exit(f"Ped2 not found at {args.ped2} (pass --ped2)")
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if gpu and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    device = torch.device("cuda" if gpu else "cpu")
    if args.model_only:
        size = tuple(args.size)
        out = model_only(size, args.batch_size, args.repeats, device, args.precision)
        out.update(machine=machine(gpu), size=list(size), precision=args.precision)
    else:
        out = end_to_end(args, device, gpu)
    print(json.dumps(out, indent=1))
    if args.json:
        write_bytes_atomic(str(args.json), (json.dumps(out, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
