"""Memory of importing one long video, against the size of its stored frames.

For each --frames count, encodes one H.264 video (160x120: noise and a moving square, PyAV)
and imports it with `memae-dist prepare folder --workers 0` in a fresh process (the import runs
there, no Ray), sampling that process's memory every 20 ms from /proc: the peak of its
anonymous memory (what the kernel cannot drop or page back from a file) and of its whole
resident set (which also counts file pages mapped while reading, reclaimable at will). The
growth is each peak minus the peak of a 16-frame import in the same run, the baseline; the
table gives it per stored frame and as a ratio to the frames' size (N x H x W bytes).

Usage: python bench/import_memory.py [--frames 2000 8000 20000] [--size 64] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import sys, threading, time
from memae_dist.cli import main
peak = {"RssAnon": 0, "VmRSS": 0}
def sample():
    while True:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in peak:
                    peak[key] = max(peak[key], int(value.split()[0]))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
code = main(sys.argv[1:])
time.sleep(0.05)
print("PEAK", peak["RssAnon"], peak["VmRSS"], code)
"""


def write_video(path: Path, frames: int) -> None:
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(frames):
            img = base.copy()
            x = (3 * i) % 150
            img[50:60, x : x + 10] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def import_peak(video: Path, size: int, dst: Path) -> tuple[int, int]:
    """(anonymous, resident) peak in KiB of one `prepare folder` of ``video``'s folder."""
    args = ["prepare", "folder", "--src", str(video.parent), "--dst", str(dst), "--size",
            str(size), str(size), "--workers", "0", "--no-progress"]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          check=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("PEAK")][-1].split()
    if line[3] != "0":
        raise SystemExit(f"prepare failed: {done.stderr[-2000:]}")
    return int(line[1]), int(line[2])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[2000, 8000, 20000])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames in [16, *args.frames]:
            folder = Path(tmp) / f"v{frames}"
            folder.mkdir()
            write_video(folder / "cam.mp4", frames)
            anon, rss = import_peak(folder / "cam.mp4", args.size, Path(tmp) / f"s{frames}")
            rows.append({"frames": frames, "anon_kib": anon, "rss_kib": rss})
    base = rows[0]
    print(f"size {args.size}x{args.size}; baseline (16 frames): anonymous "
          f"{base['anon_kib'] / 1024:.0f} MiB, resident {base['rss_kib'] / 1024:.0f} MiB")
    print("| frames | stored frames (MiB) | anonymous growth (MiB) | per frame (KiB) | "
          "x frames' size | resident growth (MiB) |")
    print("|---|---|---|---|---|---|")
    for row in rows[1:]:
        stored = row["frames"] * args.size * args.size / 1024  # KiB
        anon = row["anon_kib"] - base["anon_kib"]
        row.update(stored_kib=stored, anon_growth_kib=anon,
                   rss_growth_kib=row["rss_kib"] - base["rss_kib"])
        print(f"| {row['frames']} | {stored / 1024:.1f} | {anon / 1024:.0f} | "
              f"{anon / row['frames']:.1f} | {anon / stored:.2f} | "
              f"{row['rss_growth_kib'] / 1024:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
