"""Write a dataset: one Ray task per video -> one Parquet shard each, then the manifest.

Restartable: after its shard, each video gets a small ``<split>/<video>.done.json`` marker; a
rerun with the same settings and the same source skips videos whose marker and shard agree. The
source is recognised by its loader, the loader's arguments and the size and modification time
of each local file or folder they name, so importing a changed source (or another synthetic
seed) into the same destination re-imports what changed instead of keeping the old frames. The
manifest is written last and atomically, so a dataset with a manifest is always complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image

from memae_dist.data import storage
from memae_dist.data.lock import DEFAULT_LOCK_TTL_S, RunLock
from memae_dist.data.manifest import (
    MANIFEST_FILE,
    SPLITS,
    Manifest,
    ShardEntry,
    VideoEntry,
    save_manifest,
)
from memae_dist.data.shards import verify_shard, write_video_shard
from memae_dist.data.stale import MARKER_SUFFIX, SHARD_SUFFIX, remove_cut_off, remove_unlisted
from memae_dist.errors import ScratchSpaceError, UserError

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class VideoSpec:
    split: str  # "train" | "test" | "val"
    name: str  # unique within the split, safe as a file name
    # Picklable (module-level function or functools.partial); returns frames as uint8
    # (N, H0, W0) grayscale or (N, H0, W0, 3) RGB (or a list of such frames) plus abnormal
    # ranges (0-based inclusive [first, last]) or None when the video is unlabelled; it may
    # add a third item, reasons for frames it left out (unreadable images of an image group).
    load: Callable[[], tuple[np.ndarray, list[list[int]] | None]]
    origin: str = ""  # what the frames are read from (source_origin); set by write_dataset

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise UserError(f"video split must be one of {SPLITS}, got {self.split!r}")
        if not _NAME.fullmatch(self.name) or self.name.endswith(MARKER_SUFFIX):
            raise UserError(f"video name {self.name!r} is not safe as a file name")

    @property
    def key(self) -> str:
        return f"{self.split}/{self.name}"


def source_origin(load: Callable) -> str:
    """A digest of what ``load`` reads: its function and arguments, and the size and mtime of
    each existing path among them (of a folder's entries too, one level deep: frame folders;
    of each path in a tuple or list argument: the files of an image group)."""
    func = getattr(load, "func", load)
    args = getattr(load, "args", ())
    keywords = getattr(load, "keywords", None) or {}
    parts = [f"{func.__module__}.{func.__qualname__}", repr(args), repr(sorted(keywords.items()))]
    values = [*args, *keywords.values()]
    for arg in [*values, *(a for v in values if isinstance(v, tuple | list) for a in v)]:
        if isinstance(arg, str) and os.path.exists(arg):
            parts.append(_stat_line(arg))
            if os.path.isdir(arg):
                with os.scandir(arg) as entries:
                    parts += sorted(f"{e.name} {_stat_line(e.path)}" for e in entries)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _stat_line(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:  # a broken link: the reader names it; its own stat still marks a change
        st = os.lstat(path)
    return f"{st.st_size} {st.st_mtime_ns}"


# Pillow's 16-bit grey modes. 16-bit PNG and PGM/PPM files open as mode "I" (32-bit) in some
# Pillow versions, but their samples are 16-bit all the same.
_GRAY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_GRAY16_AS_I_FORMATS = frozenset({"PNG", "PPM"})


def to_gray8(img: Image.Image, where: str) -> Image.Image:
    """A mode "L" (8-bit grey) version of a Pillow image of any mode; ``where`` names it.

    Transparent pixels are composited on white. 16-bit grey is mapped by the 16-bit range
    (value / 257), one scale for every frame, so a video keeps its relative brightness:
    Pillow's own ``convert("L")`` clips it to white, and a per-image min-max stretch would make
    the frames of one video flicker.
    """
    if img.mode == "L":
        return img
    if {"A", "a"} & set(img.getbands()) or "transparency" in img.info:
        # Shown on white, as a viewer on a white page shows it. Pillow's convert drops the
        # alpha and keeps the colour under it: ink drawn in the alpha channel alone (black,
        # fully transparent around it) would become a black frame.
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("L")
    if img.mode in _GRAY16_MODES or (img.mode == "I" and img.format in _GRAY16_AS_I_FORMATS):
        wide = np.asarray(img).astype(np.uint32)  # (H, W); 16-bit PNG samples are unsigned
        return Image.fromarray(((np.minimum(wide, 65535) + 128) // 257).astype(np.uint8))
    if img.mode in ("I", "F"):
        # 32-bit integer and float pixels have no fixed range (0..1, 0..255 and raw sensor
        # counts are all common): clipping would store white or black frames, and stretching
        # each image would flicker, so these are refused rather than guessed.
        kind = "float" if img.mode == "F" else "integer"
        raise UserError(f"image {where} has 32-bit {kind} pixels (mode {img.mode}) of unknown "
                        "brightness range; save the frames as 8- or 16-bit images")
    return img.convert("L")


def _hw(shape: tuple) -> str:
    return "x".join(map(str, shape))


def to_gray_resized(frames, size: tuple[int, int], where: str) -> np.ndarray:
    """(N, H, W) uint8: grayscale, Pillow bilinear (antialiased) resize to ``size`` = (H, W).

    Frames already so (what the video and frame-folder loaders return) come back as they are:
    a long video is not copied."""
    if (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and len(frames)
            and frames.shape[1:] == tuple(size)):
        return frames
    seq = list(frames) if not isinstance(frames, np.ndarray) else frames
    if len(seq) == 0:
        raise UserError(f"video {where} has no frames")
    shape = np.shape(seq[0])
    for i, frame in enumerate(seq):
        if np.shape(frame) != shape:  # (height, width[, channels]), as numpy keeps them
            raise UserError(f"video {where} has frames of mixed sizes: frame {i} is "
                            f"{_hw(np.shape(frame))}, frame 0 is {_hw(shape)} (height x width, x "
                            "colours if any)")
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise UserError(f"video {where}: frames must be HxW or HxWx3, got shape {shape}")
    height, width = size
    out = np.empty((len(seq), height, width), dtype=np.uint8)  # (N, H, W)
    for i, frame in enumerate(seq):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:
            raise UserError(f"video {where}: frames must be uint8, got {frame.dtype}")
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[..., 0]
        img = to_gray8(Image.fromarray(frame), where)  # uint8: mode L or RGB
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        out[i] = np.asarray(img)
    return out


def labels_from_ranges(ranges, num_frames: int, where: str) -> np.ndarray:
    """(N,) uint8 frame labels; validates 0-based inclusive [first, last] ranges."""
    labels = np.zeros(num_frames, dtype=np.uint8)
    for rng in ranges or []:
        if len(rng) != 2 or not 0 <= int(rng[0]) <= int(rng[1]) < num_frames:
            raise UserError(
                f"video {where}: abnormal range {list(rng)} must be [first, last] with "
                f"0 <= first <= last <= {num_frames - 1}"
            )
        labels[int(rng[0]) : int(rng[1]) + 1] = 1
    return labels


def ranges_from_labels(labels: np.ndarray) -> list[list[int]]:
    """Inverse of labels_from_ranges: maximal runs of non-zero labels as [first, last]."""
    flags = np.concatenate([[0], (np.asarray(labels) != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flags))
    return [[int(a), int(b) - 1] for a, b in zip(edges[::2], edges[1::2])]


@dataclass(frozen=True)
class _Job:
    dst: str
    size: tuple[int, int]
    segment_frames: int
    segment_overlap: int
    storage: storage.StorageConfig  # resolved in the driver so workers agree on the endpoint

    def marker(self, spec: VideoSpec) -> dict:
        """The settings a finished shard must match to be reused."""
        return {"size": list(self.size), "segment_frames": self.segment_frames,
                "segment_overlap": self.segment_overlap, "split": spec.split, "video": spec.name,
                "origin": spec.origin}


def convert_video(spec: VideoSpec, job: _Job, skip_bad: bool) -> dict:
    """Load, convert and store one video; runs inside a Ray task.

    Returns {"video": ..., "shard": ...} or, with ``skip_bad``, {"skipped": reason} for a video
    that cannot be loaded (reason None: every frame was left out, each listed in ``dropped``).
    Frames the loader left out are an error without ``skip_bad`` (the first one's reason) and
    listed as ``dropped`` reasons with it. Storage errors always propagate.
    """
    dropped: list[str] = []
    try:
        frames, ranges, *rest = spec.load()
        dropped = [str(reason) for reason in rest[0]] if rest else []
        if dropped and not skip_bad:
            raise UserError(dropped[0])
        if dropped and not len(frames):  # each left-out frame is listed already, once
            return {"skipped": None, "dropped": dropped}
        frames = to_gray_resized(frames, job.size, spec.key)  # (N, H, W)
        labels = labels_from_ranges(ranges, len(frames), spec.key)
    except Exception as exc:
        if not skip_bad or isinstance(exc, ScratchSpaceError):
            if isinstance(exc, UserError):
                return {"error": str(exc)}
            raise
        return {"skipped": f"{type(exc).__name__}: {exc}" if not isinstance(exc, UserError)
                else str(exc), "dropped": dropped}
    rel = f"{spec.split}/{spec.name}{SHARD_SUFFIX}"
    fs, path = storage.pyarrow_fs(storage.join(job.dst, rel), job.storage)
    info = write_video_shard(fs, path, spec.name, spec.split, frames, labels,
                             job.segment_frames, job.segment_overlap)
    # Canonical ranges (sorted, merged); None stays None: "unlabelled" differs from "normal".
    video = VideoEntry(spec.name, len(frames), rel,
                       None if ranges is None else ranges_from_labels(labels))
    shard = ShardEntry(rel, spec.split, spec.name, info["bytes"], info["sha256"], info["rows"])
    record = {"settings": job.marker(spec), "video": asdict(video), "shard": asdict(shard)}
    if dropped:  # kept in the marker, so a rerun that reuses the shard still lists them
        record["dropped"] = dropped
    storage.write_bytes_atomic(_marker_uri(job.dst, spec), json.dumps(record).encode(),
                               job.storage)
    return record


def write_dataset(
    videos: list[VideoSpec],
    dst: str,
    size: tuple[int, int],
    *,
    name: str,
    source: str,
    workers: int | None = None,
    segment_frames: int = 128,
    segment_overlap: int = 15,
    skip_bad: bool = False,
    progress: bool = True,
    storage_cfg: storage.StorageConfig | None = None,
    content: str = "video",
) -> dict:
    """Write every video's shard (one Ray task each; ``workers=0``: one after another in this
    process, without Ray), then the manifest; returns the manifest.

    ``content="images"`` marks each "video" as a group of still images (manifest ``content``).
    """
    job = _validate(videos, dst, size, segment_frames, segment_overlap, workers, storage_cfg)
    videos = [replace(spec, origin=source_origin(spec.load)) for spec in videos]
    storage.makedirs(dst, job.storage)  # fails early on a missing bucket / dead endpoint
    with RunLock(dst, job.storage, DEFAULT_LOCK_TTL_S, what="dataset", setting=None):
        remove_cut_off(dst, job.storage)
        return _write(videos, dst, job, name, source, workers, skip_bad, progress, content)


def _write(videos: list[VideoSpec], dst: str, job: _Job, name: str, source: str,
           workers: int | None, skip_bad: bool, progress: bool, content: str) -> dict:
    manifest_uri = storage.join(dst, MANIFEST_FILE)
    _refuse_another_dataset(dst, manifest_uri, name, source, job)
    # A shard written under skip_bad without some frames is redone without it, so that the bad
    # frame is an error again, as a skipped video is.
    done = {spec.key: rec for spec in videos if (rec := _valid_marker(spec, job)) is not None
            and (skip_bad or not rec.get("dropped"))}
    todo = [spec for spec in videos if spec.key not in done]
    if todo and storage.exists(manifest_uri, job.storage):
        storage.delete(manifest_uri, job.storage)  # shards are about to change under it
    results = dict(done)
    if todo:
        results.update(_run_tasks(todo, job, workers, skip_bad, progress, len(videos)))
    manifest = _assemble(videos, results, job, name, source)
    manifest.content = content
    if not manifest.shards:  # --skip-bad skipped them all: no dataset a reader could use
        first = manifest.skipped[0]
        what = "image" if content == "images" else "video"
        raise UserError(f"every {what} was skipped, so no dataset was written to {dst} (the "
                        f"first, {first['split']}/{first['video']}: {first['reason']})")
    save_manifest(dst, manifest, job.storage)
    remove_unlisted(dst, {s.path for s in manifest.shards}, job.storage)
    return manifest.to_dict()


def _refuse_another_dataset(dst: str, manifest_uri: str, name: str, source: str,
                            job: _Job) -> None:
    """A rerun updates its own dataset; writing one dataset over another would drop the other's
    videos from the manifest and leave their shards behind, so it is refused. The same dataset
    at another frame size is rewritten, said out loud: its checkpoints no longer score it."""
    if not storage.exists(manifest_uri, job.storage):
        return
    try:
        old = json.loads(storage.read_bytes(manifest_uri, job.storage))
        old_name, old_source = old["name"], old["source"]
    except (ValueError, KeyError, TypeError):
        return  # not a manifest anyone can read: the new one replaces it
    if (old_name, old_source) != (name, source):
        raise UserError(f"{dst} already holds another dataset ({old_name!r}, from "
                        f"{old_source}); write {name!r} to another place, or delete that one "
                        "first")
    old_size = tuple(old.get("size") or ())
    if len(old_size) == 2 and old_size != job.size:
        logger.warning("%s holds %s at %sx%s frames: rewriting every video at %sx%s (models "
                       "trained on the old size no longer score it)", dst, name, *old_size,
                       *job.size)


def _validate(videos: Sequence[VideoSpec], dst, size, segment_frames, segment_overlap,
              workers, storage_cfg) -> _Job:
    if not videos:
        raise UserError(f"no videos to write to {dst}")
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise UserError(f"size must be two positive integers (H, W), got {size!r}")
    if not 0 <= segment_overlap < segment_frames:
        raise UserError(
            f"need 0 <= segment_overlap < segment_frames, got {segment_overlap}, {segment_frames}"
        )
    if workers is not None and workers < 0:
        raise UserError(f"workers must be >= 0, got {workers}")
    keys = [v.key for v in videos]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise UserError(f"duplicate video names: {', '.join(dupes)}")
    cfg = (storage_cfg or storage.StorageConfig()).resolved()
    return _Job(dst, (int(size[0]), int(size[1])), segment_frames, segment_overlap, cfg)


def _marker_uri(dst: str, spec: VideoSpec) -> str:
    return storage.join(dst, spec.split, spec.name + MARKER_SUFFIX)


def _valid_marker(spec: VideoSpec, job: _Job) -> dict | None:
    """The marker's record when it matches the settings and its shard the recorded checksum.

    The shard is re-hashed, not only sized: a shard damaged in place keeps its size, and a
    rerun is how a user mends a damaged dataset. Hashing reads each shard once, far less
    than decoding its video again."""
    uri = _marker_uri(job.dst, spec)
    if not storage.exists(uri, job.storage):
        return None
    try:
        record = json.loads(storage.read_bytes(uri, job.storage))
        if record["settings"] != job.marker(spec):
            return None
        shard = record["shard"]
        fs, path = storage.pyarrow_fs(storage.join(job.dst, shard["path"]), job.storage)
        verify_shard(fs, path, int(shard["bytes"]), str(shard["sha256"]))
    except UserError as exc:
        logger.warning("%s; importing %s/%s again", exc, spec.split, spec.name)
        return None
    except (ValueError, KeyError, TypeError, OSError):
        return None  # unreadable marker: redo the video
    return record


def _run_tasks(todo: list[VideoSpec], job: _Job, workers: int | None, skip_bad: bool,
               progress: bool, total: int) -> dict:
    if workers == 0:
        return _run_here(todo, job, skip_bad, progress, total)
    try:
        import ray
    except ImportError:
        raise UserError("Ray cannot be imported here: pass --workers 0 to import the videos in "
                        "this process") from None
    from tqdm import tqdm

    from memae_dist.runtime import ensure_ray

    ensure_ray()
    limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(num_cpus=1, max_retries=1)(convert_video)
    pending: dict = {}
    results: dict = {}
    queue = list(todo)
    # Tasks still in flight when this stops (an error, Ctrl-C, SIGTERM) are not cancelled: a
    # ray.cancel that meets a task finishing at that moment aborts the driver inside Ray's core
    # worker (ray-project/ray#54798). The driver's exit ends them; one that finishes first has
    # written a whole shard and its marker, which the rerun reuses.
    with tqdm(total=total, initial=total - len(todo), desc="videos", unit="video",
              disable=not progress) as bar:
        while queue or pending:
            while queue and len(pending) < limit:  # bounded in flight: bounded memory
                spec = queue.pop(0)
                pending[task.remote(spec, job, skip_bad)] = spec
            ready, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ready[0])
            record = ray.get(ready[0])
            if "error" in record:
                raise UserError(record["error"])
            results[spec.key] = record
            bar.update(1)
    return results


def _run_here(todo: list[VideoSpec], job: _Job, skip_bad: bool, progress: bool,
              total: int) -> dict:
    """The tasks' work in this process, in order: for a machine without Ray (a bare GPU node,
    a laptop session) and for debugging an importer."""
    from tqdm import tqdm

    results: dict = {}
    for spec in tqdm(todo, total=total, initial=total - len(todo), desc="videos",
                     unit="video", disable=not progress):
        record = convert_video(spec, job, skip_bad)
        if "error" in record:
            raise UserError(record["error"])
        results[spec.key] = record
    return results


def _assemble(videos: list[VideoSpec], results: dict, job: _Job, name: str,
              source: str) -> Manifest:
    present = {v.split for v in videos}
    splits: dict[str, list[VideoEntry]] = {s: [] for s in SPLITS if s in present}
    shards, skipped = [], []
    for spec in videos:
        record = results[spec.key]
        skipped += [{"split": spec.split, "video": spec.name, "reason": reason}
                    for reason in record.get("dropped", [])]
        if "skipped" in record:
            if record["skipped"] is not None:
                skipped.append({"split": spec.split, "video": spec.name,
                                "reason": record["skipped"]})
            continue
        splits[spec.split].append(VideoEntry(**record["video"]))
        shards.append(ShardEntry(**record["shard"]))
    return Manifest(name=name, source=source, size=job.size, segment_frames=job.segment_frames,
                    segment_overlap=job.segment_overlap, splits=splits, shards=shards,
                    skipped=skipped)
