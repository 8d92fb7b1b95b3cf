"""`memae-dist prepare` on broken sources: one-line errors naming the file, or --skip-bad.

Every case runs the real CLI in a subprocess and checks that no manifest (no dataset a reader
would accept) is left behind when the import fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.faults.helpers import (
    assert_no_dataset,
    assert_user_error,
    frame,
    memae,
    write_frames,
    write_ucsd,
    write_video,
)

PREP = ("--size", "16", "16", "--workers", "1", "--no-progress")


def _truncated_mp4(folder: Path) -> str:
    path = write_video(folder / "cut.mp4", 30)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return "cut.mp4"


def _zero_length(folder: Path) -> str:
    (folder / "empty.avi").write_bytes(b"")
    return "empty.avi"


def _text_as_video(folder: Path) -> str:
    (folder / "notes.avi").write_text("meeting notes, not a video\n")
    return "notes.avi"


def _corrupt_jpeg(folder: Path) -> str:
    write_frames(folder / "cam2", 20, "jpg")
    (folder / "cam2" / "005.jpg").write_bytes(b"\xff\xd8garbage" * 20)
    return "cam2/005.jpg"


def _corrupt_tiff(folder: Path) -> str:
    write_frames(folder / "cam3", 20, "tif")
    (folder / "cam3" / "007.tif").write_bytes(b"II*\x00garbage" * 20)
    return "cam3/007.tif"


def _mixed_sizes(folder: Path) -> str:
    write_frames(folder / "cam4", 20)
    Image.fromarray(frame(3, 48, 48)).save(folder / "cam4" / "003.png")
    return "cam4/003.png"


BAD_SOURCES = {"truncated_mp4": _truncated_mp4, "zero_length_video": _zero_length,
               "text_named_avi": _text_as_video, "corrupt_jpeg": _corrupt_jpeg,
               "corrupt_tiff": _corrupt_tiff, "mixed_frame_sizes": _mixed_sizes}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_prepare_folder_bad_source_is_one_line_naming_the_file(tmp_path, case):
    src = tmp_path / "src"
    write_video(src / "good.avi", 20)
    bad = BAD_SOURCES[case](src)
    dst = tmp_path / "out"
    proc = memae("prepare", "folder", "--src", str(src), "--dst", str(dst), *PREP, cwd=tmp_path)
    assert_user_error(proc, bad)
    assert_no_dataset(dst)


def test_prepare_folder_skip_bad_lists_every_bad_source(tmp_path):
    src = tmp_path / "src"
    write_video(src / "good.avi", 20)
    bad = {make(src).split("/")[0].rsplit(".", 1)[0] for make in BAD_SOURCES.values()}
    dst = tmp_path / "out"
    proc = memae("prepare", "folder", "--src", str(src), "--dst", str(dst), "--skip-bad", *PREP,
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((dst / "manifest.json").read_text())
    assert [v["name"] for v in manifest["splits"]["train"]["videos"]] == ["good"]
    assert {s["video"] for s in manifest["skipped"]} == bad
    for item in manifest["skipped"]:
        assert item["split"] == "train" and item["video"] in item["reason"], item
        assert f"skipped train/{item['video']}:" in proc.stdout
    # Only the good video has a shard: nothing half-written for the skipped ones.
    assert sorted(p.name for p in (dst / "train").glob("*.parquet")) == ["good.parquet"]


def test_prepare_folder_skip_bad_with_nothing_good_is_an_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    bad = _text_as_video(src)
    dst = tmp_path / "out"
    proc = memae("prepare", "folder", "--src", str(src), "--dst", str(dst), "--skip-bad", *PREP,
                 cwd=tmp_path)
    assert_user_error(proc, "every video was skipped", bad)
    assert_no_dataset(dst)


@pytest.mark.parametrize(("layout", "message"), [
    ("missing", "source folder not found"),
    ("empty", "no videos"),
])
def test_prepare_folder_missing_or_empty_source(tmp_path, layout, message):
    src = tmp_path / "src"
    if layout == "empty":
        src.mkdir()
    dst = tmp_path / "out"
    proc = memae("prepare", "folder", "--src", str(src), "--dst", str(dst), *PREP, cwd=tmp_path)
    assert_user_error(proc, message, str(src))
    assert_no_dataset(dst)


@pytest.mark.parametrize(("layout", "names"), [
    ("missing", ["UCSD source folder not found"]),
    ("empty", ["no UCSD ped2 dataset in"]),
    ("label_length", ["frame_labels_ped2.npy", "19 frame labels", "20 frames"]),
    ("label_garbage", ["frame_labels_ped2.npy", "not a .npy array file"]),
    ("mat_truncated", ["ped2.mat", "cannot read variable 'gt'"]),
])
def test_prepare_ucsd_bad_layout_fails_before_any_work(tmp_path, layout, names):
    src = tmp_path / "ped2"
    if layout == "empty":
        src.mkdir()
    if layout == "label_length":
        write_ucsd(src, train=1, test=1, n=20)
        np.save(src / "frame_labels_ped2.npy", np.zeros((1, 19), np.int64))
    if layout == "label_garbage":
        write_ucsd(src, train=1, test=1, n=20)
        (src / "frame_labels_ped2.npy").write_bytes(b"not numpy" * 10)
    if layout == "mat_truncated":  # the .mat wins over the .npy when both are there
        write_ucsd(src, train=1, test=1, n=20)
        (src / "ped2.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    dst = tmp_path / "out"
    proc = memae("prepare", "ucsd-ped2", "--src", str(src), "--dst", str(dst), *PREP,
                 cwd=tmp_path)
    assert_user_error(proc, *names)
    assert_no_dataset(dst)


def test_prepare_ucsd_corrupt_frames_error_then_skip_bad(tmp_path):
    src = write_ucsd(tmp_path / "ped2", train=3, test=1, n=20)
    (src / "training" / "frames" / "02" / "004.jpg").write_bytes(b"\xff\xd8not a jpeg" * 20)
    tif = src / "training" / "frames" / "03"
    for p in tif.glob("*.jpg"):
        p.unlink()
    write_frames(tif, 20, "tif")
    (tif / "011.tif").write_bytes(b"MM\x00*broken tiff" * 20)
    dst = tmp_path / "out"
    proc = memae("prepare", "ucsd-ped2", "--src", str(src), "--dst", str(dst), *PREP,
                 cwd=tmp_path)
    assert_user_error(proc, "training/frames/0")
    assert_no_dataset(dst)
    proc = memae("prepare", "ucsd-ped2", "--src", str(src), "--dst", str(dst), "--skip-bad",
                 *PREP, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((dst / "manifest.json").read_text())
    assert [v["name"] for v in manifest["splits"]["train"]["videos"]] == ["01"]
    reasons = {s["video"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"02", "03"}
    assert "02/004.jpg" in reasons["02"] and "03/011.tif" in reasons["03"], reasons


def test_prepare_folder_odd_names_and_symlink_loop_work(tmp_path):
    """Spaces and non-UTF-8 bytes in names import fine; a symlink loop is not followed."""
    src = tmp_path / "src"
    write_video(src / "front door.avi", 20)
    raw = os.fsencode(src) + b"/cam\xff\xfe"  # not valid UTF-8
    os.makedirs(raw)
    for i in range(20):
        Image.fromarray(frame(i)).save(os.fsdecode(raw + b"/img %03d.png" % i))
    (src / "nested").mkdir()
    (src / "nested" / "up").symlink_to("..")  # a loop back to the source root
    dst = tmp_path / "out"
    proc = memae("prepare", "folder", "--src", str(src), "--dst", str(dst), *PREP, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((dst / "manifest.json").read_text())
    videos = manifest["splits"]["train"]["videos"]
    assert sorted(v["name"] for v in videos) == ["cam_", "front_door"], videos
    assert all(v["num_frames"] == 20 for v in videos)
    assert manifest["skipped"] == []
