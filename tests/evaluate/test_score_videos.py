"""``memae-dist score --videos``: a folder of raw .mp4 files scored in one command."""

import json
import os
import subprocess
import sys

import numpy as np

from memae_dist.cli import main
from memae_dist.data.manifest import load_manifest
from memae_dist.data.storage import pyarrow_fs
from memae_dist.evaluate.batch_score import read_scores
from tests.data.videos import write_video
from tests.evaluate.conftest import make_checkpoint


def test_score_folder_of_mp4_end_to_end(tiny_checkpoint, ray_local, s3_bucket, tmp_path,
                                        capsys):
    cams = tmp_path / "cams"
    (cams / "lobby").mkdir(parents=True)
    write_video(cams / "gate.mp4", 30, codec="libx264")
    write_video(cams / "lobby" / "door.mp4", 24, codec="libx264", height=32, width=48)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"gate": [[10, 14]], "lobby/door.mp4": []}))
    out = tmp_path / "out" / "scores.parquet"
    assert main(["score", "--checkpoint", tiny_checkpoint, "--videos", str(cams), "--out",
                 str(out), "--workers", "0", "--labels", str(labels), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "scored 24 frames of 2 videos" in printed  # (30 - 15) + (24 - 15)
    assert f"checkpoint: {tiny_checkpoint}\n" in printed
    table, meta = read_scores(str(out))
    prepared = tmp_path / "out" / "scores_frames"
    assert meta["data"] == str(prepared) and meta["split"] == "test"
    manifest = load_manifest(str(prepared))
    assert manifest.size == (16, 16)  # the checkpoint's training frame size
    rows = table.to_pydict()
    assert sorted(set(rows["video"])) == ["gate", "lobby__door"]
    gate = np.array(rows["video"]) == "gate"
    np.testing.assert_array_equal(np.array(rows["frame"])[gate], np.arange(8, 23))
    np.testing.assert_array_equal(np.array(rows["label"])[gate],
                                  [0, 0, 1, 1, 1, 1, 1] + [0] * 8)

    # One file in S3, unlabelled, at an explicit size, through a Ray actor, scores to S3.
    from memae_dist.data.storage import write_bytes_atomic

    write_bytes_atomic(f"{s3_bucket}/footage/gate.mp4", (cams / "gate.mp4").read_bytes())
    single = f"{s3_bucket}/scores/one.parquet"
    assert main(["score", "--checkpoint", tiny_checkpoint, "--videos",
                 f"{s3_bucket}/footage/gate.mp4", "--out", single, "--size", "32", "32",
                 "--workers", "1", "--no-progress"]) == 0
    table, meta = read_scores(single)
    assert table.num_rows == 15 and table.column("label").null_count == 15
    # The same command again: the video is downloaded again, but not prepared again.
    fs, shard = pyarrow_fs(f"{s3_bucket}/scores/one_frames/test/gate.parquet")
    written = fs.get_file_info(shard).mtime
    assert main(["score", "--checkpoint", tiny_checkpoint, "--videos",
                 f"{s3_bucket}/footage/gate.mp4", "--out", single, "--size", "32", "32",
                 "--workers", "0", "--no-progress"]) == 0
    assert fs.get_file_info(shard).mtime == written
    assert meta["data"] == f"{s3_bucket}/scores/one_frames"
    assert load_manifest(meta["data"]).size == (32, 32)
    # The report works on footage without labels (curves, no ROC), frames read from S3.
    report = tmp_path / "report"
    assert main(["report", "--scores", single, "--out", str(report), "--top", "1"]) == 0
    assert (report / "videos" / "gate.png").is_file() and not (report / "roc.png").exists()
    assert len(list((report / "triptychs").glob("gate_*.png"))) == 1


def test_a_rerun_on_one_local_file_reuses_its_prepared_frames(tiny_checkpoint, ray_local,
                                                             tmp_path):
    write_video(tmp_path / "gate.mp4", 20, codec="libx264")
    argv = ["score", "--checkpoint", tiny_checkpoint, "--videos", str(tmp_path / "gate.mp4"),
            "--out", str(tmp_path / "s.parquet"), "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    shard = tmp_path / "s_frames" / "test" / "gate.parquet"
    written = shard.stat().st_mtime_ns
    assert main(argv) == 0
    assert shard.stat().st_mtime_ns == written
    write_video(tmp_path / "gate.mp4", 24, codec="libx264")  # new footage under the same name
    assert main(argv) == 0
    assert load_manifest(str(tmp_path / "s_frames")).videos("test")[0].num_frames == 24


def test_workers_0_imports_and_scores_footage_without_ray(tiny_checkpoint, tmp_path):
    """README: with --workers 0 no Ray at all. A Ray address nothing listens on would stop any
    command that reaches for Ray with "cannot reach 127.0.0.1:1"."""
    write_video(tmp_path / "gate.mp4", 20, codec="libx264")
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "memae_dist.cli", "score", "--checkpoint", tiny_checkpoint,
         "--videos", str(tmp_path / "gate.mp4"), "--out", str(tmp_path / "s.parquet"),
         "--workers", "0", "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "scored 5 frames of 1 video" in done.stdout
    assert "Ray" not in done.stderr


def test_debug_logging_shows_no_credentials(tiny_checkpoint, s3_bucket, tmp_path):
    """-v logs what the libraries log, but the storage clients' request dumps (signed headers:
    the key id, a session token) stay out, and whatever else is logged passes the redaction."""
    from memae_dist.data.storage import write_bytes_atomic

    write_bytes_atomic(f"{s3_bucket}/footage/gate.mp4",
                       write_video(tmp_path / "gate.mp4", 20, codec="libx264").read_bytes())
    key_id, token = "AKIAMARKER0123456789", "TOKENMARKERxyz987abc"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SESSION_TOKEN": token}
    done = subprocess.run(
        [sys.executable, "-m", "memae_dist.cli", "-v", "score", "--checkpoint", tiny_checkpoint,
         "--videos", f"{s3_bucket}/footage/", "--out", f"{s3_bucket}/s.parquet", "--size", "16",
         "16", "--workers", "0", "--no-progress"], env=env, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert " DEBUG " in done.stderr  # -v took effect
    for secret in (key_id, token, env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in done.stderr + done.stdout


def test_a_broken_video_is_named_where_the_user_keeps_it(tiny_checkpoint, ray_local, tmp_path,
                                                         capsys):
    broken = tmp_path / "footage" / "a.mp4"
    broken.parent.mkdir()
    broken.write_text("not a video")
    out = tmp_path / "out" / "scores.parquet"
    assert main(["score", "--checkpoint", tiny_checkpoint, "--videos", str(broken), "--out",
                 str(out), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot open video {broken}: Invalid data found" in err
    assert "memae-videos-" not in err and "Errno" not in err
    assert not (tmp_path / "out").exists()  # nor the frames' folder it would have made
    # A file that is no video is named, not the folder it lies in (which holds a.mp4).
    notes = tmp_path / "footage" / "notes.txt"
    notes.write_text("camera 3 moved")
    assert main(["score", "--checkpoint", tiny_checkpoint, "--videos", str(notes), "--out",
                 str(out), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"memae-dist: error: --videos {notes}: not a video file (by its "
                          "extension; videos end in .3gp, ")
    assert not (tmp_path / "out").exists()
    # A frame size the model was not trained on is refused before any video is read.
    recorded = make_checkpoint(tmp_path / "run" / "checkpoint_epoch_0001", str(tmp_path / "gone"),
                               trained_on={"size": [32, 32]})
    assert main(["score", "--checkpoint", recorded, "--videos", str(broken), "--out",
                 str(out), "--size", "64", "64", "--workers", "0", "--no-progress"]) == 2
    assert "--size 64 64: the checkpoint was trained on 32x32 frames" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_videos_shorter_than_the_window_are_named_not_dropped_silently(tiny_checkpoint,
                                                                       ray_local, tmp_path,
                                                                       caplog, capsys):
    cams = tmp_path / "cams"
    cams.mkdir()
    write_video(cams / "gate.mp4", 20, codec="libx264")
    write_video(cams / "blip.mp4", 8, codec="libx264")
    assert main(["score", "--checkpoint", tiny_checkpoint, "--videos", str(cams), "--out",
                 str(tmp_path / "s.parquet"), "--workers", "0", "--no-progress"]) == 0
    assert "scored 5 frames of 1 video" in capsys.readouterr().out
    assert ("1 video(s) of split 'test' are shorter than the model's 16-frame window and get "
            "no scores: blip") in caplog.text
    # Only short footage: named as the user gave it, not as the manifest of its staged frames.
    assert main(["score", "--checkpoint", tiny_checkpoint, "--videos", str(cams / "blip.mp4"),
                 "--out", str(tmp_path / "b.parquet"), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"memae-dist: error: --videos {cams / 'blip.mp4'}: no video is as long as the "
                   "model's 16-frame window, so there is nothing to score: blip (8 frames)\n")
    assert not (tmp_path / "b.parquet").exists()


def test_videos_of_another_split_are_named_not_left_out_silently(tiny_checkpoint, ray_local,
                                                                 tmp_path, capsys):
    for split in ("train", "test"):
        (tmp_path / "cams" / split).mkdir(parents=True)
    write_video(tmp_path / "cams" / "train" / "a.mp4", 20, codec="libx264")
    write_video(tmp_path / "cams" / "test" / "b.mp4", 20, codec="libx264")
    assert main(["score", "--checkpoint", tiny_checkpoint, "--videos", str(tmp_path / "cams"),
                 "--out", str(tmp_path / "s.parquet"), "--workers", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "note: 1 video(s) under train/ are not scored (--split train scores them)" in printed
    assert "scored 5 frames of 1 video" in printed
