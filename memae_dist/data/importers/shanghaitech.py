"""ShanghaiTech Campus -> memae-dist dataset.

Accepted at the dataset folder or one folder below:

- the original release: training videos ``training/videos/SS_VVV.avi`` (or frame folders
  ``training/frames/SS_VVV/``), testing frame folders ``testing/frames/SS_VVVV/NNN.jpg`` and
  per-video frame labels ``testing/test_frame_mask/SS_VVVV.npy`` (one 0/1 value per frame);
- without ``test_frame_mask/``: one array of all test frame labels, videos concatenated in name
  order, as ``frame_labels_shanghai.npy`` / ``frame_labels_shanghaitech.npy`` at the root.

Video names are the release's names (``01_001``, ``01_0014``), which sort in scene order.
"""

from __future__ import annotations

import functools
from pathlib import Path

from memae_dist.data.importers import video_io
from memae_dist.data.importers.ucsd import npy_ranges
from memae_dist.data.storage import StorageConfig
from memae_dist.data.writer import VideoSpec, write_dataset
from memae_dist.errors import UserError

MASK_DIR = "test_frame_mask"
LABEL_FILES = ("frame_labels_shanghai.npy", "frame_labels_shanghaitech.npy")


def shanghaitech_videos(src: str | Path, size: tuple[int, int]) -> list[VideoSpec]:
    """Train and test VideoSpecs of ShanghaiTech found at ``src`` (or one folder below)."""
    root = _find_root(Path(src))
    size = (int(size[0]), int(size[1]))
    train = _train_sources(root / "training")
    test = _named_sources(root / "testing" / "frames", frames_only=True)
    specs = [VideoSpec("train", name, functools.partial(video_io.load_with_ranges, str(p), size,
                                                        None))
             for name, p in train]
    masks = root / "testing" / MASK_DIR
    if masks.is_dir():
        for name, folder in test:
            labels = masks / f"{name}.npy"
            if not labels.is_file():
                raise UserError(f"{masks}: no frame labels for test video {name} ({labels.name})")
            # Frame folders are counted cheaply, so a mismatch is reported before any decoding.
            n_labels = len(video_io.read_frame_labels(labels))
            with video_io.naming_broken_links([folder]):
                video_io.check_label_count(labels, n_labels, folder,
                                           video_io.count_source_frames(folder))
            specs.append(VideoSpec("test", name, functools.partial(
                video_io.load_with_frame_labels, str(folder), size, str(labels))))
        return specs
    label_file = next((root / f for f in LABEL_FILES if (root / f).is_file()), None)
    if label_file is None:
        raise UserError(
            f"no ShanghaiTech test labels in {root}: expected testing/{MASK_DIR}/ or "
            f"{' / '.join(LABEL_FILES)}"
        )
    counts = [video_io.count_source_frames(p) for _, p in test]
    with video_io.naming_broken_links([p for _, p in test]):
        ranges = npy_ranges(label_file, counts)
    return specs + video_io.labelled_specs("test", test, ranges, size)


def import_shanghaitech(src: str | Path, dst: str, size: tuple[int, int] = (256, 256),
                        workers: int | None = None, skip_bad: bool = False,
                        progress: bool = True, storage_cfg: StorageConfig | None = None) -> dict:
    """Import ShanghaiTech into ``dst``; returns the manifest."""
    videos = shanghaitech_videos(src, size)
    return write_dataset(videos, dst, tuple(size), name="shanghaitech", source="shanghaitech",
                         workers=workers, skip_bad=skip_bad, progress=progress,
                         storage_cfg=storage_cfg)


def _find_root(src: Path) -> Path:
    if not src.is_dir():
        raise UserError(f"ShanghaiTech source folder not found: {src}")
    children = sorted(p for p in src.iterdir() if p.is_dir() and not video_io.is_hidden(p))
    for cand in [src, *children]:
        if (cand / "training").is_dir() and (cand / "testing" / "frames").is_dir():
            return cand
    raise UserError(
        f"no ShanghaiTech dataset in {src}: expected training/videos/ (or training/frames/) "
        "and testing/frames/ there or one folder below"
    )


def _train_sources(training: Path) -> list[tuple[str, Path]]:
    for sub, frames_only in (("videos", False), ("frames", True)):
        if (training / sub).is_dir():
            return _named_sources(training / sub, frames_only)
    raise UserError(f"no training videos in {training}: expected videos/ or frames/")


def _named_sources(folder: Path, frames_only: bool) -> list[tuple[str, Path]]:
    """(name, path) of the videos or frame folders directly in ``folder``, sorted by name."""
    found = {}
    for p in folder.iterdir():
        if video_io.is_frame_folder(p) or (not frames_only and video_io.is_video_file(p)):
            name = p.stem if p.is_file() else p.name
            if name in found:
                raise UserError(f"{folder}: two sources named {name!r}")
            found[name] = p
    if not found:
        kind = "frame folders" if frames_only else "videos or frame folders"
        raise UserError(f"no {kind} in {folder}")
    return sorted(found.items())
