"""Small generated test videos (PyAV encoders) whose frames can be recognised after decoding.

Frame i of a video is a flat grey level ``level(i)`` with a small white square moving to the
right, so after a lossy round trip the mean of a decoded frame still identifies its index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# (codec, container extension, pixel format) combinations the tests use.
CODECS = {
    "mpeg4": ("avi", "yuv420p"),
    "libx264": ("mp4", "yuv420p"),
    "mjpeg": ("mkv", "yuvj420p"),
    "vp9": ("webm", "yuv420p"),
    "h264_mov": ("mov", "yuv420p"),
}


PERIOD = 40  # frames are recognisable modulo this


def level(i: int) -> int:
    """Grey level of frame i: a ramp 5 levels apart, far from clipping, repeating every PERIOD."""
    return 30 + 5 * (i % PERIOD)


def frame(i: int, height: int = 48, width: int = 64) -> np.ndarray:
    """(H, W) uint8 frame i."""
    img = np.full((height, width), level(i), np.uint8)
    x = (2 * i) % (width - 6)
    img[4:10, x : x + 6] = 255
    return img


def write_video(path: Path, n: int, codec: str = "mpeg4", height: int = 48, width: int = 64,
                rotation: int = 0, options: dict | None = None) -> Path:
    """Encode n frames; ``rotation`` sets the display matrix like a phone does; ``options``
    go to the muxer (``{"movflags": "faststart"}``: an MP4's index before its frames)."""
    import av

    encoder = "libx264" if codec == "h264_mov" else codec
    pix_fmt = CODECS[codec][1]
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(encoder, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.bit_rate = 4_000_000  # plenty for tiny frames: grey levels survive the codec
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(n):
            rgb = np.repeat(frame(i, height, width)[..., None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_path(folder: Path, stem: str, codec: str) -> Path:
    return folder / f"{stem}.{CODECS[codec][0]}"


def write_frames(folder: Path, n: int, ext: str = "png", start: int = 0,
                 pattern: str = "{:03d}") -> Path:
    """A frame folder of n images named by ``pattern`` from ``start``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(frame(i)).save(folder / f"{pattern.format(start + i)}.{ext}")
    return folder


def frame_indices(frames: np.ndarray) -> list[int]:
    """The index i (mod PERIOD) whose level(i) is nearest to each frame's background."""
    levels = np.array([level(i) for i in range(PERIOD)])
    out = []
    for f in frames:
        background = float(np.median(f))
        out.append(int(np.argmin(np.abs(levels - background))))
    return out


def write_frames16(folder: Path, values: list[int], ext: str = "tif", height: int = 48,
                   width: int = 64, dtype: str = "<u2") -> Path:
    """A frame folder of flat 16-bit grey frames, frame i at ``values[i]``: Pillow stores them
    as 16-bit TIFF / PNG / PGM (``dtype`` ">u2" gives a big-endian TIFF)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, value in enumerate(values):
        Image.fromarray(np.full((height, width), value, dtype)).save(folder / f"{i:03d}.{ext}")
    return folder


def sideways_jpeg(path, orientation: int = 6):
    """A 64x48 JPEG whose white square sits at the stored frame's top-left, tagged with an EXIF
    orientation: 6 = the camera was turned, viewers rotate it 90 degrees clockwise."""
    a = np.zeros((48, 64), np.uint8)
    a[:16, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, quality=95, exif=exif)
    return path
