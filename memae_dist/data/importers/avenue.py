"""CUHK Avenue -> memae-dist dataset.

Accepted at the dataset folder or one folder below (e.g. ``Avenue Dataset/``):

- the original release: ``training_videos/NN.avi`` and ``testing_videos/NN.avi``, with ground
  truth as per-video pixel-mask volumes ``testing_label_mask/N_label.mat`` (variable
  ``volLabel``: a cell of one mask per frame; a frame is abnormal iff any mask pixel is set),
  found at the root or one folder below (``ground_truth_demo/testing_label_mask``);
- the "frames" layout of the MNAD / HF2-VAD code bases: ``training/frames/NN/*.jpg`` and
  ``testing/frames/NN/*.jpg``.

Instead of masks, labels may come from ``frame_labels_avenue.npy`` (every test frame, videos
concatenated in order) or ``avenue.mat`` (variable ``gt`` of 1-based [first; last] ranges).
Video names are two-digit numbers ("01", ...) whichever layout the footage came in.
"""

from __future__ import annotations

import functools
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from memae_dist.data.importers import video_io
from memae_dist.data.importers.ucsd import mat_ranges, npy_ranges
from memae_dist.data.storage import StorageConfig
from memae_dist.data.writer import VideoSpec, ranges_from_labels, write_dataset
from memae_dist.errors import UserError

MASK_DIR = "testing_label_mask"
_MASK_FILE = re.compile(r"0*(\d+)_label\.mat", re.IGNORECASE)


def avenue_videos(src: str | Path, size: tuple[int, int], workers: int | None = None,
                  skip_bad: bool = False) -> list[VideoSpec]:
    """Train and test VideoSpecs of the Avenue dataset found at ``src`` (or one folder below).

    With ``skip_bad``, a test video that cannot be read while the label files are matched to
    the videos gets a VideoSpec that fails, so the writer skips it and lists it.
    """
    root, (train_dir, test_dir) = _find_root(Path(src))
    train = _numbered_sources(train_dir)
    test = _numbered_sources(test_dir)
    size = (int(size[0]), int(size[1]))
    specs = [VideoSpec("train", name, functools.partial(video_io.load_with_ranges, str(p), size,
                                                        None))
             for name, p in train]
    masks = _mask_dir(root)
    if masks is not None:
        files = _mask_files(masks, [name for name, _ in test])
        specs += [VideoSpec("test", name, functools.partial(load_with_mask_volume, str(p), size,
                                                            str(files[name])))
                  for name, p in test]
        return specs
    ranges, bad = _label_file_ranges(root, test, workers, skip_bad)
    for i, (name, p) in enumerate(test):
        load = (functools.partial(fail_to_load, str(p), str(bad[i])) if i in bad
                else functools.partial(video_io.load_with_ranges, str(p), size, ranges[i]))
        specs.append(VideoSpec("test", name, load))
    return specs


def import_avenue(src: str | Path, dst: str, size: tuple[int, int] = (256, 256),
                  workers: int | None = None, skip_bad: bool = False,
                  progress: bool = True, storage_cfg: StorageConfig | None = None) -> dict:
    """Import Avenue into ``dst``; returns the manifest."""
    videos = avenue_videos(src, size, workers, skip_bad)
    return write_dataset(videos, dst, tuple(size), name="avenue", source="avenue",
                         workers=workers, skip_bad=skip_bad, progress=progress,
                         storage_cfg=storage_cfg)


# ------------------------------------------------------------------------------ layout search


def _find_root(src: Path) -> tuple[Path, tuple[Path, Path]]:
    if not src.is_dir():
        raise UserError(f"Avenue source folder not found: {src}")
    children = sorted(p for p in src.iterdir() if p.is_dir() and not video_io.is_hidden(p))
    for cand in [src, *children]:
        for train, test in (("training_videos", "testing_videos"),
                            ("training/frames", "testing/frames")):
            if (cand / train).is_dir() and (cand / test).is_dir():
                return cand, (cand / train, cand / test)
    raise UserError(
        f"no Avenue dataset in {src}: expected training_videos/ + testing_videos/ (original "
        "release) or training/frames/ + testing/frames/ there or one folder below"
    )


def _numbered_sources(folder: Path) -> list[tuple[str, Path]]:
    """(two-digit name, path) of the numbered videos (``NN.avi``) or frame folders (``NN/``)."""
    found: dict[str, Path] = {}
    for p in folder.iterdir():
        if not (p.stem.isdigit() and (video_io.is_video_file(p) or video_io.is_frame_folder(p))):
            continue
        name = f"{int(p.stem):02d}"
        if name in found:
            raise UserError(f"{folder}: two sources for video {name}: {found[name].name}, {p.name}")
        found[name] = p
    if not found:
        raise UserError(f"no numbered videos (NN.avi) or frame folders (NN/) in {folder}")
    return sorted(found.items(), key=lambda item: int(item[0]))


def _mask_dir(root: Path) -> Path | None:
    for cand in [root / MASK_DIR, *sorted(root.glob(f"*/{MASK_DIR}"))]:
        if cand.is_dir():
            return cand
    return None


def _mask_files(folder: Path, names: list[str]) -> dict[str, Path]:
    files = {}
    for p in folder.iterdir():
        m = _MASK_FILE.fullmatch(p.name)
        if m and not video_io.is_hidden(p):
            files[f"{int(m.group(1)):02d}"] = p
    missing = [n for n in names if n not in files]
    if missing:
        raise UserError(
            f"{folder}: no mask volume for test video(s) {', '.join(missing[:5])} "
            f"(expected files like {int(missing[0])}_label.mat)"
        )
    return files


def _label_file_ranges(root: Path, test: list[tuple[str, Path]], workers: int | None,
                       skip_bad: bool) -> tuple[list, dict[int, UserError]]:
    """Per test video, its ranges from the label file; and, with ``skip_bad``, the videos
    that cannot be read (by index, with their error), whose ranges are left unchecked."""
    npy, mat = root / "frame_labels_avenue.npy", root / "avenue.mat"
    if not (npy.is_file() or mat.is_file()):
        raise UserError(
            f"no Avenue test labels in {root}: expected {MASK_DIR}/ (mask volumes), "
            f"{npy.name} or {mat.name}"
        )
    # The label files cover all test frames at once: every video's length must be known.
    with ThreadPoolExecutor(max_workers=workers or 4) as pool:
        counts = list(pool.map(_count_or_error, [p for _, p in test]))
    bad = {i: c for i, c in enumerate(counts) if isinstance(c, UserError)}
    if bad and not skip_bad:
        raise next(iter(bad.values()))
    with video_io.naming_broken_links([p for _, p in test]):
        return _placed_ranges(npy, mat, test, counts, bad), bad


def _placed_ranges(npy: Path, mat: Path, test: list[tuple[str, Path]], counts: list,
                   bad: dict[int, UserError]) -> list:
    if not npy.is_file():
        return mat_ranges(mat, [None if i in bad else c for i, c in enumerate(counts)])
    if len(bad) > 1:
        names = ", ".join(test[i][0] for i in bad)
        raise UserError(
            f"{npy}: test videos {names} cannot be read, and this file holds all test frames' "
            "labels back to back: with more than one video's length unknown, the labels of "
            "the others cannot be placed, so --skip-bad cannot skip them; fix or replace "
            f"those videos (the first: {next(iter(bad.values()))})"
        )
    if bad:
        # The one unreadable video's length is what the other videos leave of the labels.
        known = sum(c for c in counts if not isinstance(c, UserError))
        counts[next(iter(bad))] = max(0, len(video_io.load_label_array(npy)) - known)
    return npy_ranges(npy, counts)


def _count_or_error(path: Path) -> int | UserError:
    try:
        return video_io.count_source_frames(path)
    except UserError as exc:
        return exc


# ------------------------------------------------------------------------------ loaders (tasks)


def read_mask_volume(path: str | Path) -> np.ndarray:
    """(N,) uint8 frame labels from an Avenue ``volLabel`` cell of per-frame pixel masks."""
    import scipy.io

    try:
        vol = scipy.io.loadmat(str(path), variable_names=["volLabel"])["volLabel"]
    except NotImplementedError:
        raise UserError(f"{path}: MATLAB v7.3 files are not supported; re-save with -v7") from None
    except (KeyError, ValueError, OSError, TypeError, scipy.io.matlab.MatReadError) as exc:
        raise UserError(f"{path}: cannot read variable 'volLabel' ({exc})") from None
    cells = np.asarray(vol, dtype=object).ravel()
    return np.array([np.asarray(mask).any() for mask in cells], dtype=np.uint8)


def fail_to_load(path: str, reason: str):
    """VideoSpec loader of a video found unreadable while its labels were matched: fails with
    that reason in its task, where the writer reports it or (``--skip-bad``) skips it."""
    raise UserError(reason)


def load_with_mask_volume(path: str, size: tuple[int, int], mask_file: str):
    """VideoSpec loader: frames plus ranges derived from the video's mask volume."""
    frames = video_io.load_source(path, size)
    labels = read_mask_volume(mask_file)
    video_io.check_label_count(mask_file, len(labels), path, len(frames))
    return frames, ranges_from_labels(labels)
