"""A folder of still images -> memae-dist dataset, for MemAE's 2D image net (28x28, the paper's
MNIST net), stored in the same frame store as the video sets.

Layout: the MVTec AD / anomalib "folder" convention::

    SRC/train/            normal images: loose, or in sub-folders (train/good/); all normal
    SRC/test/<class>/     one folder per class: good/ or normal/ (any case) hold normal images,
                          every other folder (abnormal/, broken_large/, 7/) holds anomalies
    SRC/val/<class>/      optional, as test/

``training``/``testing``/``validation`` work too. Images directly in test/ or val/ (no class
folder) are refused: their label is unknown. Other top-level folders (MVTec's ground_truth/)
and files that are not images are ignored; so are hidden files. A multi-frame file (GIF, TIFF)
gives its first frame.

Storage: the images of one class folder, in natural name order (``img2`` before ``img10``), are
cut into groups of at most ``IMAGES_PER_GROUP`` (1024); each group is one "video" of the store,
named ``<class>-<k>`` (``good-0000``, ``good-0001``, ...; loose train images make the class
``train``). Frame i of group k is image ``k * 1024 + i`` of its class folder, so a frame maps
back to its file by listing the folder in that order. A test/val group of an anomaly class is
abnormal in every frame, one of a normal class in none; train groups are unlabelled, as the
training videos of the other importers. Frames are stored like every importer's: upright (EXIF
orientation applied), grayscale (16-bit grey scaled, not clipped), then a bilinear resize to
``size`` (default 28x28).

An unreadable image (truncated, not an image, a decompression bomb, a broken link) stops the
import naming the file; with ``skip_bad`` only that image is left out, listed in the manifest's
``skipped``, and left out of the numbering above too: the frames of a group are then its
readable images, in the same order.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memae_dist.data.importers import video_io
from memae_dist.data.importers.folder import SPLIT_DIRS, safe_name
from memae_dist.data.storage import StorageConfig
from memae_dist.data.writer import VideoSpec, write_dataset
from memae_dist.errors import UserError

IMAGE_EXTS = video_io.IMAGE_EXTS | {".gif", ".ppm"}
NORMAL_CLASSES = frozenset({"good", "normal"})
IMAGES_PER_GROUP = 1024
# Images are scored one by one (no clip windows, overlap 0); a segment is only a read unit.
SEGMENT_FRAMES = 256
LAYOUT = "train/[good/]*.png, test/<class>/*.png, optional val/<class>/"
# Pillow's ways to fail on a damaged file beyond OSError (video_io.open_image covers that).
_DECODE_ERRORS = (ValueError, EOFError, SyntaxError, struct.error)


@dataclass(frozen=True)
class ImageClass:
    split: str
    name: str  # class folder name made safe as a file name
    files: tuple[Path, ...]  # natural name order
    anomalous: bool | None  # None: train (unlabelled)


def import_images(src: str | Path, dst: str, size: tuple[int, int] = (28, 28), *,
                  workers: int | None = None, skip_bad: bool = False, progress: bool = True,
                  storage_cfg: StorageConfig | None = None) -> dict:
    """Import a train/test[/val] folder of images into ``dst``; returns the manifest."""
    specs = image_groups(src, size)
    name = safe_name(Path(src).resolve().name) or "images"
    return write_dataset(specs, dst, tuple(size), name=name, source="images", workers=workers,
                         segment_frames=SEGMENT_FRAMES, segment_overlap=0, skip_bad=skip_bad,
                         progress=progress, storage_cfg=storage_cfg, content="images")


def image_groups(src: str | Path, size: tuple[int, int]) -> list[VideoSpec]:
    """One VideoSpec per group of at most IMAGES_PER_GROUP images of a class folder."""
    size = (int(size[0]), int(size[1]))
    specs = []
    for cls in discover_images(Path(src)):
        for k, start in enumerate(range(0, len(cls.files), IMAGES_PER_GROUP)):
            # The paths themselves, not the folder: the origin digest then covers exactly the
            # files this group reads, and a changed image redoes only its group.
            paths = tuple(str(p) for p in cls.files[start : start + IMAGES_PER_GROUP])
            load = functools.partial(load_images, paths, size, cls.anomalous)
            specs.append(VideoSpec(cls.split, f"{cls.name}-{k:04d}", load))
    return specs


# ------------------------------------------------------------------------------ discovery


def discover_images(src: Path) -> list[ImageClass]:
    """The class folders with images under ``src``, train first."""
    classes = []
    for split, folder in _split_dirs(src):
        found = _classes(split, folder)
        names = [c.name for c in found]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UserError(f"{folder}: several classes map to the name {dupes[0]!r} (names are "
                            "made safe as file names, loose train images are 'train'); "
                            "rename one")
        classes += found
    if not any(c.split == "train" for c in classes):
        raise UserError(f"no training images under {src} (expected {LAYOUT})")
    return classes


def is_image_file(path: Path) -> bool:
    # A broken link named like an image is a lost image, not litter: kept, it fails when read.
    return (path.suffix.lower() in IMAGE_EXTS and not video_io.is_hidden(path)
            and (path.is_file() or video_io.is_broken_link(path)))


def image_files(folder: Path) -> list[Path]:
    """The images directly in ``folder``, in natural name order."""
    return sorted((p for p in _entries(folder) if is_image_file(p)),
                  key=lambda p: (video_io.natural_key(p), p.name))


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise UserError(f"cannot list folder {folder}: {exc.strerror or exc}") from None


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_dir() and not video_io.is_hidden(p)]


def _split_dirs(src: Path) -> list[tuple[str, Path]]:
    if not src.is_dir():
        raise UserError(f"image folder not found: {src}")
    found: dict[str, Path] = {}
    for p in _subfolders(src):
        split = SPLIT_DIRS.get(p.name.lower())
        if split is None:
            continue
        if split in found:
            raise UserError(f"{src}: two folders for the {split} split ({found[split].name}, "
                            f"{p.name})")
        found[split] = p
    loose = image_files(src)
    if loose:
        raise UserError(f"{loose[0]}: images outside the split folders have no split; move them "
                        f"into train/ or test/<class>/ (expected {LAYOUT})")
    if "train" not in found:
        raise UserError(f"no train/ folder in {src} (expected {LAYOUT})")
    return [(s, found[s]) for s in ("train", "test", "val") if s in found]


def _classes(split: str, folder: Path) -> list[ImageClass]:
    loose = image_files(folder)
    if loose and split != "train":
        raise UserError(f"{loose[0]}: images directly in {folder} have no label; put them in a "
                        "class folder (good/ or normal/ for normal images, any other name for "
                        "anomalies)")
    classes = [ImageClass(split, "train", tuple(loose), None)] if loose else []
    for sub in sorted(_subfolders(folder), key=lambda p: (video_io.natural_key(p), p.name)):
        nested = _subfolders(sub)
        if nested:  # read or not, a nested folder's images would be guessed at
            raise UserError(f"{nested[0]}: a class folder holds images, not folders (expected "
                            f"{LAYOUT})")
        files = image_files(sub)
        if files:
            anomalous = None if split == "train" else sub.name.lower() not in NORMAL_CLASSES
            classes.append(ImageClass(split, safe_name(sub.name) or "class", tuple(files),
                                      anomalous))
    return classes


# ------------------------------------------------------------------------------ loading


def load_images(paths: tuple[str, ...], size: tuple[int, int], anomalous: bool | None):
    """VideoSpec loader of one group: (N, H, W) uint8 frames of its readable images, their
    abnormal ranges (None for train) and the reasons for the images it could not read."""
    frames, dropped = [], []
    for path in paths:
        try:
            frames.append(read_image(Path(path), size))
        except UserError as exc:
            dropped.append(str(exc))
    out = np.stack(frames) if frames else np.empty((0, *size), dtype=np.uint8)
    if anomalous is None:
        ranges = None
    else:
        ranges = [[0, len(frames) - 1]] if anomalous and frames else []
    return out, ranges, dropped


def read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8: the image in grey at ``size``; any failure is one line naming the file."""
    try:
        with video_io.open_image(path) as img:
            return video_io.gray_resized(img, size, str(path))
    except _DECODE_ERRORS as exc:
        raise UserError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
