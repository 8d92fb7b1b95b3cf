"""Reading video sources for the importers: video files (any codec FFmpeg decodes, via PyAV)
and folders of frame images, converted on the fly to grayscale frames of the target size.

Frames are converted one at a time while decoding, so a video is held at its stored size,
never at the camera's resolution (and a video file's frames on temporary disk, not in memory:
``decode_video``). Conversion matches ``writer.to_gray_resized``: upright
(a video's display rotation, an image's EXIF orientation), then grayscale (``writer.to_gray8``:
16-bit grey scaled, not clipped), then a Pillow bilinear (antialiased) resize. Frame counts
always come from decoding: container headers often lie (variable frame rate, packed B-frames,
truncated files).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from memae_dist.data.writer import to_gray8
from memae_dist.errors import ScratchSpaceError, UserError

VIDEO_EXTS = frozenset({
    ".avi", ".mp4", ".m4v", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
    ".wmv", ".asf", ".flv", ".3gp", ".ogv", ".dav", ".h264", ".h265", ".hevc",
})
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm"})
_DIGITS = re.compile(r"(\d+)")
# Ways Pillow fails on an image it cannot read. A decompression bomb (an image too large to
# decode safely) is no OSError; its warning is an error too where warnings are made errors.
IMAGE_ERRORS = (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def is_hidden(path: Path) -> bool:
    """Dot files and macOS '._*' litter: never videos, never frames."""
    return path.name.startswith(".")


def is_broken_link(path: Path) -> bool:
    """A symbolic link whose target is gone (or a link loop)."""
    return path.is_symlink() and not path.exists()


def broken_link_reason(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"broken symbolic link (its target {target} does not exist)"


class LabelCountError(UserError):
    """Frame labels and frames that do not count the same."""


@contextlib.contextmanager
def naming_broken_links(folders, list_frames=None):
    """A frame-label count that does not match, raised inside, names the broken links counted
    as frames of these folders (video files are passed over): a frame that went missing, or a
    stray link, is the likelier fault than the label file the count error names."""
    try:
        yield
    except LabelCountError as exc:
        list_frames = list_frames or frame_files
        links = [f for folder in map(Path, folders) if folder.is_dir()
                 for f in list_frames(folder) if is_broken_link(f)]
        if not links:
            raise
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        raise UserError(f"{exc}, counting {links[0]}{more}, a {broken_link_reason(links[0])}: "
                        "restore its target or remove the link") from None


def _is_file_or_broken_link(path: Path) -> bool:
    # A broken link named like a video or frame is a source that went missing, not litter:
    # kept, it fails when read (an error, or a skipped video with --skip-bad); dropped, it
    # would lose a video, or shift a frame folder's frames against their labels, silently.
    return path.is_file() or is_broken_link(path)


def is_video_file(path: Path) -> bool:
    return (path.suffix.lower() in VIDEO_EXTS and not is_hidden(path)
            and _is_file_or_broken_link(path))


def natural_key(path: Path) -> tuple:
    """Sort key ordering 'img2' before 'img10' (numbers compared as numbers)."""
    parts = _DIGITS.split(path.stem.lower())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p)


def frame_files(folder: Path) -> list[Path]:
    """Frame images of a folder in frame order (numbers in the names compared numerically)."""
    try:
        files = [p for p in folder.iterdir()
                 if p.suffix.lower() in IMAGE_EXTS and not is_hidden(p)
                 and _is_file_or_broken_link(p)]
    except OSError as exc:
        raise UserError(f"cannot list frame folder {folder}: {exc.strerror or exc}") from None
    return sorted(files, key=natural_key)


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and not is_hidden(path) and bool(frame_files(path))


@contextlib.contextmanager
def open_image(path: Path):
    """``Image.open`` as a context, upright, with any way of failing to read the image (also
    while decoding it inside the block) turned into one ``cannot read image PATH`` error.

    Upright: an EXIF orientation (a phone or camera JPEG stored sideways) is applied, so the
    frame is stored as every viewer shows it. In place, because a copy would lose the file's
    format, which ``writer.to_gray8`` needs for 16-bit PNGs."""
    if is_broken_link(path):
        raise UserError(f"cannot read image {path}: {broken_link_reason(path)}")
    try:
        with Image.open(path) as img:
            ImageOps.exif_transpose(img, in_place=True)
            yield img
    except IMAGE_ERRORS as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def gray_resized(img: Image.Image, size: tuple[int, int], where: str) -> np.ndarray:
    """(H, W) uint8 from a Pillow image: grayscale (``writer.to_gray8``), then bilinear resize
    to ``size`` = (H, W); ``where`` names the image in errors."""
    img = to_gray8(img, where)
    height, width = size
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img)


# ------------------------------------------------------------------------------ video files


def _open(path: Path):
    import av

    if is_broken_link(path):
        raise UserError(f"cannot open video {path}: {broken_link_reason(path)}")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        # strerror: FFmpeg's words without its error number and the path again.
        raise UserError(f"cannot open video {path}: {exc.strerror or exc}") from None
    # Cover art and thumbnails are video streams too (one still picture): never the footage.
    stills = av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails
    streams = [s for s in container.streams.video if not (s.disposition & stills)]
    if not streams:
        container.close()
        raise UserError(f"{path} has no video stream")
    stream = streams[0]
    # Slice threads only: with frame threads the H.264 decoder conceals the damage at a cut-off
    # end or in the middle of a file instead of reporting it. (No slower where measured: 640x480
    # H.264 to 64x64, 350-430 frames/s either way on 2 cores; an import decodes one video per
    # core anyway.)
    stream.thread_type = "SLICE"
    return container, stream


def iter_video_frames(path: str | Path):
    """Yield decoded ``av.VideoFrame``s of the first video stream.

    Packets the decoder rejects before the first frame (a stream cut between key frames) are
    passed over, as the ``ffmpeg`` tool and players do: no frame is numbered yet. One rejected
    after it means frames lost in the middle or at a cut-off end, the later ones numbered as if
    none were: labels and alarms would point at the wrong frames, so that is an error naming
    the file. (Damage the decoder conceals, or a demuxer skips without a word, goes unseen: a
    container's declared frame count is no test, as edit lists, variable frame rates and
    start offsets make healthy files fall short of it.)
    """
    import av

    path = Path(path)
    container, stream = _open(path)
    decoded, end = 0, None
    try:
        for packet in container.demux(stream):
            try:
                for frame in packet.decode():  # an empty packet at the end flushes the decoder
                    decoded += 1
                    end = _frame_end(frame, stream)
                    yield frame
            except av.error.InvalidDataError as exc:
                if decoded:
                    raise damaged_video(path, decoded, exc) from None
        check_not_cut_short(path, container, stream, end)
    except av.error.FFmpegError as exc:
        raise UserError(f"cannot decode video {path}: {exc}") from None
    finally:
        container.close()


def damaged_video(path: Path, decoded: int, exc: Exception) -> UserError:
    why = getattr(exc, "strerror", None) or exc
    return UserError(f"cannot read video {path}: damaged data after frame {decoded - 1} ({why}): "
                     "the file is damaged or cut short there, and any frames after the damage "
                     "would be numbered wrongly against labels and time: repair or re-encode "
                     "it, or leave it out")


def _frame_seconds(stream) -> float:
    rate = stream.average_rate or stream.base_rate
    return 1 / float(rate) if rate else 0.0


def _frame_end(frame, stream) -> float | None:
    """When the frame stops being shown: its own duration where the file gives one (the last
    frame of a variable-rate recording may stay seconds), else the average frame's."""
    if frame.time is None:
        return None
    if frame.duration and frame.time_base:
        return frame.time + float(frame.duration * frame.time_base)
    return frame.time + _frame_seconds(stream)


def check_not_cut_short(path: Path, container, stream, end: float | None) -> None:
    """Refuses a video whose decoded frames stop well before the end its container declares.

    A file cut off at a packet boundary decodes without an error: only the duration written
    in its header tells. The stream's own duration is used, else the container's when the
    video is its only stream (an audio track may run longer). Healthy files end within a
    frame of it; the slack (3 frames, at least 0.25 s) is for containers that round."""
    if end is None:
        return
    if stream.duration is not None and stream.time_base is not None:
        declared = float((stream.start_time or 0) + stream.duration) * float(stream.time_base)
    elif container.duration and len(container.streams) == 1:
        # Matroska counts it from zero, not from the first frame: a lower bound of the end.
        declared = container.duration / 1e6
    else:
        return
    slack = max(3 * _frame_seconds(stream), 0.25)
    if declared - end > slack:
        raise UserError(f"cannot read video {path}: cut short: its frames end at {end:.2f} s, "
                        f"but the file declares {declared:.2f} s; remux or re-encode it to "
                        "keep the frames it has, or leave it out")


def count_frames(path: str | Path) -> int:
    """Number of frames FFmpeg decodes from the video (no conversion, no resize)."""
    return sum(1 for _ in iter_video_frames(path))


def decode_video(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) uint8 grayscale frames of the video at ``size``, displayed upright.

    Phones store portrait footage sideways with a rotation in the display matrix; like the
    ``ffmpeg`` tool, the frame is turned the way a player shows it before it is resized.

    The frames are spooled to an unlinked temporary file as they are decoded and come back
    memory-mapped from it (read-only): an hour of footage takes its stored size in temporary
    disk, paged in as the shard writer reads it, not in memory. Gone with the array, or with
    the process if it is killed.
    """
    first, n = None, 0  # first: (W0, H0) of frame 0, as decoded
    spool = _scratch(path, tempfile.TemporaryFile, prefix="memae-frames-")
    try:
        for frame in iter_video_frames(path):
            first = first or (frame.width, frame.height)
            if (frame.width, frame.height) != first:  # joined recordings: each part stretched
                raise UserError(f"video {path}: frame {n} is {frame.width}x{frame.height}, "
                                f"but the frames before it are {first[0]}x{first[1]} (width x "
                                "height): mixed frame sizes; re-encode it at one size or "
                                "split it")
            gray = frame.to_ndarray(format="gray")  # (H0, W0) uint8, full-range luma
            turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
            if turns:
                gray = np.ascontiguousarray(np.rot90(gray, turns))
            converted = gray_resized(Image.fromarray(gray), size, str(path))  # (H, W)
            _scratch(path, spool.write, converted.tobytes())
            n += 1
        if not n:
            raise UserError(f"video {path} has no decodable frames")
        _scratch(path, spool.flush)
        # The map holds its own descriptor: closing the spool leaves the frames readable.
        return np.memmap(spool, dtype=np.uint8, mode="r", shape=(n, *size))  # (N, H, W)
    finally:
        # After a failed write, closing retries the buffered rest: that second error must not
        # hide the first (a full temporary disk, or a bad video). After the flush it has none.
        with contextlib.suppress(OSError):
            spool.close()


def _scratch(path: Path, call, *args, **kwargs):
    """``call`` on the temporary file of a video's frames; a full or unwritable temporary
    folder is said as such (never a bad video that --skip-bad would leave out)."""
    try:
        return call(*args, **kwargs)
    except OSError as exc:
        raise ScratchSpaceError(
            f"cannot hold the frames of video {path} in the temporary folder "
            f"{tempfile.gettempdir()} ({exc.strerror or exc}): an import needs room there for "
            "a video's stored frames (N x H x W bytes); free some, or set TMPDIR to a folder "
            "on a disk with room") from None


# ------------------------------------------------------------------------------ frame folders


def load_frame_folder(folder: str | Path, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) uint8 grayscale frames of a folder of images at ``size``."""
    files = frame_files(Path(folder))
    if not files:
        raise UserError(f"no frame images in {folder}")
    out = np.empty((len(files), *size), dtype=np.uint8)  # (N, H, W)
    first = None  # (W, H) of frame 0: a camera's frames share one size
    for i, path in enumerate(files):
        with open_image(path) as img:
            first = first or img.size
            if img.size != first:
                raise mixed_sizes(path, img.size, first)
            out[i] = gray_resized(img, size, str(path))
    return out


def mixed_sizes(path: Path, size: tuple[int, int], first: tuple[int, int]) -> UserError:
    """A frame whose (width, height) differs from the first frame's of its folder."""
    return UserError(f"image {path} is {size[0]}x{size[1]}, but the other frames of "
                     f"{path.parent} are {first[0]}x{first[1]} (width x height): mixed frame "
                     "sizes")


# ------------------------------------------------------------------------------ either kind


def count_source_frames(path: str | Path) -> int:
    """Frames of a video file (by decoding) or a frame folder (by counting its images)."""
    path = Path(path)
    return len(frame_files(path)) if path.is_dir() else count_frames(path)


def load_source(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) uint8 frames of a video file or a frame folder."""
    path = Path(path)
    return load_frame_folder(path, size) if path.is_dir() else decode_video(path, size)


def load_with_ranges(path: str, size: tuple[int, int], ranges: list[list[int]] | None):
    """VideoSpec loader: frames plus abnormal ranges known in advance (or None)."""
    return load_source(path, size), ranges


def labelled_specs(split: str, sources, ranges, size: tuple[int, int]) -> list:
    """VideoSpecs for ``(name, path)`` sources whose abnormal ranges are already known."""
    from memae_dist.data.writer import VideoSpec

    return [VideoSpec(split, name, functools.partial(load_with_ranges, str(p), size, r))
            for (name, p), r in zip(sources, ranges, strict=True)]


def load_with_frame_labels(path: str, size: tuple[int, int], labels_file: str):
    """VideoSpec loader: frames plus ranges from a per-video ``.npy`` of 0/1 frame labels."""
    from memae_dist.data.writer import ranges_from_labels

    frames = load_source(path, size)
    labels = read_frame_labels(labels_file)
    check_label_count(labels_file, len(labels), path, len(frames))
    return frames, ranges_from_labels(labels)


def load_label_array(path: str | Path) -> np.ndarray:
    """A ``.npy`` of frame labels, flattened; never unpickles (a label file is not code)."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        reason = "not a .npy array file" if "pickle" in str(exc) else str(exc)
        raise UserError(f"{path}: cannot read frame labels ({reason})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read frame labels ({exc})") from None
    # One value per frame: (N,), or a row or column of them; a grid is no frame order.
    if array.ndim > 2 or (array.ndim == 2 and 1 not in array.shape):
        raise UserError(f"{path}: frame labels must be one value per frame, shape (N,), "
                        f"got {array.shape}")
    return array.reshape(-1)


def read_frame_labels(path: str | Path) -> np.ndarray:
    """(N,) 0/1 labels from a ``.npy`` file holding one value per frame."""
    labels = load_label_array(path)
    if labels.dtype.kind not in "biuf":
        raise UserError(f"{path}: frame labels must be numbers, got {labels.dtype}")
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:  # as the JSON form: a 0.5, a -1 or a NaN is no label, not "abnormal"
        raise UserError(f"{path}: frame labels must be 0 or 1, got {labels[bad[0]]} at frame "
                        f"{bad[0]}")
    return labels.astype(np.uint8)


def check_label_count(labels_file, n_labels: int, video, n_frames: int) -> None:
    if n_labels != n_frames:
        raise LabelCountError(
            f"{labels_file}: {n_labels} frame labels, but {video} has {n_frames} frames "
            "(label length mismatch)"
        )
