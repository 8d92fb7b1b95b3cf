"""Data pipeline benchmark: clips/s delivered to a consumer, and I/O amplification.

Side by side in one process tree, on the UCSD Ped2 training split at --size (default 64x64):

- ``ray-local`` / ``ray-s3``: our pipeline (memae_dist.data.stream.window_dataset: Ray Data reads
  the Parquet frame segments, cuts 16-frame windows at read time) consumed like the training
  loop does (iter_torch_batches with a local shuffle buffer and prefetching), from local disk
  and from an S3 server (moto) on loopback;
- ``dataloader-jpeg``: the official MemAE code's way: a torch DataLoader whose workers open and
  decode 16 JPEG frames (pre-resized to --size, grayscale) for every window;
- ``dataloader-jpeg-orig``: the same, decoding the original 360x240 JPEGs and resizing.

All pipelines get the same CPU count (--cpus: Ray's logical CPUs = DataLoader workers; the
consumer is the main process in both). Each repetition delivers one epoch (every stride-1
window of the split once, shuffled); the table reports medians over --reps repetitions.

I/O amplification = bytes read from storage per delivered clip / bytes of one stored frame.
For ray-s3 the bytes are counted at the S3 server (every GET response body); the stored frame
is (shard bytes / frames). For the JPEG loaders, every opened file's size is counted.

Also measured: the training step's consumption rate (forward + backward + Adam of the
ped2_lite model at --size, batch 14, torch on --cpus threads), the rate the pipeline must beat.

Usage: python bench/data_pipeline.py [--size 64] [--cpus 2] [--reps 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PED2 = ROOT / ".." / "shared" / "data" / "ucsd_ped2"
WINDOW = 16
BATCH = 32
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------ S3 with counters


class CountingApp:
    """WSGI middleware counting the body bytes of every GET answered by the S3 server."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.get_bytes = 0
        self.gets = 0

    def __call__(self, environ, start_response):
        body = self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "GET":
            return body
        return self._count(body)

    def _count(self, body):
        n = 0
        try:
            for chunk in body:
                n += len(chunk)
                yield chunk
        finally:
            with self.lock:
                self.get_bytes += n
                self.gets += 1
            if hasattr(body, "close"):
                body.close()


def start_s3() -> tuple[str, CountingApp]:
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = CountingApp(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"})
    return endpoint, app


def upload(local: Path, uri: str) -> None:
    """Copy a prepared dataset folder to S3 (the bucket must exist)."""
    import pyarrow.fs as pafs

    from memae_dist.data import storage

    fs, root = storage.pyarrow_fs(uri)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        with fs.open_output_stream(f"{root}/{path.relative_to(local).as_posix()}") as out:
            out.write(path.read_bytes())
    assert fs.get_file_info(f"{root}/manifest.json").type == pafs.FileType.File


# ------------------------------------------------------------------------------ data set-up


def prepare(work: Path, size: tuple[int, int], cpus: int) -> tuple[Path, Path, list]:
    """Our store (train split) and the official-style folder of pre-resized grayscale JPEGs."""
    from PIL import Image

    from memae_dist.data.importers.ucsd import ucsd_videos
    from memae_dist.data.importers.video_io import frame_files
    from memae_dist.data.writer import write_dataset

    specs = [s for s in ucsd_videos(PED2) if s.split == "train"]
    store = work / "store"
    write_dataset(specs, str(store), size, name="ped2-train", source="ucsd-ped2", workers=cpus,
                  progress=False)
    jpeg = work / "jpeg"
    videos = []  # per video: (resized jpeg paths, original jpeg paths)
    for folder in sorted((PED2 / "training" / "frames").iterdir(), key=lambda p: p.name):
        originals = frame_files(folder)
        out = jpeg / folder.name
        out.mkdir(parents=True)
        small = []
        for path in originals:
            with Image.open(path) as img:
                img = img.convert("L").resize(size[::-1], Image.Resampling.BILINEAR)
            img.save(out / f"{path.stem}.jpg", quality=95)
            small.append(str(out / f"{path.stem}.jpg"))
        videos.append((small, [str(p) for p in originals]))
    return store, jpeg, videos


# ------------------------------------------------------------------------------ pipelines


class JpegClips:
    """The official code's dataset: every item decodes WINDOW JPEG files from disk."""

    def __init__(self, videos: list[list[str]], size: tuple[int, int]):
        self.size = size
        self.items = [(v, t) for v, paths in enumerate(videos)
                      for t in range(len(paths) - WINDOW + 1)]
        self.videos = videos

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        v, t = self.items[i]
        frames, nbytes = [], 0
        for path in self.videos[v][t : t + WINDOW]:
            nbytes += os.path.getsize(path)
            with Image.open(path) as img:
                img = img.convert("L")
                if img.size != self.size[::-1]:
                    img = img.resize(self.size[::-1], Image.Resampling.BILINEAR)
                frames.append(np.asarray(img))
        return np.stack(frames), nbytes  # (L, H, W) uint8


def run_dataloader(dataset: JpegClips, cpus: int) -> dict:
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True,
                                         num_workers=cpus, prefetch_factor=2)
    t0 = time.perf_counter()
    clips = nbytes = 0
    for clip, size in loader:
        assert clip.shape[1:] == (WINDOW, *dataset.size)
        clips += len(clip)
        nbytes += int(size.sum())
    wall = time.perf_counter() - t0
    return {"clips": clips, "wall_s": wall, "bytes_read": nbytes}


def run_ray(uri: str) -> dict:
    from memae_dist.data.config import DataConfig
    from memae_dist.data.stream import window_dataset

    ds = window_dataset(uri, DataConfig(window=WINDOW, stride=1), seed=None)
    t0 = time.perf_counter()
    clips = 0
    first = None
    for batch in ds.iter_torch_batches(batch_size=BATCH, local_shuffle_buffer_size=256,
                                       prefetch_batches=2):
        clips += len(batch["clip"])
        first = first or time.perf_counter() - t0
    return {"clips": clips, "wall_s": time.perf_counter() - t0, "first_batch_s": first}


def train_step_rate(size: tuple[int, int], cpus: int, steps: int = 4) -> float:
    """Clips/s the ped2_lite training step consumes on this machine (CPU)."""
    import torch

    from memae_dist.commands.common import resolve_config_path
    from memae_dist.config import load_config
    from memae_dist.models import build_model, memae_loss

    torch.set_num_threads(cpus)
    cfg = load_config(resolve_config_path("ped2_lite"), [])
    model = build_model(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    x = torch.rand(cfg.train.batch_size, 1, WINDOW, *size) * 2 - 1  # (B, 1, L, H, W)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = model(x)
        loss, _ = memae_loss(out, x, cfg.model.effective_entropy_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up allocators
            times.append(time.perf_counter() - t0)
    return cfg.train.batch_size / statistics.median(times)


# ------------------------------------------------------------------------------ main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64, help="frame size (square), default 64")
    p.add_argument("--cpus", type=int, default=2, help="CPUs for every pipeline, default 2")
    p.add_argument("--reps", type=int, default=3, help="repetitions (median), default 3")
    p.add_argument("--skip-orig", action="store_true", help="skip dataloader-jpeg-orig")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if not (PED2 / "training" / "frames").is_dir():
        print(f"shared Ped2 not found at {PED2} (../shared/data from the repo root)")
        return 2
    size = (args.size, args.size)
    endpoint, s3 = start_s3()

    import boto3
    import ray

    ray.init(num_cpus=args.cpus, object_store_memory=512 * 2**20, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="memae-bench-") as tmp:
        t0 = time.perf_counter()
        store, _, videos = prepare(Path(tmp), size, args.cpus)
        prep_s = time.perf_counter() - t0
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        s3_uri = "s3://bench/ped2"
        upload(store, s3_uri)
        return report(args, size, store, s3_uri, s3, videos, prep_s)


def report(args, size, store: Path, s3_uri: str, s3: CountingApp, videos, prep_s) -> int:
    from memae_dist.data.info import dataset_info

    info = dataset_info(str(store), WINDOW, 1)
    frame_bytes = info["bytes_stored"] / info["frames"]  # one stored frame, compressed
    jpeg_small = JpegClips([v[0] for v in videos], size)
    jpeg_orig = JpegClips([v[1] for v in videos], size)
    runs: dict[str, list[dict]] = {k: [] for k in
                                   ("dataloader-jpeg", "dataloader-jpeg-orig", "ray-local",
                                    "ray-s3")}
    for _ in range(args.reps):  # interleaved, so machine load hits every pipeline alike
        runs["dataloader-jpeg"].append(run_dataloader(jpeg_small, args.cpus))
        if not args.skip_orig:
            runs["dataloader-jpeg-orig"].append(run_dataloader(jpeg_orig, args.cpus))
        runs["ray-local"].append(run_ray(str(store)))
        before = s3.get_bytes
        run = run_ray(s3_uri)
        run["bytes_read"] = s3.get_bytes - before
        runs["ray-s3"].append(run)
    step_rate = train_step_rate(size, args.cpus)
    rows = {}
    for name, reps in runs.items():
        if not reps:
            continue
        assert all(r["clips"] == info["splits"]["train"]["windows"] for r in reps), name
        rate = statistics.median(r["clips"] / r["wall_s"] for r in reps)
        row = {"clips_per_s": round(rate, 1), "reps": [round(r["clips"] / r["wall_s"], 1)
                                                        for r in reps],
               "clips": reps[0]["clips"]}
        if "bytes_read" in reps[0]:
            per_clip = statistics.median(r["bytes_read"] / r["clips"] for r in reps)
            stored = frame_bytes if name.startswith("ray") else _jpeg_frame_bytes(
                jpeg_small if name == "dataloader-jpeg" else jpeg_orig)
            row["bytes_per_clip"] = round(per_clip)
            row["amplification"] = round(per_clip / stored, 2)
        if "first_batch_s" in reps[0]:
            row["first_batch_s"] = round(statistics.median(r["first_batch_s"] for r in reps), 2)
        rows[name] = row
    base = rows["dataloader-jpeg"]["clips_per_s"]
    for row in rows.values():
        row["vs_dataloader_jpeg"] = round(row["clips_per_s"] / base, 2)
    result = {"size": list(size), "cpus": args.cpus, "reps": args.reps, "window": WINDOW,
              "batch": BATCH, "prepare_s": round(prep_s, 1), "stored_frame_bytes":
              round(frame_bytes), "stored_over_raw": info["stored_over_raw"],
              "train_step_clips_per_s": round(step_rate, 1), "pipelines": rows,
              "machine": f"{os.cpu_count()} cores, {sys.platform}"}
    print(json.dumps(result, indent=1))
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def _jpeg_frame_bytes(dataset: JpegClips) -> float:
    sizes = [os.path.getsize(p) for paths in dataset.videos for p in paths]
    return float(np.mean(sizes))


def markdown(r: dict) -> str:
    lines = ["| pipeline | clips/s (median) | per rep | vs DataLoader | bytes/clip | "
             "amplification |", "|---|---:|---|---:|---:|---:|"]
    for name, row in r["pipelines"].items():
        lines.append(f"| {name} | {row['clips_per_s']:,.0f} | "
                     f"{', '.join(f'{x:,.0f}' for x in row['reps'])} | "
                     f"{row['vs_dataloader_jpeg']:.2f}x | {row.get('bytes_per_clip', '')} | "
                     f"{row.get('amplification', '')} |")
    lines.append(f"\ntraining step (ped2_lite, {r['size'][0]}x{r['size'][1]}, batch 14, "
                 f"{r['cpus']} threads): {r['train_step_clips_per_s']:,.1f} clips/s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
