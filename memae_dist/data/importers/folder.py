"""Any folder of videos or frame folders -> memae-dist dataset: how users bring their own cameras.

Sources are video files (.avi, .mp4, .mkv, .mov, ... any codec FFmpeg decodes) and frame folders
(a folder holding images, taken in natural name order: ``img2`` before ``img10``). Folders that
hold neither are searched recursively; a video found at ``cam1/day2/clip.mp4`` is named
``cam1__day2__clip``, with characters other than letters, digits, ``.``, ``-``, ``_`` replaced.

Splits come from top-level folders named ``train``/``training``, ``test``/``testing``,
``val``/``validation``; without them every source goes to one split (``split``, default train).

Labels (optional, ``labels``) are either
- a JSON file mapping a video to its abnormal frames, as 0-based inclusive ``[first, last]``
  ranges (``{"cam2": [[120, 180]], "cam3": []}``) or one 0/1 value per frame; a video is named by
  its dataset name, its path relative to the split folder (with or without the extension), or
  either of those prefixed with ``<split>/``;
- or a folder of ``<video name>.npy`` files of per-frame 0/1 labels.
With labels, every test and val video must have an entry; training videos may.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memae_dist.data.importers import video_io
from memae_dist.data.storage import StorageConfig
from memae_dist.data.writer import VideoSpec, ranges_from_labels, write_dataset
from memae_dist.errors import UserError

SPLIT_DIRS = {"train": "train", "training": "train", "test": "test", "testing": "test",
              "val": "val", "valid": "val", "validation": "val"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    split: str
    name: str  # dataset video name (safe as a file name)
    path: Path
    rel: str  # path relative to the split folder, POSIX style

    def aliases(self) -> set[str]:
        """The keys a labels file may use for this video."""
        # A video file may go without its extension; so may a broken link to one (not a
        # file, yet a source: it fails when read, and its label must still match it).
        stem = "" if self.path.is_dir() else self.rel.rsplit(".", 1)[0]
        bare = {self.name, self.rel, stem}
        bare.discard("")
        return bare | {f"{self.split}/{k}" for k in bare}


def folder_videos(src: str | Path, size: tuple[int, int], labels: str | Path | None = None,
                  split: str = "train") -> list[VideoSpec]:
    """VideoSpecs of every video / frame folder under ``src``, labelled from ``labels``."""
    size = (int(size[0]), int(size[1]))
    sources = discover(Path(src), split)
    assigned = read_labels(Path(labels), sources) if labels else {}
    if labels:
        missing = [s.split + "/" + s.name for s in sources
                   if s.split != "train" and (s.split, s.name) not in assigned]
        if missing:
            raise UserError(
                f"{labels}: no labels for {len(missing)} test/val video(s): "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
    specs = []
    for s in sources:
        label = assigned.get((s.split, s.name))
        if label is None:
            load = functools.partial(video_io.load_with_ranges, str(s.path), size, None)
        elif isinstance(label, Path):
            load = functools.partial(video_io.load_with_frame_labels, str(s.path), size,
                                     str(label))
        elif label and isinstance(label[0], int):
            load = functools.partial(load_with_label_list, str(s.path), size, tuple(label),
                                     str(labels))
        else:
            load = functools.partial(load_with_label_ranges, str(s.path), size, label,
                                     str(labels))
        specs.append(VideoSpec(s.split, s.name, load))
    return specs


def import_folder(src: str | Path, dst: str, size: tuple[int, int] = (256, 256), *,
                  labels: str | Path | None = None, split: str = "train",
                  workers: int | None = None, skip_bad: bool = False,
                  progress: bool = True, storage_cfg: StorageConfig | None = None) -> dict:
    """Import a folder of videos / frame folders into ``dst``; returns the manifest."""
    videos = folder_videos(src, size, labels, split)
    name = safe_name(Path(src).resolve().name) or "folder"
    return write_dataset(videos, dst, tuple(size), name=name, source="folder", workers=workers,
                         skip_bad=skip_bad, progress=progress, storage_cfg=storage_cfg)


# ------------------------------------------------------------------------------ discovery


def safe_name(text: str) -> str:
    return _UNSAFE.sub("_", text).lstrip(".-")


def discover(src: Path, default_split: str = "train") -> list[Source]:
    """Every source under ``src``, split by top-level split folders when there are any."""
    sources = []
    for split, root in _split_roots(src, default_split):
        found = _walk(root, root, split)
        names: dict[str, Source] = {}
        for s in found:
            if s.name in names:
                raise UserError(f"videos {names[s.name].rel!r} and {s.rel!r} in {root} both map "
                                f"to the name {s.name!r}; rename one")
            names[s.name] = s
        sources += sorted(found, key=lambda s: video_io.natural_key(Path(s.name)))
    if not sources and video_io.is_frame_folder(src):
        raise UserError(f"{src} holds frames itself, so it is one video: give the folder that "
                        f"holds it ({src.resolve().parent}) as the source")
    if not sources:
        raise UserError(f"no videos ({', '.join(sorted(video_io.VIDEO_EXTS)[:6])}, ...) or frame "
                        f"folders under {src}")
    return sources


def _split_roots(src: Path, default_split: str) -> list[tuple[str, Path]]:
    if not src.is_dir():
        raise UserError(f"source folder not found: {src}")
    if default_split not in ("train", "test", "val"):
        raise UserError(f"--split must be train, test or val, got {default_split!r}")
    split_dirs = [(SPLIT_DIRS[p.name.lower()], p) for p in sorted(src.iterdir())
                  if p.name.lower() in SPLIT_DIRS and _is_split_folder(p)]
    if not split_dirs:
        return [(default_split, src)]
    splits = [s for s, _ in split_dirs]
    twice = sorted(d.name for s, d in split_dirs if splits.count(s) > 1)
    if twice:
        raise UserError(f"{src}: two folders for the same split ({', '.join(twice)})")
    loose = [p.name for p in src.iterdir() if p not in {d for _, d in split_dirs}
             and (video_io.is_video_file(p) or video_io.is_frame_folder(p))]
    if loose:
        raise UserError(f"{src} has split folders and also loose videos "
                        f"({', '.join(sorted(loose)[:3])}); move them into a split folder")
    order = ("train", "test", "val")
    return sorted(split_dirs, key=lambda item: order.index(item[0]))


def _is_split_folder(path: Path) -> bool:
    """A top-level ``train``/``test``/... folder splits the source unless it holds frames and
    nothing else, which makes it one video: a stray image beside the split's videos must not
    turn the whole split into a one-frame video (the walk warns about the image instead)."""
    if not path.is_dir():
        return False
    if not video_io.is_frame_folder(path):
        return True
    return any(not video_io.is_hidden(q) and (video_io.is_video_file(q) or q.is_dir())
               for q in path.iterdir())


def _walk(folder: Path, root: Path, split: str, seen: set[Path] | None = None) -> list[Source]:
    # Symlinked folders are followed once: a link back up the tree (a loop) is skipped.
    seen = seen if seen is not None else {folder.resolve()}
    out = []
    for p in sorted(folder.iterdir()):
        if video_io.is_hidden(p):
            continue
        if p.is_symlink() and p.is_dir():
            real = p.resolve()
            if real in seen or real in folder.resolve().parents:
                continue
            seen.add(real)
        rel = p.relative_to(root).as_posix()
        if video_io.is_video_file(p):
            parts = [*p.relative_to(root).parent.parts, p.stem]
        elif video_io.is_frame_folder(p):
            parts = list(p.relative_to(root).parts)
            # Frames themselves are skipped by name: no stat per frame of a long video.
            _left_out(p, [q for q in p.iterdir() if not video_io.is_hidden(q)
                          and q.suffix.lower() not in video_io.IMAGE_EXTS
                          and (video_io.is_video_file(q) or q.is_dir())],
                      "a folder of frames is one video; the videos and folders inside it")
        elif p.is_dir():
            out += _walk(p, root, split, seen)
            continue
        else:
            continue
        name = safe_name("__".join(parts)) or "video"
        out.append(Source(split, name, p, rel))
    if out:
        _left_out(folder, video_io.frame_files(folder),
                  "a video's frames go in a folder of their own; the images beside videos")
    return out


def _left_out(folder: Path, paths: list[Path], what: str) -> None:
    """Says what the layout leaves out: an import that quietly drops files misleads."""
    if paths:
        names = sorted(p.name for p in paths)
        log.warning("%s: %s are not imported (%s%s)", folder, what, ", ".join(names[:3]),
                    ", ..." if len(names) > 3 else "")


# ------------------------------------------------------------------------------ labels


def read_labels(path: Path, sources: list[Source]) -> dict[tuple[str, str], object]:
    """(split, name) -> ranges (list of pairs), frame labels (list of 0/1) or a .npy Path."""
    if path.is_dir():
        entries = {p.stem: p for p in path.iterdir() if p.suffix == ".npy" and p.is_file()}
    elif path.is_file():
        entries = _json_labels(path)
    else:
        raise UserError(f"labels file not found: {path}")
    out = {}
    for key, value in entries.items():
        hits = [s for s in sources if key in s.aliases()]
        if not hits:
            raise UserError(f"{path}: labels for {key!r}, which is not a video under the source")
        if len(hits) > 1:
            raise UserError(f"{path}: {key!r} matches several videos "
                            f"({', '.join(h.split + '/' + h.name for h in hits)}); use split/name")
        hit = hits[0]
        if (hit.split, hit.name) in out:
            raise UserError(f"{path}: two entries for video {hit.split}/{hit.name}")
        out[(hit.split, hit.name)] = value
    return out


def _json_labels(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read labels JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: labels must be a JSON object mapping video -> labels")
    out = {}
    for key, value in data.items():
        if not isinstance(value, list):
            raise UserError(f"{path}: labels of {key!r} must be a list")
        if all(_is_int(v) for v in value) and value:
            if any(v not in (0, 1) for v in value):
                raise UserError(f"{path}: frame labels of {key!r} must be 0 or 1")
            out[key] = [int(v) for v in value]
        elif all(isinstance(r, list) and len(r) == 2 and all(map(_is_int, r)) for r in value):
            bad = [r for r in value if not 0 <= r[0] <= r[1]]
            if bad:
                raise UserError(f"{path}: abnormal range {bad[0]} of {key!r} must be "
                                "[first, last] with 0 <= first <= last")
            out[key] = [[int(a), int(b)] for a, b in value]
        else:
            raise UserError(f"{path}: labels of {key!r} must be [[first, last], ...] ranges "
                            "or one 0/1 value per frame")
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_with_label_list(path: str, size: tuple[int, int], labels: tuple[int, ...],
                         labels_file: str):
    """VideoSpec loader: frames plus ranges from a per-frame 0/1 list given in the labels JSON."""
    frames = video_io.load_source(path, size)
    video_io.check_label_count(labels_file, len(labels), path, len(frames))
    return frames, ranges_from_labels(np.asarray(labels, dtype=np.uint8))


def load_with_label_ranges(path: str, size: tuple[int, int], ranges: list[list[int]],
                           labels_file: str):
    """VideoSpec loader: frames plus [first, last] ranges from the labels JSON, checked
    against the decoded length here, where the labels file can still be named."""
    frames = video_io.load_source(path, size)
    last = max((r[1] for r in ranges), default=-1)
    if last >= len(frames):
        raise UserError(f"{labels_file}: abnormal frame {last} is past the end of {path} "
                        f"({len(frames)} frames, last index {len(frames) - 1})")
    return frames, ranges
