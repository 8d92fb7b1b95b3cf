"""One Parquet shard per video: overlapping segments of frames, stored once.

A shard holds one row per segment of up to K consecutive frames; consecutive segments overlap by
``overlap`` (= window_length - 1) frames so every window of ``window_length`` frames lies inside
one segment. Each segment is its own row group, so readers can fetch one segment at a time.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from memae_dist.data import storage
from memae_dist.errors import UserError

SCHEMA = pa.schema(
    [
        ("video", pa.string()),
        ("split", pa.string()),
        ("start", pa.int32()),
        ("num_frames", pa.int32()),
        ("video_frames", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("frames", pa.binary()),  # num_frames*H*W uint8, C-order (n, H, W)
        ("labels", pa.binary()),  # num_frames uint8, all zero when unlabelled
    ]
)
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3


def open_shard(source) -> pq.ParquetFile:
    """A shard for reading, its pages' CRC32 checked as they are read: a flipped byte in the
    frames would otherwise decode (zstd frames carry no checksum here) into wrong pixels that
    train and score without a word. Shards written before checksums read as before."""
    return pq.ParquetFile(source, page_checksum_verification=True)


@contextmanager
def damage_reported(uri: str) -> Iterator[None]:
    """A failed page checksum, or bytes that are not Parquet, become one line naming the shard
    and the way to repair it."""
    try:
        yield
    except OSError as exc:
        if "checksum" not in str(exc).lower():
            raise
        raise UserError(f"shard {uri} is damaged (a page checksum does not match): "
                        f"{REPAIR}") from None
    except pa.ArrowInvalid as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise UserError(f"shard {uri} is damaged ({reason}): {REPAIR}") from None


REPAIR = ("'memae-dist data verify' lists every damaged shard; rerun the same 'memae-dist "
          "prepare' to write them again")


def segment_bounds(num_frames: int, segment_frames: int, overlap: int) -> list[tuple[int, int]]:
    """(start, n) of each segment: starts 0, K-o, 2(K-o), ...; the last ends at the last frame."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0 <= overlap < segment_frames:
        raise ValueError(f"need 0 <= overlap < segment_frames, got {overlap}, {segment_frames}")
    step = segment_frames - overlap
    bounds, start = [], 0
    while True:
        n = min(segment_frames, num_frames - start)
        bounds.append((start, n))
        if start + n >= num_frames:
            return bounds
        start += step


def owned_window_starts(
    start: int,
    n: int,
    video_frames: int,
    segment_frames: int,
    overlap: int,
    window_length: int,
    stride: int = 1,
) -> np.ndarray:
    """Absolute start frames t of the windows the segment (start, n) owns.

    A segment owns t with ``start <= t < start + (K - overlap)`` (the last segment: up to
    ``video_frames - window_length``) and ``t % stride == 0`` (strides count from the video's
    frame 0), so across a video's segments every window appears exactly once.
    """
    if window_length < 1 or stride < 1:
        raise ValueError(f"window_length and stride must be >= 1, got {window_length}, {stride}")
    if window_length > overlap + 1 and start + n < video_frames:
        # Windows would straddle two segments; the data was cut for shorter windows.
        raise UserError(
            f"window_length {window_length} needs segment_overlap >= {window_length - 1}, "
            f"but the dataset was written with segment_overlap={overlap}"
        )
    last_start = video_frames - window_length  # last valid window start in the video
    if start + n >= video_frames:
        hi = last_start + 1
    else:
        hi = min(start + segment_frames - overlap, last_start + 1)
    first = -(-start // stride) * stride  # ceil to the stride grid
    if hi <= first:
        return np.zeros(0, dtype=np.int64)
    return np.arange(first, hi, stride, dtype=np.int64)


def encode_video_shard(
    video: str,
    split: str,
    frames: np.ndarray,  # (N, H, W) uint8
    labels: np.ndarray,  # (N,) uint8
    segment_frames: int,
    overlap: int,
) -> tuple[bytes, int]:
    """The shard file's bytes and its number of rows (segments)."""
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W) uint8, got {frames.shape} {frames.dtype}")
    if labels.shape != (frames.shape[0],):
        raise ValueError(f"labels must be ({frames.shape[0]},), got {labels.shape}")
    num, height, width = frames.shape
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    bounds = segment_bounds(num, segment_frames, overlap)
    buf = io.BytesIO()
    # Segment by segment: only one segment's frames are held uncompressed at a time, beside
    # the compressed file (the frames may be a memory map of a long video).
    with pq.ParquetWriter(buf, SCHEMA, compression=COMPRESSION,
                          compression_level=COMPRESSION_LEVEL,
                          use_dictionary=["video", "split"],
                          write_page_checksum=True) as writer:  # checksums: see open_shard
        for start, n in bounds:
            row = {"video": [video], "split": [split], "start": [start], "num_frames": [n],
                   "video_frames": [num], "height": [height], "width": [width],
                   "frames": [np.ascontiguousarray(frames[start : start + n]).tobytes()],
                   "labels": [labels[start : start + n].tobytes()]}
            # One segment per row group: readers fetch segments independently.
            writer.write_table(pa.table(row, schema=SCHEMA))
    return buf.getvalue(), len(bounds)


def write_video_shard(
    fs: pafs.FileSystem,
    path: str,
    video: str,
    split: str,
    frames: np.ndarray,  # (N, H, W) uint8
    labels: np.ndarray,  # (N,) uint8
    segment_frames: int,
    overlap: int,
) -> dict:
    """Write one video's shard atomically at ``path`` inside ``fs`` (see storage.pyarrow_fs).

    Returns {"bytes", "sha256", "rows"}. Locally a temp file is renamed into place; on S3 the
    object appears only when its upload completes.
    """
    data, rows = encode_video_shard(video, split, frames, labels, segment_frames, overlap)
    shown = storage.display_uri(fs, path)
    with storage.user_errors(shown, "write shard"):
        storage.write_atomic_fs(fs, path, data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rows": rows}


def read_video_frames(
    uri: str, cfg: storage.StorageConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reassemble a whole video from its shard: frames (N, H, W) uint8 and labels (N,) uint8."""
    fs, path = storage.pyarrow_fs(uri, cfg)
    with storage.user_errors(uri, "read shard", cfg):
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise UserError(f"shard not found: {storage.describe(uri, cfg)}")
        try:
            with damage_reported(uri), fs.open_input_file(path) as fh:
                table = open_shard(fh).read()
        except pa.ArrowInvalid as exc:
            raise UserError(f"shard {uri} is not a valid Parquet file: {exc}") from None
    rows = table.to_pylist()
    if not rows:
        raise UserError(f"shard {uri} has no segments")
    total, height, width = rows[0]["video_frames"], rows[0]["height"], rows[0]["width"]
    frames = np.empty((total, height, width), dtype=np.uint8)
    labels = np.empty(total, dtype=np.uint8)
    covered = np.zeros(total, dtype=bool)
    for row in rows:
        s, n = row["start"], row["num_frames"]
        if s < 0 or s + n > total or len(row["frames"]) != n * height * width:
            raise UserError(f"shard {uri}: segment at frame {s} is inconsistent")
        frames[s : s + n] = np.frombuffer(row["frames"], np.uint8).reshape(n, height, width)
        labels[s : s + n] = np.frombuffer(row["labels"], np.uint8)
        covered[s : s + n] = True
    if not covered.all():
        raise UserError(f"shard {uri}: segments do not cover all {total} frames")
    return frames, labels


def verify_shard(
    fs: pafs.FileSystem, path: str, expected_bytes: int, expected_sha256: str
) -> None:
    """Raise a UserError naming the shard when its size or sha256 differs from the manifest."""
    shown = storage.display_uri(fs, path)
    with storage.user_errors(shown, "verify shard"):
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise UserError(f"shard missing: {shown}")
        if info.size != expected_bytes:
            raise UserError(
                f"shard {shown} is corrupt or stale: {info.size} bytes, manifest says "
                f"{expected_bytes}"
            )
        digest = hashlib.sha256()
        with fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    if digest.hexdigest() != expected_sha256:
        raise UserError(f"shard {shown} is corrupt or stale: sha256 does not match the manifest")
