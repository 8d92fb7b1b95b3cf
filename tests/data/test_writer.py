import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memae_dist.data import storage
from memae_dist.data.manifest import load_manifest
from memae_dist.data.shards import read_video_frames, verify_shard
from memae_dist.data.writer import (
    VideoSpec,
    labels_from_ranges,
    to_gray8,
    to_gray_resized,
    write_dataset,
)
from memae_dist.errors import UserError
from tests.data.videos import write_frames16

SIZE = (16, 24)


def make_video(n: int, seed: int, rgb: bool = False, ranges=None):
    """A random (n, 20, 30[, 3]) uint8 video; module level so Ray can pickle it."""
    rng = np.random.default_rng(seed)
    shape = (n, 20, 30, 3) if rgb else (n, 20, 30)
    return rng.integers(0, 256, size=shape, dtype=np.uint8), ranges


def broken_video():
    raise OSError("disk says no")


def mixed_sizes():
    return [np.zeros((20, 30), np.uint8), np.zeros((10, 30), np.uint8)], None


def _specs(load_test=None):
    return [
        VideoSpec("train", "a", functools.partial(make_video, 40, 1)),
        VideoSpec("train", "b", functools.partial(make_video, 20, 2, True)),
        VideoSpec("test", "c", load_test or functools.partial(make_video, 30, 3, False,
                                                               [[20, 29], [2, 4]])),
    ]


def _expected(n, seed, rgb=False):
    frames, _ = make_video(n, seed, rgb)
    out = []
    for f in frames:  # the documented conversion: Pillow grayscale, then bilinear resize
        img = Image.fromarray(f).convert("L").resize(SIZE[::-1], Image.Resampling.BILINEAR)
        out.append(np.asarray(img))
    return np.stack(out)


def test_to_gray_resized_rejects_mixed_sizes():
    with pytest.raises(UserError, match=r"train/x has frames of mixed sizes: frame 1 is 10x30, "
                                        r"frame 0 is 20x30 \(height x width"):
        to_gray_resized(mixed_sizes()[0], SIZE, "train/x")


@pytest.mark.parametrize(("ext", "dtype", "mode"), [("tif", "<u2", "I;16"),
                                                    ("tif", ">u2", "I;16B"),
                                                    ("png", "<u2", "I;16"), ("pgm", "<u2", "I")])
def test_to_gray8_scales_16_bit_grey_by_its_range(tmp_path, ext, dtype, mode):
    values = [0, 257, 16384, 32768, 60000, 65535]
    folder = write_frames16(tmp_path / "f", values, ext, dtype=dtype)
    got = []
    for i in range(len(values)):
        with Image.open(folder / f"{i:03d}.{ext}") as img:
            assert img.mode == mode
            gray = to_gray8(img, "x")
            assert gray.mode == "L"
            got.append(np.unique(np.asarray(gray)).tolist())
    # value / 257, rounded: the same scale for every frame, never clipped to white.
    assert got == [[0], [1], [64], [128], [233], [255]]


def test_to_gray8_keeps_8_bit_and_refuses_float_pixels(tmp_path):
    frames, _ = make_video(2, 7, rgb=True)
    rgb = Image.fromarray(frames[0])
    np.testing.assert_array_equal(np.asarray(to_gray8(rgb, "x")), np.asarray(rgb.convert("L")))
    gray = Image.fromarray(frames[1][..., 0])
    assert to_gray8(gray, "x") is gray
    Image.fromarray(np.full((4, 6), 0.5, np.float32)).save(tmp_path / "f.tif")
    Image.fromarray(np.full((4, 6), 70000, np.int32)).save(tmp_path / "i.tif")
    for name, kind in (("f.tif", "float"), ("i.tif", "integer")):
        with Image.open(tmp_path / name) as img, pytest.raises(
                UserError, match=rf"image .*{name} has 32-bit {kind} pixels \(mode [FI]\)"):
            to_gray8(img, str(tmp_path / name))


def test_to_gray8_shows_transparent_pixels_on_white(tmp_path):
    """Black ink drawn in the alpha channel alone (as many icon and digit PNGs are) keeps its
    shape; dropping the alpha would store a black frame."""
    ink = np.zeros((4, 6), np.uint8)
    ink[1:3, 2:4] = 255  # opaque where the stroke is, transparent around it
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 3] = ink
    expected = 255 - ink  # black stroke on white
    for img in (Image.fromarray(rgba, "RGBA"), Image.fromarray(rgba[..., 2:], "LA")):
        img.save(tmp_path / "a.png")
        with Image.open(tmp_path / "a.png") as back:
            np.testing.assert_array_equal(np.asarray(to_gray8(back, "x")), expected)
    palette = Image.fromarray(ink, "L").convert("P")
    palette.save(tmp_path / "p.png", transparency=0)  # palette index 0 (black) transparent
    with Image.open(tmp_path / "p.png") as back:
        np.testing.assert_array_equal(np.asarray(to_gray8(back, "x")), np.maximum(ink, 255 - ink))
    opaque = np.dstack([np.full((4, 6, 3), 90, np.uint8), np.full((4, 6), 255, np.uint8)])
    assert np.asarray(to_gray8(Image.fromarray(opaque, "RGBA"), "x")).tolist() == [[90] * 6] * 4


def test_write_read_and_restart(tmp_path, ray_local):
    dst = str(tmp_path / "ds")
    manifest = write_dataset(_specs(), dst, SIZE, name="toy", source="unit", segment_frames=16,
                             progress=False)
    assert manifest == load_manifest(dst).to_dict()
    m = load_manifest(dst)
    assert m.size == SIZE and m.segment_frames == 16 and m.skipped == []
    assert [v.name for v in m.videos("train")] == ["a", "b"]
    test_video = m.videos("test")[0]
    assert test_video.abnormal == [[2, 4], [20, 29]]  # sorted, canonical
    for video, (n, seed, rgb) in zip(m.videos("train") + [test_video],
                                     [(40, 1, False), (20, 2, True), (30, 3, False)]):
        entry = m.shard_entry(video)
        fs, path = storage.pyarrow_fs(m.shard_uri(dst, video))
        verify_shard(fs, path, entry.bytes, entry.sha256)
        frames, labels = read_video_frames(m.shard_uri(dst, video))
        np.testing.assert_array_equal(frames, _expected(n, seed, rgb))
        np.testing.assert_array_equal(labels, m.frame_labels(video))
    assert json.loads((tmp_path / "ds" / "test" / "c.done.json").read_text())["shard"][
        "sha256"] == m.shard_entry(test_video).sha256

    # A rerun of the same import rewrites nothing.
    shards = sorted((tmp_path / "ds").glob("*/*.parquet"))
    before = [p.stat().st_mtime_ns for p in shards]
    again = write_dataset(_specs(), dst, SIZE, name="toy", source="unit", segment_frames=16,
                          progress=False)
    assert again == manifest
    assert [p.stat().st_mtime_ns for p in shards] == before

    # A shard damaged in place keeps its size; the rerun re-hashes it and imports that video
    # again, leaving the others alone.
    damaged = tmp_path / "ds" / "train" / "a.parquet"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    mtime = before[shards.index(damaged)]
    os.utime(damaged, ns=(mtime, mtime))  # as if untouched, to the eye of a size-and-date check
    assert write_dataset(_specs(), dst, SIZE, name="toy", source="unit", segment_frames=16,
                         progress=False) == manifest
    entry = m.shard_entry(m.videos("train")[0])
    verify_shard(*storage.pyarrow_fs(str(damaged)), entry.bytes, entry.sha256)
    np.testing.assert_array_equal(read_video_frames(str(damaged))[0], _expected(40, 1, False))
    after = [p.stat().st_mtime_ns for p in shards]
    assert [a == b for a, b in zip(after, before)] == [p != damaged for p in shards]

    # Different settings invalidate the markers: the failing loader now runs, and the stale
    # manifest is gone because shards were about to change.
    with pytest.raises(UserError, match="test/c") as err:
        write_dataset(_specs(load_test=functools.partial(make_video, 12, 9, False, [[5, 40]])),
                      dst, (8, 8), name="toy", source="unit", progress=False)
    assert "0 <= first <= last <= 11" in str(err.value)
    assert not (tmp_path / "ds" / "manifest.json").exists()


def load_npy(path: str):
    return np.load(path), None


def test_a_changed_source_is_imported_again_not_kept(tmp_path, ray_local):
    # Same names, same settings, other frames: another seed, or a file rewritten in place.
    source = tmp_path / "v.npy"
    np.save(source, make_video(24, 5)[0])
    dst = str(tmp_path / "ds")

    def specs(seed):
        return [VideoSpec("train", "a", functools.partial(make_video, 24, seed)),
                VideoSpec("test", "f", functools.partial(load_npy, str(source)))]

    first = write_dataset(specs(1), dst, SIZE, name="toy", source="unit", progress=False)
    np.save(source, make_video(24, 6)[0])
    os.utime(source, ns=(10**18, 10**18))  # a distinct mtime, however coarse the clock
    second = write_dataset(specs(2), dst, SIZE, name="toy", source="unit", progress=False)
    sha = {s["video"]: s["sha256"] for s in first["shards"]}
    assert all(s["sha256"] != sha[s["video"]] for s in second["shards"])
    m = load_manifest(dst)
    frames, _ = read_video_frames(m.shard_uri(dst, m.videos("train")[0]))
    np.testing.assert_array_equal(frames, _expected(24, 2))


def test_a_video_gone_from_the_source_leaves_no_file_behind(tmp_path, s3_bucket, caplog):
    # A benchmark's second copy without one training video (the store is the same dataset):
    # that video's shard and marker went unlisted and stayed, counted by nothing.
    for dst in (str(tmp_path / "ds"), s3_bucket):
        write_dataset(_specs(), dst, SIZE, name="toy", source="unit", workers=0,
                      progress=False)
        storage.write_bytes_atomic(storage.join(dst, "train", "notes.txt"), b"mine")
        with caplog.at_level("WARNING", logger="memae_dist.data.writer"):
            manifest = write_dataset([_specs()[0], _specs()[2]], dst, SIZE, name="toy",
                                     source="unit", workers=0, progress=False)
        assert [s["video"] for s in manifest["shards"]] == ["a", "c"]
        assert sorted(storage.file_sizes(dst)) == [
            "manifest.json", "test/c.done.json", "test/c.parquet", "train/a.done.json",
            "train/a.parquet", "train/notes.txt"]
        assert (f"{dst}: removed 2 file(s) of videos the dataset no longer holds: "
                "train/b.done.json, train/b.parquet") in caplog.text
        caplog.clear()


def test_one_import_at_a_time_and_a_killed_ones_temporaries_go(tmp_path, s3_bucket):
    """Two imports into one dataset each wrote a manifest of their own shards over the other's
    (`data verify`: 12 of 14 shards OK, both exited 0); a killed import's temporary files
    stayed for good."""
    from memae_dist.data.lock import RunLock

    dst = tmp_path / "ds"
    with RunLock(str(dst), None, 120.0, what="dataset"):  # another import, alive
        with pytest.raises(UserError, match=rf"^dataset {dst} is in use by another process "
                                            rf"\(host .*, pid {os.getpid()},.*expires in \d+ s$"):
            write_dataset(_specs(), str(dst), SIZE, name="toy", source="unit", workers=0,
                          progress=False)
        assert sorted(p.name for p in dst.iterdir()) == ["run.lock"]
    assert not dst.exists()
    write_dataset(_specs(), str(dst), SIZE, name="toy", source="unit", workers=0,
                  progress=False)
    cut_off = [dst / "train" / f".a.parquet.tmp-{'0f' * 16}",
               dst / f".manifest.json.tmp-{'1' * 32}"]
    mine = [dst / "train" / ".notes.tmp-1", dst / "notes.txt"]
    for path in cut_off + mine:
        path.write_bytes(b"x")
    write_dataset(_specs(), str(dst), SIZE, name="toy", source="unit", workers=0,
                  progress=False)
    assert not any(p.exists() for p in cut_off) and all(p.exists() for p in mine)
    assert not (dst / "run.lock").exists()
    # On S3 the lock is taken and given back as well.
    write_dataset(_specs(), s3_bucket, SIZE, name="toy", source="unit", workers=0,
                  progress=False)
    assert "run.lock" not in storage.file_sizes(s3_bucket)


def test_failure_writes_no_manifest_and_skip_bad_records_it(tmp_path, ray_local):
    dst = str(tmp_path / "ds")
    specs = _specs() + [VideoSpec("test", "mixed", mixed_sizes)]
    with pytest.raises(UserError, match="test/mixed.*mixed sizes"):
        write_dataset(specs, dst, SIZE, name="toy", source="unit", progress=False)
    assert not (tmp_path / "ds" / "manifest.json").exists()
    specs.append(VideoSpec("train", "broken", broken_video))
    manifest = write_dataset(specs, dst, SIZE, name="toy", source="unit", skip_bad=True,
                             progress=False)
    assert [(s["split"], s["video"]) for s in manifest["skipped"]] == [
        ("test", "mixed"), ("train", "broken")]
    assert "disk says no" in manifest["skipped"][1]["reason"]
    assert [v["name"] for v in manifest["splits"]["test"]["videos"]] == ["c"]
    assert load_manifest(dst).skipped == manifest["skipped"]


REPO = Path(__file__).resolve().parents[2]
IN_PROCESS = """
import sys
sys.modules["ray"] = None  # a machine without Ray: importing it fails
from memae_dist.data.writer import VideoSpec, write_dataset
from memae_dist.errors import UserError
from tests.data.test_writer import SIZE, _specs, mixed_sizes
write_dataset(_specs(), sys.argv[1], SIZE, name="toy", source="unit", workers=0,
              progress=False)
try:
    write_dataset(_specs() + [VideoSpec("test", "mixed", mixed_sizes)], sys.argv[2], SIZE,
                  name="toy", source="unit", workers=0, progress=False)
except UserError as exc:
    print(exc)
try:  # the default, Ray's tasks, says what to do instead
    write_dataset(_specs(), sys.argv[2] + "-ray", SIZE, name="toy", source="unit",
                  progress=False)
except UserError as exc:
    print(exc)
"""


def test_workers_0_writes_the_same_shards_in_this_process_without_ray(tmp_path, ray_local):
    write_dataset(_specs(), str(tmp_path / "ray"), SIZE, name="toy", source="unit",
                  progress=False)
    by_ray = load_manifest(str(tmp_path / "ray"))
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS, str(tmp_path / "here"),
                           str(tmp_path / "bad")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    here = load_manifest(str(tmp_path / "here"))
    assert [(s.path, s.sha256) for s in here.shards] == [
        (s.path, s.sha256) for s in by_ray.shards]
    assert here.splits == by_ray.splits
    # A video that cannot be imported stops it as it stops Ray's tasks: named, no manifest.
    assert "test/mixed" in proc.stdout and "mixed sizes" in proc.stdout
    assert proc.stdout.splitlines()[-1] == (
        "Ray cannot be imported here: pass --workers 0 to import the videos in this process")
    assert not (tmp_path / "bad" / "manifest.json").exists()


def test_invalid_arguments(tmp_path):
    with pytest.raises(UserError, match="duplicate video names: train/a"):
        write_dataset(_specs() + _specs()[:1], str(tmp_path), SIZE, name="x", source="y")
    with pytest.raises(UserError, match="segment_overlap"):
        write_dataset(_specs(), str(tmp_path), SIZE, name="x", source="y", segment_frames=15)
    with pytest.raises(UserError, match="safe as a file name"):
        VideoSpec("train", "../up", broken_video)
    with pytest.raises(UserError, match="split"):
        VideoSpec("validation", "a", broken_video)


def test_write_to_s3(s3_bucket, ray_local):
    specs = _specs()[:1]
    manifest = write_dataset(specs, s3_bucket, SIZE, name="toy", source="unit", progress=False)
    m = load_manifest(s3_bucket)
    assert m.to_dict() == manifest
    frames, _ = read_video_frames(m.shard_uri(s3_bucket, m.videos("train")[0]))
    np.testing.assert_array_equal(frames, _expected(40, 1))
    assert storage.listdir(storage.join(s3_bucket, "train")) == ["a.done.json", "a.parquet"]


@pytest.mark.parametrize("rng", [[-3, 5], [10, 5], [0, 40], [1]])
def test_abnormal_ranges_outside_the_video_name_it(rng):
    with pytest.raises(UserError, match=r"video test/v1: abnormal range .* <= last <= 39"):
        labels_from_ranges([rng], 40, "test/v1")
    assert labels_from_ranges([[0, 39]], 40, "test/v1").sum() == 40
