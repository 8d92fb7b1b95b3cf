"""What the shards' page checksums cost: writing and reading real UCSD Ped2 videos.

For each of --videos training videos of ``../shared/data/ucsd_ped2`` (grayscale, resized to
--size), encode its shard the way ``prepare`` does with and without ``write_page_checksum``,
and read every segment's frames the way training and scoring do, with and without
``page_checksum_verification``. The four variants run interleaved, --reps times each, so
machine load hits them alike; the table gives medians and the ratios checked / plain.

Usage: python bench/shard_checksums.py [--size 256] [--videos 4] [--reps 15] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq

from memae_dist.data import shards
from memae_dist.data.importers.ucsd import ucsd_videos
from memae_dist.data.writer import to_gray_resized

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ucsd_ped2"


def encode(frames, checksum: bool) -> bytes:
    """``shards.encode_video_shard`` with the page checksums on or off."""
    writer = pq.ParquetWriter

    def with_flag(*args, **kwargs):
        return writer(*args, **{**kwargs, "write_page_checksum": checksum})

    with mock.patch.object(shards.pq, "ParquetWriter", with_flag):
        data, _ = shards.encode_video_shard("v", "train", frames, frames[:, 0, 0] * 0,
                                            128, 15)
    return data


def read_all(data: bytes, verify: bool) -> int:
    """Every segment's frames, one row group at a time (as the scoring actors read)."""
    shard = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=verify)
    return sum(shard.read_row_group(g, columns=["frames"]).nbytes
               for g in range(shard.num_row_groups))


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--json")
    args = p.parse_args()
    if not SHARED.is_dir():
        print(f"needs the UCSD Ped2 data at {SHARED}", file=sys.stderr)
        return 2
    specs = [s for s in ucsd_videos(SHARED) if s.split == "train"][: args.videos]
    videos = [to_gray_resized(s.load()[0], (args.size, args.size), s.name) for s in specs]
    plain = [encode(v, False) for v in videos]
    checked = [encode(v, True) for v in videos]
    times: dict[str, list[float]] = {k: [] for k in
                                     ("write", "write_crc", "read", "read_crc")}
    for _ in range(args.reps):
        for v, a, b in zip(videos, plain, checked):
            times["write"].append(timed(encode, v, False))
            times["write_crc"].append(timed(encode, v, True))
            times["read"].append(timed(read_all, a, False))
            times["read_crc"].append(timed(read_all, b, True))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    result = {
        "size": args.size, "videos": len(videos), "reps": args.reps,
        "frames_per_video": [len(v) for v in videos],
        "shard_bytes_plain": sum(map(len, plain)), "shard_bytes_crc": sum(map(len, checked)),
        "median_ms": med,
        "write_ratio": med["write_crc"] / med["write"],
        "read_ratio": med["read_crc"] / med["read"],
    }
    print(f"Ped2 train videos {[s.name for s in specs]} at {args.size}x{args.size}, "
          f"{args.reps} reps, medians per video:")
    print(f"  write  {med['write']:8.2f} ms  with CRC {med['write_crc']:8.2f} ms  "
          f"ratio {result['write_ratio']:.3f}")
    print(f"  read   {med['read']:8.2f} ms  verified {med['read_crc']:8.2f} ms  "
          f"ratio {result['read_ratio']:.3f}")
    print(f"  bytes  {result['shard_bytes_plain']:,} -> {result['shard_bytes_crc']:,}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
