"""The dataset manifest (``DATASET/manifest.json``): typed, validated, written atomically.

The manifest is the single entry point to a dataset: it is written last, so its presence means
every shard it lists is complete. Paths inside it are relative to the dataset root and may never
escape it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from memae_dist.data import storage
from memae_dist.errors import UserError
from memae_dist.layout import MANIFEST_FILE

if TYPE_CHECKING:
    from memae_dist.data.config import DataConfig

FORMAT_NAME = "memae-dist-frames"
FORMAT_VERSION = 1
SPLITS = ("train", "test", "val")
# What a dataset's frames are: the frames of videos (windows of consecutive frames make a clip),
# or still images (one image per frame, scored one by one, the image and MLP networks' input).
CONTENTS = ("video", "images")


@dataclass(frozen=True)
class VideoEntry:
    name: str
    num_frames: int
    shard: str  # path relative to the dataset root
    # 0-based inclusive [first, last] abnormal ranges; None = unlabelled, [] = all normal.
    abnormal: list[list[int]] | None = None

    @property
    def labelled(self) -> bool:
        return self.abnormal is not None


@dataclass(frozen=True)
class ShardEntry:
    path: str  # relative to the dataset root
    split: str
    video: str
    bytes: int
    sha256: str
    rows: int


@dataclass
class Manifest:
    name: str
    source: str
    size: tuple[int, int]  # (H, W) of every stored frame
    segment_frames: int
    segment_overlap: int
    splits: dict[str, list[VideoEntry]]
    shards: list[ShardEntry]
    skipped: list[dict] = field(default_factory=list)  # {"split", "video", "reason"}
    content: str = "video"  # one of CONTENTS; absent from manifests written before images
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    # Where it was loaded from, for messages; not part of the file.
    uri: str = field(default="", compare=False, repr=False)

    # ------------------------------------------------------------------ accessors
    @property
    def split_names(self) -> list[str]:
        return list(self.splits)

    def videos(self, split: str) -> list[VideoEntry]:
        if split not in self.splits:
            have = ", ".join(self.splits) or "none"
            named = f"{self.uri} ({self.name})" if self.uri else repr(self.name)
            raise UserError(f"dataset {named} has no split {split!r} (splits: {have})")
        return list(self.splits[split])

    def shard_uri(self, dataset_uri: str, video: VideoEntry) -> str:
        return storage.join(dataset_uri, video.shard)

    def shard_entry(self, video: VideoEntry) -> ShardEntry:
        for entry in self.shards:
            if entry.path == video.shard:
                return entry
        raise UserError(f"manifest of {self.name!r} lists no shard entry for {video.shard!r}")

    @staticmethod
    def frame_labels(video: VideoEntry) -> np.ndarray:
        """(num_frames,) uint8, 1 inside an abnormal range; all zero for unlabelled videos."""
        labels = np.zeros(video.num_frames, dtype=np.uint8)
        for first, last in video.abnormal or []:
            labels[first : last + 1] = 1
        return labels

    def total_frames(self, split: str) -> int:
        return sum(v.num_frames for v in self.videos(split))

    def n_windows(self, split: str, window_length: int, stride: int = 1) -> int:
        """Windows of ``window_length`` frames at starts t with t % stride == 0, per video."""
        if window_length < 1 or stride < 1:
            raise UserError(
                f"window_length and stride must be >= 1, got {window_length}, {stride}"
            )
        return sum(
            (v.num_frames - window_length) // stride + 1
            for v in self.videos(split)
            if v.num_frames >= window_length
        )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "name": self.name,
            "source": self.source,
            "size": list(self.size),
            "segment_frames": self.segment_frames,
            "segment_overlap": self.segment_overlap,
            "splits": {s: {"videos": [asdict(v) for v in vs]} for s, vs in self.splits.items()},
            "shards": [asdict(s) for s in self.shards],
            "skipped": list(self.skipped),
            "content": self.content,
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "manifest") -> Manifest:
        """Parse and validate; every problem is a UserError naming ``where``."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise UserError(f"{where}: not a {FORMAT_NAME} manifest (format={got!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{where}: unsupported format_version {data.get('format_version')!r} "
                f"(this memae-dist reads version {FORMAT_VERSION})"
            )
        try:
            manifest = cls(
                name=str(data["name"]),
                source=str(data["source"]),
                size=(int(data["size"][0]), int(data["size"][1])),
                segment_frames=int(data["segment_frames"]),
                segment_overlap=int(data["segment_overlap"]),
                splits={
                    split: [VideoEntry(**_video_fields(v)) for v in body["videos"]]
                    for split, body in data["splits"].items()
                },
                shards=[_shard_fields(s) for s in data["shards"]],
                skipped=list(data.get("skipped") or []),
                content=str(data.get("content", "video")),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise UserError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None
        manifest.validate(where)
        return manifest

    def validate(self, where: str = "manifest") -> None:
        if self.content not in CONTENTS:
            raise UserError(f"{where}: content must be one of {', '.join(CONTENTS)}, "
                            f"got {self.content!r}")
        if min(self.size) < 1:
            raise UserError(f"{where}: size must be positive, got {list(self.size)}")
        if not 0 <= self.segment_overlap < self.segment_frames:
            raise UserError(
                f"{where}: need 0 <= segment_overlap < segment_frames, got "
                f"{self.segment_overlap}, {self.segment_frames}"
            )
        for split, videos in self.splits.items():
            if split not in SPLITS:
                raise UserError(f"{where}: unknown split {split!r} (expected one of {SPLITS})")
            names = [v.name for v in videos]
            if len(set(names)) != len(names):
                raise UserError(f"{where}: duplicate video names in split {split!r}")
            for v in videos:
                _check_video(v, split, where)
        for s in self.shards:
            check_relative_path(s.path, where)
        listed = {s.path for s in self.shards}
        for split, videos in self.splits.items():
            for v in videos:
                if v.shard not in listed:  # its size and checksum would go unchecked
                    raise UserError(f"{where}: video {split}/{v.name} has no shard entry "
                                    f"for {v.shard!r}")


def load_manifest(dataset_uri: str, cfg: storage.StorageConfig | None = None) -> Manifest:
    uri = storage.join(dataset_uri, MANIFEST_FILE)
    storage.check_bucket(dataset_uri, cfg)  # a missing bucket gets its own, clearer error
    if not storage.exists(uri, cfg):
        if dataset_uri.rstrip("/").endswith(MANIFEST_FILE):
            why = "give the dataset's folder, not its manifest file"
        elif not storage.is_remote(dataset_uri) and not os.path.exists(
                storage.local_path(dataset_uri)):
            why = "no such folder"
        else:
            why = "not imported yet, or the import did not finish"
        raise UserError(
            f"no {MANIFEST_FILE} in dataset {storage.describe(dataset_uri, cfg)} ({why})")
    raw = storage.read_bytes(uri, cfg)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{uri}: not valid JSON ({exc})") from None
    manifest = Manifest.from_dict(data, where=uri)
    manifest.uri = dataset_uri
    return manifest


def check_model_input(manifest, model, data_uri: str) -> None:
    """Refuse a dataset whose samples the ``model`` config's network cannot take."""
    height, width = manifest.size
    if model.in_channels != 1:
        raise UserError(f"model.in_channels={model.in_channels} does not fit dataset {data_uri}: "
                        "prepared frames are grey (1 channel)")
    if model.arch == "video":
        if manifest.content == "images":
            raise UserError(f"dataset {data_uri} holds still images ('prepare images'); train "
                            "it with model.arch=image or mlp and data.window=1")
        if height % 16 or width % 16:
            raise UserError(f"dataset {data_uri} has {height}x{width} frames; the video model "
                            "needs multiples of 16 (prepare it again with --size)")
    elif model.arch == "image" and (height, width) != (28, 28):
        # 'prepare' stores video at multiples of 16: 28x28 frames come from 'prepare images'.
        fix = ("prepare it again with --size 28 28" if manifest.content == "images" else
               "video frames; use model.arch=video, or 'prepare images --size 28 28'")
        raise UserError(f"model.arch=image takes 28x28 images; dataset {data_uri} stores "
                        f"{height}x{width} ({fix})")
    elif model.arch == "mlp" and height * width != model.input_dim:
        raise UserError(f"model.input_dim={model.input_dim} does not fit dataset {data_uri}: "
                        f"its {height}x{width} images are {height * width} values each")


def window_too_long(manifest, window: int, data_uri: str, named: str) -> str | None:
    """Why no segment holds a ``window``-frame clip whole (they overlap by L - 1 frames), or
    None; ``named``: how the user gave the length (``data.window=32``, ``--window 32``)."""
    if window <= manifest.segment_overlap + 1:
        return None
    return (f"{named} is longer than the dataset {data_uri} supports (segments overlap by "
            f"{manifest.segment_overlap} frames: window <= {manifest.segment_overlap + 1}, the "
            "window length it was prepared for)")


def check_window(manifest, cfg: DataConfig, data_uri: str) -> None:
    too_long = window_too_long(manifest, cfg.window, data_uri, f"data.window={cfg.window}")
    if too_long:
        raise UserError(f"{too_long}; set data.window to at most "
                        f"{manifest.segment_overlap + 1}")
    shortest = min(v.num_frames for v in manifest.videos(cfg.train_split))
    if cfg.window > shortest:
        raise UserError(
            f"data.window={cfg.window} is longer than the shortest training video "
            f"({shortest} frames) in {data_uri}"
        )


def check_enough_windows(manifest, cfg: DataConfig, batch_size: int, data_uri: str) -> None:
    """Every epoch drops its last partial batch (DDP workers step together): a training split
    smaller than one batch would train nothing, and end in a 0/0 loss."""
    check_window(manifest, cfg, data_uri)  # windows no video holds: say so, not "0 clips"
    n = manifest.n_windows(cfg.train_split, cfg.window, cfg.stride)
    if n < batch_size:
        what = ("images" if manifest.content == "images" else
                f"clips ({cfg.window}-frame windows at stride {cfg.stride})")
        raise UserError(f"split {cfg.train_split} of {data_uri} has {n} {what}, fewer than one "
                        f"batch (train.batch_size={batch_size}): lower train.batch_size or add "
                        "training data")


def save_manifest(
    dataset_uri: str, manifest: Manifest, cfg: storage.StorageConfig | None = None
) -> None:
    uri = storage.join(dataset_uri, MANIFEST_FILE)
    manifest.validate(uri)
    data = json.dumps(manifest.to_dict(), indent=1).encode()
    storage.write_bytes_atomic(uri, data, cfg)


_SAFE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def check_relative_path(path: str, where: str = "manifest") -> None:
    """Reject paths that could escape the dataset root (absolute, '..', schemes, backslashes)."""
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or not all(_SAFE_PART.fullmatch(p) and p != ".." for p in parts):
        raise UserError(f"{where}: path {path!r} must be relative and stay inside the dataset")


def _video_fields(v: dict) -> dict:
    abnormal = v.get("abnormal")
    if abnormal is not None:
        abnormal = [[int(a), int(b)] for a, b in abnormal]
    return {
        "name": str(v["name"]),
        "num_frames": int(v["num_frames"]),
        "shard": str(v["shard"]),
        "abnormal": abnormal,
    }


def _shard_fields(s: dict) -> ShardEntry:
    # Typed here: a null or a string where a number belongs would otherwise surface later, as
    # a TypeError in whatever first does arithmetic with it.
    return ShardEntry(path=str(s["path"]), split=str(s["split"]), video=str(s["video"]),
                      bytes=_count(s["bytes"]), sha256=str(s["sha256"]), rows=_count(s["rows"]))


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count, got {value!r}")
    return value


def _check_video(v: VideoEntry, split: str, where: str) -> None:
    check_relative_path(v.shard, where)
    if v.num_frames < 1:
        raise UserError(f"{where}: video {split}/{v.name} has num_frames={v.num_frames}")
    for first, last in v.abnormal or []:
        if not 0 <= first <= last < v.num_frames:
            raise UserError(
                f"{where}: video {split}/{v.name} abnormal range [{first}, {last}] is outside "
                f"0..{v.num_frames - 1}"
            )
