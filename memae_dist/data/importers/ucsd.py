"""UCSD Anomaly Detection (Ped1 / Ped2) -> memae-dist dataset.

Two layouts are accepted, at the dataset folder or its parent:

- "frames" (MNAD / HF2-VAD code bases): ``training/frames/NN/NNN.jpg``,
  ``testing/frames/NN/NNN.jpg``; labels in ``<variant>.mat`` (variable ``gt``: one
  ``[first; last]`` 1-based inclusive column per range, one cell per test video) or in
  ``frame_labels_<variant>.npy`` (all test frames concatenated in video order).
- original UCSD: ``UCSDped2/Train/TrainNNN/NNN.tif`` and ``UCSDped2/Test/TestNNN/NNN.tif``
  (numbered from 001) with pixel masks ``Test/TestNNN_gt/NNN.bmp``; a frame is abnormal iff its
  mask has a non-zero pixel. Test videos without masks take their ranges from ``UCSDped2.m``.

Video names are the two-digit video numbers ("01", "02", ...) in both layouts, so the same
footage gives the same dataset whichever layout it came in.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from memae_dist.data.importers.video_io import (
    LabelCountError,
    is_broken_link,
    mixed_sizes,
    naming_broken_links,
    open_image,
    read_frame_labels,
)
from memae_dist.data.storage import StorageConfig
from memae_dist.data.writer import VideoSpec, ranges_from_labels, to_gray8, write_dataset
from memae_dist.errors import UserError

VARIANTS = ("ped1", "ped2")
_FRAME_EXT = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


def ucsd_videos(src: str | Path, variant: str = "ped2") -> list[VideoSpec]:
    """Train and test VideoSpecs of a UCSD variant found at ``src`` (or one folder below)."""
    if variant not in VARIANTS:
        raise UserError(f"UCSD variant must be one of {VARIANTS}, got {variant!r}")
    root, layout = _find_root(Path(src), variant)
    if layout == "frames":
        return _frames_layout(root, variant)
    return _original_layout(root, variant)


def import_ucsd(src: str | Path, dst: str, size: tuple[int, int] = (256, 256),
                variant: str = "ped2", workers: int | None = None, skip_bad: bool = False,
                progress: bool = True, storage_cfg: StorageConfig | None = None) -> dict:
    """Import a UCSD variant into ``dst``; returns the manifest."""
    videos = ucsd_videos(src, variant)
    return write_dataset(videos, dst, tuple(size), name=f"ucsd-{variant}",
                         source=f"ucsd-{variant}", workers=workers, skip_bad=skip_bad,
                         progress=progress, storage_cfg=storage_cfg)


# ------------------------------------------------------------------------------ layout search


def _find_root(src: Path, variant: str) -> tuple[Path, str]:
    if not src.is_dir():
        raise UserError(f"UCSD source folder not found: {src}")
    children = sorted(p for p in src.iterdir() if p.is_dir() and variant in p.name.lower())
    for cand in [src, *children]:
        if (cand / "training" / "frames").is_dir() and (cand / "testing" / "frames").is_dir():
            return cand, "frames"
        if (cand / "Train").is_dir() and (cand / "Test").is_dir():
            return cand, "original"
    raise UserError(
        f"no UCSD {variant} dataset in {src}: expected training/frames + testing/frames "
        f"(frames layout) or Train + Test (original UCSD{variant} layout) there or in a "
        f"sub-folder named like '{variant}'"
    )


def _frame_files(folder: Path) -> list[Path]:
    """Frame images sorted by their number (skips '._*' and other non-numbered files)."""
    # A broken link to a frame stays in the list, to fail when read: dropped, it would shift
    # the frames after it against their labels.
    files = [p for p in folder.iterdir() if p.suffix.lower() in _FRAME_EXT and p.stem.isdigit()
             and (p.is_file() or is_broken_link(p))]
    if not files:
        raise UserError(f"no numbered frame images in {folder}")
    return sorted(files, key=lambda p: int(p.stem))


def _numbered_dirs(folder: Path, pattern: str) -> list[tuple[str, Path]]:
    """(two-digit name, dir) for sub-folders matching ``pattern`` (one group: the number)."""
    found = []
    for p in folder.iterdir():
        m = re.fullmatch(pattern, p.name)
        if m and p.is_dir():
            found.append((f"{int(m.group(1)):02d}", p))
    if not found:
        raise UserError(f"no video folders in {folder}")
    return sorted(found, key=lambda item: int(item[0]))


# ------------------------------------------------------------------------------ frames layout


def _frames_layout(root: Path, variant: str) -> list[VideoSpec]:
    train = _numbered_dirs(root / "training" / "frames", r"(\d+)")
    test = _numbered_dirs(root / "testing" / "frames", r"(\d+)")
    counts = [len(_frame_files(d)) for _, d in test]
    with naming_broken_links([d for _, d in test], _frame_files):
        ranges = _frames_labels(root, variant, counts)
    specs = [VideoSpec("train", name, functools.partial(load_frames, str(d), None))
             for name, d in train]
    specs += [VideoSpec("test", name, functools.partial(load_frames, str(d), r))
              for (name, d), r in zip(test, ranges, strict=True)]
    return specs


def _frames_labels(root: Path, variant: str, counts: list[int]) -> list[list[list[int]]]:
    mat, npy = root / f"{variant}.mat", root / f"frame_labels_{variant}.npy"
    if mat.is_file():
        return mat_ranges(mat, counts)
    if npy.is_file():
        return npy_ranges(npy, counts)
    raise UserError(f"no test labels in {root}: expected {mat.name} or {npy.name}")


def mat_ranges(path: Path, counts: list[int | None]) -> list[list[list[int]]]:
    """Per test video, 0-based ranges from a ``gt`` cell of 1-based [first; last] columns.

    A count of None (a video that cannot be read, to be skipped) leaves its ranges unchecked.
    """
    import scipy.io

    try:
        gt = scipy.io.loadmat(str(path))["gt"]
    except (KeyError, ValueError, OSError, NotImplementedError,
            scipy.io.matlab.MatReadError) as exc:
        raise UserError(f"{path}: cannot read variable 'gt' ({exc})") from None
    cells = np.asarray(gt, dtype=object).ravel()
    if len(cells) != len(counts):
        raise UserError(f"{path}: gt has {len(cells)} entries for {len(counts)} test videos")
    out = []
    for i, (cell, n) in enumerate(zip(cells, counts, strict=True)):
        arr = _frame_numbers(cell, path, i)
        if arr.size == 0:
            out.append([])
            continue
        if arr.size % 2:
            raise UserError(f"{path}: gt entry {i + 1} is not [first; last] pairs")
        cols = arr.reshape(2, -1) if arr.ndim == 2 and arr.shape[0] == 2 else arr.reshape(-1, 2).T
        ranges = [[int(a) - 1, int(b) - 1] for a, b in zip(cols[0], cols[1], strict=True)]
        if n is not None:
            _check_ranges(ranges, n, path, i)
        out.append(ranges)
    return out


def _frame_numbers(cell, path: Path, index: int) -> np.ndarray:
    """A ``gt`` entry as int64 frame numbers; MATLAB stores them as doubles, so a fraction or a
    string there is a broken file, never something to round or parse."""
    arr = np.asarray(cell)
    if arr.size and arr.dtype.kind not in "iuf":
        kind = arr.dtype.kind
        got = (f"text {str(arr.reshape(-1)[0])[:20]!r}" if kind in "US"
               else "a nested cell" if kind == "O" else f"{arr.dtype} values")
        raise UserError(f"{path}: gt entry {index + 1} must hold frame numbers, not {got}")
    whole = np.isfinite(arr) & (arr == np.round(arr)) if arr.dtype.kind == "f" else True
    if not np.all(whole):
        bad = arr[~whole].reshape(-1)[0]
        raise UserError(f"{path}: gt entry {index + 1} holds {bad}, which is not a whole frame "
                        "number")
    return arr.astype(np.int64)


def npy_ranges(path: Path, counts: list[int]) -> list[list[list[int]]]:
    """Per test video, ranges from one array of frame labels (test videos concatenated)."""
    labels = read_frame_labels(path)  # 0/1 only: a 0.5 or a 255 is no label, not "abnormal"
    if len(labels) != sum(counts):
        raise LabelCountError(
            f"{path}: {len(labels)} frame labels, but the test videos have {sum(counts)} frames"
        )
    bounds = np.cumsum([0, *counts])
    return [ranges_from_labels(labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _check_ranges(ranges: list[list[int]], n: int, path: Path, index: int) -> None:
    for first, last in ranges:
        if first > last:
            raise UserError(f"{path}: range [{first + 1}, {last + 1}] of test video "
                            f"{index + 1} ends before it starts")
        if not 0 <= first <= last < n:
            raise LabelCountError(
                f"{path}: range [{first + 1}, {last + 1}] of test video {index + 1} is outside "
                f"its {n} frames (label length mismatch)"
            )


# ------------------------------------------------------------------------------ original layout


def _original_layout(root: Path, variant: str) -> list[VideoSpec]:
    train = _numbered_dirs(root / "Train", r"Train(\d+)")
    test = _numbered_dirs(root / "Test", r"Test(\d+)")
    m_file = root / f"UCSD{variant}.m"
    m_ranges = _m_file_ranges(m_file) if m_file.is_file() else None
    specs = [VideoSpec("train", name, functools.partial(load_frames, str(d), None))
             for name, d in train]
    for i, (name, d) in enumerate(test):
        masks = d.parent / f"{d.name}_gt"
        if masks.is_dir():
            load = functools.partial(load_frames_with_masks, str(d), str(masks))
        elif m_ranges is not None and i < len(m_ranges):
            load = functools.partial(load_frames_with_m_ranges, str(d), m_ranges[i],
                                     str(m_file), i)
        else:
            raise UserError(f"no labels for {d}: expected masks in {masks.name}/ or {m_file}")
        specs.append(VideoSpec("test", name, load))
    return specs


def _m_file_ranges(path: Path) -> list[list[list[int]]]:
    """0-based ranges from ``TestVideoFile{end+1}.gt_frame = [61:180, ...];`` lines."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    out = []
    for body in re.findall(r"gt_frame\s*=\s*\[([^\]]*)\]", text):
        pairs = re.findall(r"(\d+)\s*:\s*(\d+)", body)
        out.append([[int(a) - 1, int(b) - 1] for a, b in pairs])
    if not out:
        raise UserError(f"{path}: no 'gt_frame = [...]' entries found")
    return out


# ------------------------------------------------------------------------------ loaders (tasks)


def load_frames(folder: str, ranges: list[list[int]] | None):
    """Frames of one video folder as a list of (H0, W0) uint8 grayscale arrays, plus ranges."""
    return _read_frames(_frame_files(Path(folder))), ranges


def load_frames_with_m_ranges(folder: str, ranges: list[list[int]], m_file: str, index: int):
    """Frames plus ranges from the ``.m`` file, checked against the frames here, where the
    ``.m`` file can still be named (the writer's own check knows only the video)."""
    frames, _ = load_frames(folder, None)
    _check_ranges(ranges, len(frames), Path(m_file), index)
    return frames, ranges


def load_frames_with_masks(folder: str, mask_folder: str):
    """Frames plus ranges derived from per-frame masks (abnormal iff any non-zero pixel)."""
    files = _frame_files(Path(folder))
    masks = _frame_files(Path(mask_folder))
    if [int(p.stem) for p in masks] != [int(p.stem) for p in files]:
        raise UserError(
            f"{mask_folder}: {len(masks)} masks do not match the {len(files)} frames of "
            f"{folder} (label length mismatch)"
        )
    labels = np.array([_mask_is_set(p) for p in masks], dtype=np.uint8)
    return _read_frames(files), ranges_from_labels(labels)


def _mask_is_set(path: Path) -> bool:
    """Whether a mask image has a non-zero pixel, judged at the mask's own bit depth: a 16-bit
    mask of 1s would be all 0 once scaled to 8 bits."""
    with open_image(path) as img:
        one_band = len(img.getbands()) == 1 and img.mode != "P"  # P: indices, not levels
        return bool(np.asarray(img if one_band else img.convert("L")).any())


def _read_frames(files: list[Path]) -> list[np.ndarray]:
    """(H0, W0) uint8 frames, resized later by the writer; a frame of another size is named
    here, where its file is still known."""
    frames: list[np.ndarray] = []
    for path in files:
        frames.append(_read_gray(path))
        if frames[-1].shape != frames[0].shape:
            (h, w), (h0, w0) = frames[-1].shape, frames[0].shape
            raise mixed_sizes(path, (w, h), (w0, h0))
    return frames


def _read_gray(path: Path) -> np.ndarray:
    with open_image(path) as img:
        return np.asarray(to_gray8(img, str(path)))  # (H0, W0) uint8

