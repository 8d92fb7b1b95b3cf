"""``memae-dist data info``: what a prepared dataset holds, from its manifest alone.

Reads ``manifest.json`` and one listing of the dataset's objects (for the bytes actually
stored); no shard is opened and no frame decoded, so it costs the same for 1 MB or 1 TB.
"""

from __future__ import annotations

from memae_dist.data import storage
from memae_dist.data.manifest import load_manifest, window_too_long
from memae_dist.errors import UserError


def dataset_info(uri: str, window: int | None = None, stride: int = 1,
                 cfg: storage.StorageConfig | None = None) -> dict:
    """Per split: videos, frames, windows, abnormal frames; plus bytes stored vs. raw frames.

    ``window`` defaults to the paper's 16 frames, and to 1 for a set of still images.
    """
    manifest = load_manifest(uri, cfg)
    # Windows no segment holds whole are refused by training, and not counted here either.
    if window is None:
        window = 1 if manifest.content == "images" else min(16, manifest.segment_overlap + 1)
    elif too_long := window_too_long(manifest, window, uri, f"--window {window}"):
        raise UserError(too_long)
    height, width = manifest.size
    sizes = storage.file_sizes(uri, cfg)
    splits = {}
    for split in manifest.split_names:
        videos = manifest.videos(split)
        splits[split] = {
            "videos": len(videos),
            "frames": manifest.total_frames(split),
            "windows": manifest.n_windows(split, window, stride),
            "abnormal": sum(int(manifest.frame_labels(v).sum()) for v in videos),
            "labelled_videos": sum(v.labelled for v in videos),
            "bytes_stored": sum(sizes.get(s.path, 0) for s in manifest.shards
                                if s.split == split),
        }
    frames = sum(s["frames"] for s in splits.values())
    shard_paths = [s.path for s in manifest.shards]
    stored = sum(sizes.get(p, 0) for p in shard_paths)
    raw = frames * height * width
    return {
        "uri": uri,
        "name": manifest.name,
        "source": manifest.source,
        "format_version": manifest.format_version,
        "content": manifest.content,
        "size": [height, width],
        "segment_frames": manifest.segment_frames,
        "segment_overlap": manifest.segment_overlap,
        "window": window,
        "stride": stride,
        "splits": splits,
        "videos": sum(s["videos"] for s in splits.values()),
        "frames": frames,
        "shards": len(shard_paths),
        "bytes_stored": stored,  # shard objects as listed in the store
        "bytes_manifest": sum(s.bytes for s in manifest.shards),
        "bytes_all_objects": sum(sizes.values()),  # + manifest and restart markers
        "bytes_raw": raw,  # one uint8 copy of each frame at the stored size
        "stored_over_raw": round(stored / raw, 4) if raw else None,
        "missing_shards": [p for p in shard_paths if p not in sizes],
        "size_mismatch": [s.path for s in manifest.shards
                          if s.path in sizes and sizes[s.path] != s.bytes],
        "skipped": manifest.skipped,
    }


def shard_size_problems(uri: str, manifest, cfg: storage.StorageConfig | None = None,
                        split: str | None = None) -> list[str]:
    """One message per shard (of ``split``, or of all) that is missing or not the size the
    manifest records.

    One listing of the dataset, no shard read: cheap enough to run before every training or
    scoring run (a truncated shard otherwise fails deep inside Ray Data, mid-epoch).
    """
    sizes = storage.file_sizes(uri, cfg)
    out = []
    for s in manifest.shards:
        if split is not None and s.split != split:
            continue
        if s.path not in sizes:
            out.append(f"shard {storage.join(uri, s.path)} is missing")
        elif sizes[s.path] != s.bytes:
            out.append(f"shard {storage.join(uri, s.path)} is corrupt or stale: "
                       f"{sizes[s.path]} bytes, manifest says {s.bytes}")
    return out


def format_info(info: dict) -> str:
    """Human-readable summary of :func:`dataset_info`."""
    h, w = info["size"]
    images = info["content"] == "images"
    # An image set stores each class folder as groups of images; a group is a "video" inside.
    unit, skipped_unit = ("groups", "image(s)") if images else ("videos", "video(s)")
    lines = [
        f"{info['uri']}: {info['name']} (source {info['source']}, format v"
        f"{info['format_version']}), {'still images' if images else 'frames'}"
        f" {h}x{w}, segments of {info['segment_frames']} "
        f"overlapping by {info['segment_overlap']}",
        f"  {'split':<6} {unit:>7} {'frames':>9} {'windows':>9} {'abnormal':>9} {'stored':>11}"
        f"   (windows of {info['window']}, stride {info['stride']})",
    ]
    for split, s in info["splits"].items():
        lines.append(f"  {split:<6} {s['videos']:>7,} {s['frames']:>9,} {s['windows']:>9,} "
                     f"{s['abnormal']:>9,} {_mb(s['bytes_stored']):>11}")
    ratio = info["stored_over_raw"] or 0.0
    lines.append(
        f"  stored: {_mb(info['bytes_stored'])} in {info['shards']} shards "
        f"({ratio:.3f}x one uint8 copy of every frame, {_mb(info['bytes_raw'])})"
    )
    for key, what in (("missing_shards", "missing"), ("size_mismatch", "with unexpected size")):
        if info[key]:
            lines.append(f"  WARNING: {len(info[key])} shard(s) {what}: "
                         f"{', '.join(info[key][:5])}")
    if info["skipped"]:
        # Images are skipped one by one, several per group: each group is named once.
        where = list(dict.fromkeys(f"{s['split']}/{s['video']}" for s in info["skipped"]))
        lines.append(f"  skipped at import: {len(info['skipped'])} {skipped_unit}"
                     f"{' in' if images else ':'} " + ", ".join(where[:5]))
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def verify_dataset(uri: str, cfg: storage.StorageConfig | None = None) -> tuple[int, list[str]]:
    """Read every shard and check its size and sha256 against the manifest.

    Returns (shards checked, one message per bad shard); unlike :func:`dataset_info` this reads
    every byte of the dataset.
    """
    from memae_dist.data.shards import verify_shard
    from memae_dist.errors import UserError

    manifest = load_manifest(uri, cfg)
    videos = {(split, v.name): v for split, entries in manifest.splits.items() for v in entries}
    problems = []
    for entry in manifest.shards:
        fs, path = storage.pyarrow_fs(storage.join(uri, entry.path), cfg)
        try:
            verify_shard(fs, path, entry.bytes, entry.sha256)
            _check_shard_matches(fs, path, manifest, videos.get((entry.split, entry.video)))
        except UserError as exc:
            problems.append(str(exc))
    return len(manifest.shards), problems


def _check_shard_matches(fs, path: str, manifest, video) -> None:
    """The shard's own record of its video (frame count, frame size) against the manifest's:
    the checksum proves the shard is the one written, not that the manifest still describes
    it (an edited manifest would send scoring windows past a video's end)."""
    import pyarrow.parquet as pq

    from memae_dist.errors import UserError

    shown = storage.display_uri(fs, path)
    with storage.user_errors(shown, "verify shard"):
        table = pq.read_table(path, filesystem=fs, columns=["video_frames", "height", "width"])
    if not table.num_rows:
        raise UserError(f"shard {shown} has no segments")
    frames, height, width = (table.column(c)[0].as_py() for c in ("video_frames", "height",
                                                                   "width"))
    if video is not None and video.num_frames != frames:
        raise UserError(f"shard {shown} holds {frames} frames of video {video.name}, but the "
                        f"manifest says {video.num_frames}")
    if (height, width) != tuple(manifest.size):
        raise UserError(f"shard {shown} holds {height}x{width} frames, but the manifest says "
                        f"{manifest.size[0]}x{manifest.size[1]}")
