"""The ``folder`` importer: any videos (several codecs) or frame folders, optional labels."""

import json
import logging
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from memae_dist.cli import main
from memae_dist.data.importers import video_io
from memae_dist.data.importers.folder import discover, folder_videos
from memae_dist.data.manifest import load_manifest
from memae_dist.data.shards import read_video_frames
from memae_dist.errors import UserError
from tests.data.videos import (
    frame,
    frame_indices,
    sideways_jpeg,
    video_path,
    write_frames,
    write_frames16,
    write_video,
)

SIZE = (32, 32)


@pytest.fixture
def cameras(tmp_path):
    """train/: three codecs, a nested video, a frame folder; test/: two more codecs."""
    src = tmp_path / "cameras"
    (src / "train" / "site A" / "day2").mkdir(parents=True)
    (src / "test").mkdir(parents=True)
    write_video(video_path(src / "train", "cam 1", "mpeg4"), 33, "mpeg4")
    write_video(video_path(src / "train", "cam2", "libx264"), 37, "libx264")  # B-frames
    write_video(video_path(src / "train" / "site A" / "day2", "clip", "vp9"), 20, "vp9")
    write_frames(src / "train" / "seq", 12, pattern="img{}")  # img2 must sort before img10
    write_video(video_path(src / "test", "door", "mjpeg"), 30, "mjpeg")
    write_video(video_path(src / "test", "hall", "h264_mov"), 25, "h264_mov")
    (src / "train" / "._cam2.mp4").write_bytes(b"\0" * 10)  # macOS litter: ignored
    (src / "train" / "notes.txt").write_text("not a video")
    return src


def _labels(tmp_path, data) -> str:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_discovery_decoding_and_labels(cameras, tmp_path):
    sources = discover(cameras)
    assert [(s.split, s.name) for s in sources] == [
        ("train", "cam2"), ("train", "cam_1"), ("train", "seq"),
        ("train", "site_A__day2__clip"), ("test", "door"), ("test", "hall")]
    # Labels by dataset name, by file name with split, and as one 0/1 value per frame.
    hall = [0] * 10 + [1] * 5 + [0] * 10
    labels = _labels(tmp_path, {"door": [[3, 7], [20, 29]], "test/hall.mov": hall})
    specs = folder_videos(cameras, SIZE, labels)
    expected = {"cam2": 37, "cam_1": 33, "seq": 12, "site_A__day2__clip": 20, "door": 30,
                "hall": 25}
    for spec, source in zip(specs, sources, strict=True):
        frames, ranges = spec.load()
        n = expected[spec.name]
        # Frame counts equal what FFmpeg decodes and what was encoded; order is preserved.
        assert frames.shape == (n, *SIZE) and frames.dtype == np.uint8
        assert video_io.count_source_frames(source.path) == n
        assert frame_indices(frames) == list(range(n)), spec.name
        assert ranges == {"door": [[3, 7], [20, 29]], "hall": [[10, 14]]}.get(spec.name), spec.name


def test_folder_errors_name_the_problem(cameras, tmp_path):
    with pytest.raises(UserError, match=r"no labels for 1 test/val video\(s\): test/hall"):
        folder_videos(cameras, SIZE, _labels(tmp_path, {"door": []}))
    with pytest.raises(UserError, match="'gate', which is not a video"):
        folder_videos(cameras, SIZE, _labels(tmp_path, {"door": [], "hall": [], "gate": []}))
    with pytest.raises(UserError, match=r"must be \[\[first, last\], \.\.\.\] ranges"):
        folder_videos(cameras, SIZE, _labels(tmp_path, {"door": [[1, 2, 3]], "hall": []}))
    with pytest.raises(UserError, match=r"labels\.json: abnormal range \[10, 5\] of 'door'"):
        folder_videos(cameras, SIZE, _labels(tmp_path, {"door": [[10, 5]], "hall": []}))
    spec = folder_videos(cameras, SIZE, _labels(tmp_path, {"door": [0, 1], "hall": []}))[4]
    with pytest.raises(UserError, match=r"2 frame labels, but .*door\.mkv has 30 frames"):
        spec.load()
    spec = folder_videos(cameras, SIZE, _labels(tmp_path, {"door": [[3, 30]], "hall": []}))[4]
    with pytest.raises(UserError, match=r"labels\.json: abnormal frame 30 is past the end "
                                        r"of .*door\.mkv \(30 frames"):
        spec.load()
    write_video(cameras / "loose.avi", 3)
    with pytest.raises(UserError, match="loose videos.*loose.avi"):
        discover(cameras)
    (cameras / "loose.avi").unlink()
    write_frames(cameras / "train" / "cam_1", 3)  # same name as "cam 1.avi" once made safe
    with pytest.raises(UserError, match="both map to the name 'cam_1'"):
        discover(cameras)
    (cameras / "bad.mp4").write_bytes(b"this is not a video")
    with pytest.raises(UserError, match=r"cannot open video .*bad\.mp4"):
        video_io.decode_video(cameras / "bad.mp4", SIZE)
    with pytest.raises(UserError, match="no videos"):
        discover(_empty(tmp_path))


def test_what_the_layout_leaves_out_is_said(tmp_path, caplog):
    """A folder of frames is one video; frames beside videos are no video: both are named."""
    src = tmp_path / "cams"
    src.mkdir()
    write_video(video_path(src, "door", "mpeg4"), 3, "mpeg4")
    write_frames(src, 2, pattern="loose{}")
    seq = write_frames(src / "seq", 3)
    write_video(video_path(seq, "inner", "mpeg4"), 3, "mpeg4")
    with caplog.at_level(logging.WARNING, "memae_dist.data"):
        assert [s.name for s in discover(src)] == ["door", "seq"]
    assert (f"{src}: a video's frames go in a folder of their own; the images beside videos "
            "are not imported (loose0.png, loose1.png)") in caplog.text
    assert (f"{seq}: a folder of frames is one video; the videos and folders inside it are not "
            "imported (inner.avi)") in caplog.text
    # A stray image in a split folder is named and left out; the split's videos stay a split.
    split = tmp_path / "split"
    for name in ("train", "test"):
        (split / name).mkdir(parents=True)
    write_video(video_path(split / "train", "a", "mpeg4"), 3, "mpeg4")
    write_frames(split / "train", 1, pattern="thumb{}")
    write_video(video_path(split / "test", "b", "mpeg4"), 3, "mpeg4")
    with caplog.at_level(logging.WARNING, "memae_dist.data"):
        assert [(s.split, s.name) for s in discover(split)] == [("train", "a"), ("test", "b")]
    assert (f"{split / 'train'}: a video's frames go in a folder of their own; the images beside "
            "videos are not imported (thumb0.png)") in caplog.text
    # A split-named folder of frames and nothing else is still one video of that name.
    only = tmp_path / "only"
    write_frames(only / "train", 3)
    assert [(s.split, s.name) for s in discover(only, "test")] == [("test", "train")]
    (split / "training").mkdir()
    with pytest.raises(UserError, match=r"two folders for the same split \(train, training\)"):
        discover(split)
    # Given a frame folder itself, the import names the folder to give instead.
    with pytest.raises(UserError, match=rf"{tmp_path / 'one'} holds frames itself, so it is one "
                                        rf"video: give the folder that holds it \({tmp_path}\)"):
        discover(write_frames(tmp_path / "one", 3))


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_phone_rotation_is_applied(tmp_path):
    """A portrait phone clip is stored sideways with a display rotation; we decode it upright."""
    path = write_video(tmp_path / "phone.mp4", 4, "libx264", height=48, width=64, rotation=90)
    frames = video_io.decode_video(path, (64, 48))  # (N, H=64, W=48): portrait
    # The white square sits at the top-left of the stored frame; turned 90 degrees
    # counter-clockwise it lands at the bottom-left.
    rows, cols = np.nonzero(frames[0] > 200)
    assert rows.min() > 48 and cols.max() < 16


def test_exif_orientation_of_frame_images_is_applied(tmp_path):
    """Frames are stored upright, as every viewer shows them: a frame folder of JPEGs with
    orientation 6 becomes portrait, the square at the top-right."""
    for i in range(3):
        sideways_jpeg(tmp_path / "seq" / f"{i:03d}.jpg")
    frames = video_io.load_frame_folder(tmp_path / "seq", (64, 48))  # (N, H=64, W=48)
    rows, cols = np.nonzero(frames[0] > 200)
    assert rows.max() < 16 and cols.min() >= 32


def test_import_to_store_skips_bad_videos_and_restarts(cameras, tmp_path, ray_local, capsys):
    (cameras / "train" / "broken.avi").write_bytes(b"RIFF but not really an AVI file")
    labels = _labels(tmp_path, {"door": [[3, 7]], "hall": []})
    dst = str(tmp_path / "store")
    argv = ["prepare", "folder", "--src", str(cameras), "--dst", dst, "--size", "32", "32",
            "--labels", labels, "--workers", "2", "--skip-bad", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "train: 4 videos, 102 frames, 0 abnormal" in out
    assert "test: 2 videos, 55 frames, 5 abnormal" in out
    assert "skipped train/broken: cannot open video" in out
    m = load_manifest(dst)
    assert m.source == "folder" and m.name == "cameras" and m.size == SIZE
    assert [s["video"] for s in m.skipped] == ["broken"]
    door = m.videos("test")[0]
    frames, labels_ = read_video_frames(m.shard_uri(dst, door))
    assert frame_indices(frames) == list(range(30))
    assert np.flatnonzero(labels_).tolist() == [3, 4, 5, 6, 7]
    # A rerun finds every finished shard and decodes nothing new.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*.parquet")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*.parquet")} == before
    # Without --skip-bad the broken file stops the import with a one-line error.
    assert main([*argv[:-2], "--no-progress"]) == 2
    assert "cannot open video" in capsys.readouterr().err


LEVELS16 = [0, 16384, 32768, 65535]  # 16-bit grey levels, stored as 0, 64, 128, 255


def test_16_bit_frames_keep_their_brightness(tmp_path, ray_local, capsys):
    src = tmp_path / "src"
    write_frames16(src / "tif16", LEVELS16, "tif")
    write_frames16(src / "tif16be", LEVELS16, "tif", dtype=">u2")
    write_frames16(src / "png16", LEVELS16, "png")
    write_frames16(src / "pgm16", LEVELS16, "pgm")  # Pillow opens 16-bit PGM as mode "I"
    write_frames(src / "seq8", 6)
    dst = str(tmp_path / "store")
    assert main(["prepare", "folder", "--src", str(src), "--dst", dst, "--size", "32", "32",
                 "--no-progress"]) == 0
    m = load_manifest(dst)
    assert sorted(v.name for v in m.videos("train")) == [
        "pgm16", "png16", "seq8", "tif16", "tif16be"]
    for video in m.videos("train"):
        frames, _ = read_video_frames(m.shard_uri(dst, video))
        if video.name == "seq8":  # 8-bit frames are stored as before
            assert frame_indices(frames) == list(range(6))
            expected = np.asarray(Image.open(src / "seq8" / "003.png").convert("L")
                                  .resize((32, 32), Image.Resampling.BILINEAR))
            np.testing.assert_array_equal(frames[3], expected)
        else:  # one scale (value / 257) for every frame: relative brightness kept
            assert [float(f.mean()) for f in frames] == [0, 64, 128, 255], video.name


def test_a_decompression_bomb_is_an_unreadable_image(tmp_path, monkeypatch):
    """Pillow refuses images over its pixel limit with an error that is no OSError; the limit
    is lowered here so that a small real image trips it."""
    folder = write_frames(tmp_path / "seq", 3)  # 64x48 = 3072 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over twice the limit: an error
    with pytest.raises(UserError, match=r"cannot read image .*000\.png: .*decompression bomb"):
        video_io.load_frame_folder(folder, SIZE)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # over the limit: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(UserError, match=r"cannot read image .*000\.png: .*decompression"):
            video_io.load_frame_folder(folder, SIZE)


def test_a_video_damaged_in_the_middle_or_cut_short_is_refused_not_renumbered(tmp_path,
                                                                              capsys):
    # FFmpeg decodes such files to fewer frames, numbered as if none were lost: every label
    # and alarm after the gap would point at the wrong frame.
    src = tmp_path / "src"
    src.mkdir()
    data = bytearray(write_video(tmp_path / "whole.avi", 30, "mjpeg").read_bytes())
    (src / "good.avi").write_bytes(bytes(data))
    (src / "cut.avi").write_bytes(bytes(data[: len(data) * 2 // 3]))
    middle = len(data) // 2
    data[middle:middle + 3000] = bytes((b * 7 + 13) % 256 for b in data[middle:middle + 3000])
    (src / "mid.avi").write_bytes(bytes(data))
    for name in ("cut", "mid"):
        with pytest.raises(UserError, match=rf"cannot read video .*{name}\.avi: damaged data "
                                            r"after frame \d+ \(.*\): the file is damaged or "
                                            r"cut short"):
            video_io.decode_video(src / f"{name}.avi", SIZE)
    assert video_io.decode_video(src / "good.avi", SIZE).shape == (30, *SIZE)
    argv = ["prepare", "folder", "--src", str(src), "--dst", str(tmp_path / "store"),
            "--size", "32", "32", "--workers", "0", "--no-progress"]
    assert main(argv) == 2
    assert "cannot read video" in capsys.readouterr().err
    assert not (tmp_path / "store" / "manifest.json").exists()
    assert main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped train/cut: cannot read video" in out and "skipped train/mid:" in out
    [video] = load_manifest(str(tmp_path / "store")).videos("train")
    assert (video.name, video.num_frames) == ("good", 30)


def test_h264_webm_and_matroska_files_cut_short_are_refused_too(tmp_path):
    """Cut at a packet boundary, these decode without an error (and H.264 with frame threads
    conceals a cut mid-packet): the container's declared length tells."""
    cases = {"h264.mkv": ("libx264", None, "cut short: its frames end at"),
             "vp9.webm": ("vp9", None, "cut short: its frames end at"),
             "h264.mp4": ("libx264", {"movflags": "faststart"}, "damaged data after frame")}
    for name, (codec, options, why) in cases.items():
        whole = write_video(tmp_path / name, 60, codec, options=options)
        assert video_io.decode_video(whole, SIZE).shape == (60, *SIZE)
        data = whole.read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) * 9 // 10])
        with pytest.raises(UserError, match=rf"cannot read video .*cut_{name}: {why}"):
            video_io.decode_video(cut, SIZE)


def test_a_long_video_is_held_on_disk_not_in_memory(tmp_path, monkeypatch):
    """Decoded frames go to an unlinked temporary file and come back mapped from it, and the
    writer takes them as they are: an hour of footage does not have to fit in memory
    (bench/import_memory.py measures it)."""
    import tempfile

    from memae_dist.data.writer import to_gray_resized

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    frames = video_io.decode_video(write_video(tmp_path / "v.mp4", 30, "libx264"), SIZE)
    assert isinstance(frames, np.memmap) and frames.shape == (30, *SIZE)
    assert list(spool.iterdir()) == []  # no name: gone with the array, or a killed process
    assert to_gray_resized(frames, SIZE, "v") is frames
    assert abs(float(frames[29].mean()) - float(frames[0].mean())) > 50  # frames 0 and 29 differ


def test_a_last_frame_shown_for_seconds_is_no_cut(tmp_path):
    """A variable-rate recording (a screen capture, a motion-triggered camera) may hold its
    last frame for seconds: its declared length runs to that frame's end, and it is whole."""
    import fractions

    import av

    path = tmp_path / "held.mp4"
    tb = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = tb
        packets = []
        for i in range(30):
            rgb = np.repeat(frame(i)[..., None], 3, axis=2)
            image = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            image.pts, image.time_base = 40 * i, tb
            packets += stream.encode(image)
        packets += stream.encode()
        last = max(packets, key=lambda p: p.pts)
        for packet in packets:
            packet.duration = 3000 if packet is last else 40
            container.mux(packet)
    assert video_io.decode_video(path, SIZE).shape == (30, *SIZE)


@pytest.mark.parametrize("scratch", ["missing", "full"])
def test_no_room_for_the_frames_is_said_and_skips_no_video(tmp_path, monkeypatch, capsys,
                                                           scratch):
    """A full temporary disk is this machine's problem, not the footage's: --skip-bad must not
    leave the video out as if it were damaged. On a full one (/dev/full: every write that
    reaches it fails for want of space) the spool's close retried the write and its OSError
    hid the one that says so."""
    import tempfile

    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "cam.mp4", 20)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no_such_folder"))
    if scratch == "full":
        monkeypatch.setattr(tempfile, "TemporaryFile", lambda **_: open("/dev/full", "w+b"))
    argv = ["prepare", "folder", "--src", str(src), "--dst", str(tmp_path / "store"),
            "--size", "32", "32", "--workers", "0", "--no-progress", "--skip-bad"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"memae-dist: error: cannot hold the frames of video {src}/cam.mp4 "
                          f"in the temporary folder {tmp_path}/no_such_folder (")
    assert "set TMPDIR" in err
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_a_video_whose_frame_size_changes_is_refused(tmp_path):
    """Recordings joined byte for byte (MPEG-TS segments of a recorder) can change size."""
    parts = [write_video(tmp_path / f"{i}.ts", 20, "libx264", height=h, width=w).read_bytes()
             for i, (h, w) in enumerate([(48, 64), (64, 96)])]
    (tmp_path / "joined.ts").write_bytes(b"".join(parts))
    with pytest.raises(UserError, match=r"joined\.ts: frame 20 is 96x64, but the frames before "
                                        r"it are 64x48 .*mixed frame sizes"):
        video_io.decode_video(tmp_path / "joined.ts", SIZE)


def test_broken_links_are_bad_sources_not_ignored(tmp_path, ray_local, capsys):
    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "cam.avi", 5)
    os.symlink("/nonexistent/x.avi", src / "gone.avi")
    write_frames(src / "seq", 5)
    (src / "seq" / "002.png").unlink()
    os.symlink(tmp_path / "moved" / "002.png", src / "seq" / "002.png")
    assert [s.name for s in discover(src)] == ["cam", "gone", "seq"]
    specs = {spec.name: spec for spec in folder_videos(src, SIZE)}
    with pytest.raises(UserError, match=r"cannot open video .*gone\.avi: broken symbolic link "
                                        r"\(its target /nonexistent/x\.avi does not exist\)"):
        specs["gone"].load()
    # Dropping the frame instead would shift every later frame against its label.
    with pytest.raises(UserError, match=r"cannot read image .*002\.png: broken symbolic link"):
        specs["seq"].load()
    argv = ["prepare", "folder", "--src", str(src), "--dst", str(tmp_path / "store"),
            "--size", "32", "32", "--no-progress"]
    assert main(argv) == 2
    assert "broken symbolic link" in capsys.readouterr().err
    assert main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped train/gone: cannot open video" in out
    assert "skipped train/seq: cannot read image" in out
    assert [v.name for v in load_manifest(str(tmp_path / "store")).videos("train")] == ["cam"]


@pytest.mark.parametrize(("labels", "why"), [
    (np.array([0, 0, 0.5, 1]), "frame labels must be 0 or 1, got 0.5 at frame 2"),
    (np.array([0, -1, 0, 0]), "frame labels must be 0 or 1, got -1 at frame 1"),
    (np.array([0, 0, np.nan, 0]), "frame labels must be 0 or 1, got nan at frame 2"),
    (np.zeros((2, 2)), "one value per frame, shape (N,), got (2, 2)"),
    (np.array(["0", "1"]), "frame labels must be numbers"),
])
def test_npy_frame_labels_are_0_or_1_one_per_frame(tmp_path, labels, why):
    np.save(tmp_path / "v.npy", labels)
    with pytest.raises(UserError) as err:
        video_io.read_frame_labels(tmp_path / "v.npy")
    assert str(err.value).startswith(str(tmp_path / "v.npy")) and why in str(err.value)
    np.save(tmp_path / "ok.npy", np.array([[0.0, 1.0, 1.0, 0.0]]))  # a row of floats is fine
    assert video_io.read_frame_labels(tmp_path / "ok.npy").tolist() == [0, 1, 1, 0]


def test_a_refused_first_import_leaves_no_empty_folders(tmp_path, ray_local, capsys):
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / "b" / "000.png").write_text("not an image")
    dst = tmp_path / "new" / "store"
    assert main(["prepare", "folder", "--src", str(src), "--dst", str(dst), "--size", "32", "32",
                 "--no-progress"]) == 2
    assert "000.png" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
