"""Data pipeline benchmark: clips/s delivered to a consumer, and I/O amplification.

Side by side in one process tree, on the UCSD Ped2 training split at --size (default 64x64):

- ``ray-local`` / ``ray-s3``: our pipeline (memae_dist.data.stream.window_dataset: Ray Data reads
  the Parquet frame segments, cuts 16-frame windows at read time) consumed like the training
  loop does (iter_torch_batches with a local shuffle buffer and prefetching), from local disk
  and from an S3 server (moto) on loopback;
- ``official``: the official MemAE code's way (``data/video_datasets.py``): a torch DataLoader
  whose workers, for every window, load the window's index ``.mat`` file, decode its 16 JPEG
  frames (pre-resized to --size, grayscale, as the official preprocessing writes them) and apply
  ToTensor + Normalize(0.5, 0.5) per frame;
- ``dataloader-jpeg``: a lean version of it: 16 JPEG decodes per window, uint8, no index file.

All pipelines get the same CPU count (--cpus: Ray's logical CPUs = DataLoader workers; the
consumer is the main process in both) and deliver model-ready float clips in [-1, 1] (uint8
pipelines are converted in the consumer, as the training loop does). Each repetition delivers
one epoch (every stride-1 window of the split once, shuffled); the table reports medians over
--reps repetitions, run interleaved so that machine load hits every pipeline alike, after one
untimed warm-up round (page cache, Ray worker processes).

I/O amplification = bytes read from storage per delivered clip / bytes of one stored frame.
For ray-s3 the bytes are counted at the S3 server (every GET response body, the manifest
included); the stored frame is (shard bytes / frames). ray-local runs the same plan (one
whole-file read per shard). For the DataLoaders, every opened file's size is counted.

Also measured: the training step's consumption rate (forward + backward + Adam of the
ped2_lite model at --size, batch 14, torch on --cpus threads), the rate the pipeline must beat.

Usage: python bench/data_pipeline.py [--size 64] [--cpus 2] [--reps 3] [--with-orig] [--json OUT]
(--with-orig adds ``dataloader-jpeg-orig``: decoding the original 360x240 JPEGs + resize.)
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


def prepare(work: Path, size: tuple[int, int], cpus: int) -> tuple[Path, list, list]:
    """Our store (train split); the official preprocessing's JPEG folders and index files."""
    import scipy.io
    from PIL import Image

    from memae_dist.data.importers.ucsd import ucsd_videos
    from memae_dist.data.importers.video_io import frame_files
    from memae_dist.data.writer import write_dataset

    specs = [s for s in ucsd_videos(PED2) if s.split == "train"]
    store = work / "store"
    write_dataset(specs, str(store), size, name="ped2-train", source="ucsd-ped2", workers=cpus,
                  progress=False)
    videos = []  # per video: (resized jpeg paths, original jpeg paths)
    index = []  # one .mat per window, as the official index_gen writes them
    for folder in sorted((PED2 / "training" / "frames").iterdir(), key=lambda p: p.name):
        originals = frame_files(folder)
        out = work / "jpeg" / folder.name
        (work / "idx" / folder.name).mkdir(parents=True)
        out.mkdir(parents=True)
        for path in originals:  # the official trans_tif2jpg: grayscale, resize, default JPEG
            with Image.open(path) as img:
                img.convert("L").resize(size[::-1], Image.Resampling.BILINEAR).save(
                    out / f"{path.stem}.jpg")
        videos.append(([str(out / f"{p.stem}.jpg") for p in originals],
                       [str(p) for p in originals]))
        for t in range(len(originals) - WINDOW + 1):
            mat = work / "idx" / folder.name / f"{folder.name}_i{t:03d}.mat"
            scipy.io.savemat(mat, {"v_name": str(out), "idx": np.arange(t, t + WINDOW)})
            index.append(str(mat))
    return store, videos, index


# ------------------------------------------------------------------------------ pipelines


class OfficialClips:
    """The official VideoDataset: index .mat -> 16 JPEG reads -> ToTensor + Normalize each."""

    def __init__(self, index: list[str]):
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        import scipy.io
        import torch
        from PIL import Image

        data = scipy.io.loadmat(self.index[i])
        folder, idx = str(data["v_name"][0]), data["idx"][0, :]
        nbytes = os.path.getsize(self.index[i])
        frames = []
        for t in idx:
            path = os.path.join(folder, f"{t:03d}.jpg")
            nbytes += os.path.getsize(path)
            with Image.open(path) as img:
                arr = np.asarray(img)  # (H, W) uint8, like skimage.io.imread
            x = torch.from_numpy(arr[None]).float().div(255.0)  # ToTensor: (1, H, W)
            frames.append(((x - 0.5) / 0.5).unsqueeze(1))  # Normalize(0.5, 0.5): (1, 1, H, W)
        return torch.cat(frames, 1), nbytes  # (1, L, H, W) float32


class JpegClips:
    """A lean frame-file dataset: every item decodes WINDOW JPEG files, returned as uint8."""

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


def to_model_input(clip):
    """uint8 (B, L, H, W) -> float (B, 1, L, H, W) in [-1, 1], as the training loop does."""
    return clip.float().div_(127.5).sub_(1.0).unsqueeze(1)


def run_dataloader(dataset, cpus: int) -> dict:
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True,
                                         num_workers=cpus, prefetch_factor=2)
    t0 = time.perf_counter()
    clips = nbytes = 0
    for clip, size in loader:
        x = clip if clip.is_floating_point() else to_model_input(clip)
        assert x.shape[1:3] == (1, WINDOW) and x.dtype == torch.float32
        clips += len(x)
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
        clips += len(to_model_input(batch["clip"]))
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
    p.add_argument("--with-orig", action="store_true", help="add dataloader-jpeg-orig")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if not (PED2 / "training" / "frames").is_dir():
        print(f"shared Ped2 not found at {PED2} (../shared/data from the repo root)")
        return 2
    size = (args.size, args.size)
    endpoint, s3 = start_s3()

    import boto3
    import ray

    # address="local": a fresh Ray of exactly --cpus, never someone else's running cluster.
    ray.init(address="local", num_cpus=args.cpus, object_store_memory=512 * 2**20,
             include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="memae-bench-") as tmp:
        t0 = time.perf_counter()
        store, videos, index = prepare(Path(tmp), size, args.cpus)
        prep_s = time.perf_counter() - t0
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        s3_uri = "s3://bench/ped2"
        upload(store, s3_uri)
        pipelines = {
            "official": (OfficialClips(index), _mean_size([v[0] for v in videos])),
            "dataloader-jpeg": (JpegClips([v[0] for v in videos], size),
                                _mean_size([v[0] for v in videos])),
        }
        if args.with_orig:
            pipelines["dataloader-jpeg-orig"] = (JpegClips([v[1] for v in videos], size),
                                                 _mean_size([v[1] for v in videos]))
        runs = measure(args, pipelines, store, s3_uri, s3)
        return report(args, size, store, runs, pipelines, prep_s)


def measure(args, pipelines: dict, store: Path, s3_uri: str, s3: CountingApp) -> dict:
    runs: dict[str, list[dict]] = {k: [] for k in [*pipelines, "ray-local", "ray-s3"]}
    # One untimed round first: page cache, Ray worker processes and imports warm for everyone.
    for dataset, _ in pipelines.values():
        run_dataloader(dataset, args.cpus)
    run_ray(str(store))
    run_ray(s3_uri)
    for rep in range(args.reps):  # interleaved, so machine load hits every pipeline alike
        for name, (dataset, _) in pipelines.items():
            runs[name].append(run_dataloader(dataset, args.cpus))
        runs["ray-local"].append(run_ray(str(store)))
        before = s3.get_bytes
        run = run_ray(s3_uri)
        run["bytes_read"] = s3.get_bytes - before
        runs["ray-s3"].append(run)
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(
            f"{k} {v[-1]['clips'] / v[-1]['wall_s']:.0f}" for k, v in runs.items()),
            file=sys.stderr)
    return runs


def report(args, size, store: Path, runs: dict, pipelines: dict, prep_s: float) -> int:
    from memae_dist.data.info import dataset_info

    info = dataset_info(str(store), WINDOW, 1)
    frame_bytes = info["bytes_stored"] / info["frames"]  # one stored frame, compressed
    step_rate = train_step_rate(size, args.cpus)
    rows = {}
    for name, reps in runs.items():
        assert all(r["clips"] == info["splits"]["train"]["windows"] for r in reps), name
        rates = [r["clips"] / r["wall_s"] for r in reps]
        row = {"clips_per_s": round(statistics.median(rates), 1),
               "reps": [round(x, 1) for x in rates], "clips": reps[0]["clips"]}
        if "bytes_read" in reps[0]:
            per_clip = statistics.median(r["bytes_read"] / r["clips"] for r in reps)
            stored = pipelines[name][1] if name in pipelines else frame_bytes
            row["bytes_per_clip"] = round(per_clip)
            row["amplification"] = round(per_clip / stored, 2)
        if "first_batch_s" in reps[0]:  # start-up of an epoch, then the steady rate
            row["first_batch_s"] = round(statistics.median(r["first_batch_s"] for r in reps), 2)
            row["steady_clips_per_s"] = round(statistics.median(
                (r["clips"] - BATCH) / (r["wall_s"] - r["first_batch_s"]) for r in reps), 1)
        rows[name] = row
    for base in ("official", "dataloader-jpeg"):
        for row in rows.values():
            row[f"vs_{base}"] = round(row["clips_per_s"] / rows[base]["clips_per_s"], 2)
    result = {"size": list(size), "cpus": args.cpus, "reps": args.reps, "window": WINDOW,
              "batch": BATCH, "prepare_s": round(prep_s, 1),
              "stored_frame_bytes": round(frame_bytes), "stored_over_raw": info["stored_over_raw"],
              "train_step_clips_per_s": round(step_rate, 1), "pipelines": rows,
              "machine": f"{os.cpu_count()} cores, {sys.platform}"}
    print(json.dumps(result, indent=1))
    print(markdown(result))
    if args.json:
        from memae_dist.data.storage import write_bytes_atomic

        write_bytes_atomic(str(args.json), json.dumps(result, indent=1).encode())
    return 0


def _mean_size(videos: list[list[str]]) -> float:
    return float(np.mean([os.path.getsize(p) for paths in videos for p in paths]))


def markdown(r: dict) -> str:
    lines = ["| pipeline | clips/s (median) | per repetition | vs official | vs lean JPEG | "
             "bytes read / clip | amplification |", "|---|---:|---|---:|---:|---:|---:|"]
    for name, row in r["pipelines"].items():
        lines.append(f"| {name} | {row['clips_per_s']:,.0f} | "
                     f"{', '.join(f'{x:,.0f}' for x in row['reps'])} | "
                     f"{row['vs_official']:.2f}x | {row['vs_dataloader-jpeg']:.2f}x | "
                     f"{row.get('bytes_per_clip', '')} | {row.get('amplification', '')} |")
    for name, row in r["pipelines"].items():
        if "first_batch_s" in row:
            lines.append(f"\n{name}: first batch after {row['first_batch_s']:.2f} s (epoch "
                         f"start-up), then {row['steady_clips_per_s']:,.0f} clips/s steady")
    lines.append(f"\ntraining step (ped2_lite, {r['size'][0]}x{r['size'][1]}, batch 14, "
                 f"{r['cpus']} threads): {r['train_step_clips_per_s']:,.1f} clips/s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
