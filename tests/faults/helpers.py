"""Shared helpers of the fault-injection tests: the real CLI in a subprocess and tiny inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300  # a loaded shared machine: generous, but nothing may hang forever


def memae(*args: str, cwd: Path, env: dict | None = None, timeout: float = TIMEOUT):
    """``python -m memae_dist.cli ARGS`` with captured output (text)."""
    return subprocess.run(
        [sys.executable, "-m", "memae_dist.cli", *args], cwd=cwd, capture_output=True,
        text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def assert_user_error(proc, *names: str) -> str:
    """Exit code 2, no traceback, last stderr line ``memae-dist: error: ...`` naming ``names``."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # Exactly one error line (Ray may still log its own shutdown after it).
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("memae-dist: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    line = errors[0]
    for name in names:
        assert name in line, (name, line)
    return line


def assert_no_dataset(dst: Path) -> None:
    """Nothing a reader would take for a dataset: no manifest anywhere under ``dst``."""
    assert not list(dst.rglob("manifest.json")) if dst.exists() else True


def frame(i: int, height: int = 32, width: int = 32) -> np.ndarray:
    img = np.full((height, width), 40 + 3 * (i % 50), np.uint8)
    img[2:6, i % (width - 4) : i % (width - 4) + 4] = 255
    return img


def write_frames(folder: Path, n: int, ext: str = "png", size=(32, 32)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(frame(i, *size)).save(folder / f"{i:03d}.{ext}")
    return folder


def write_video(path: Path, n: int, size=(32, 32)) -> Path:
    """A small valid mpeg4 video (avi or mp4 by the suffix) of n frames."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            rgb = np.repeat(frame(i, *size)[..., None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_ucsd(root: Path, train: int = 2, test: int = 1, n: int = 20) -> Path:
    """A tiny UCSD Ped2 "frames" layout: jpg frames, frame_labels_ped2.npy for the test set."""
    for k in range(1, train + 1):
        write_frames(root / "training" / "frames" / f"{k:02d}", n, "jpg")
    for k in range(1, test + 1):
        write_frames(root / "testing" / "frames" / f"{k:02d}", n, "jpg")
    labels = np.zeros(test * n, np.int64)
    labels[n // 2 : n // 2 + 3] = 1
    np.save(root / "frame_labels_ped2.npy", labels[None])
    return root
