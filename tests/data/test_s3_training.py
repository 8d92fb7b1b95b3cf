"""End to end on object storage: import into s3:// (moto server over HTTP), inspect, then train
one epoch with two Ray Train workers reading the shards from the bucket and checkpointing back
into it. Nothing is shared through the local disk but the source videos."""

import json

import numpy as np
import pyarrow.fs as pafs
import pytest

from memae_dist.cli import main
from memae_dist.config import load_config
from memae_dist.data import storage
from memae_dist.train.checkpoint import STATE_FILE
from memae_dist.train.trainer import fit
from tests.data.videos import video_path, write_video

TINY = ["model.num_slots=50", "model.shrink_threshold=0.02", "data.shuffle_buffer=16",
        "train.batch_size=8", "train.lr=1e-3", "train.workers=2", "train.cpus_per_worker=1",
        "train.epochs=1", "train.max_steps_per_epoch=2"]


def _info(data: str, capsys) -> dict:
    assert main(["data", "info", data, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _train_from_bucket(data: str, name: str) -> str:
    """One epoch, two workers, data and checkpoints in the bucket; returns the checkpoint URI."""
    runs = data.rsplit("/", 1)[0] + "/runs"
    cfg = load_config(None, [*TINY, f"data.path={data}", f"run.storage={runs}",
                             f"run.name={name}"])
    result = fit(cfg)
    assert result.checkpoint_uri == f"{runs}/{name}/checkpoint_epoch_0001"
    row = result.history[0]
    assert (row["epoch"], row["workers"], row["clips"]) == (1, 2, 16)
    assert np.isfinite(row["loss"])
    # The checkpoint is an object in the bucket, written by the workers through S3.
    fs, path = storage.pyarrow_fs(storage.join(result.checkpoint_uri, STATE_FILE))
    assert isinstance(fs, pafs.S3FileSystem) and fs.get_file_info(path).size > 1000
    return result.checkpoint_uri


def test_ped2_subset_on_s3(shared_ped2, s3_bucket, ray_local, tmp_path, capsys):
    src = tmp_path / "ped2"
    for part, videos in (("training", ("01", "02", "03")), ("testing", ("01", "02"))):
        (src / part / "frames").mkdir(parents=True)
        for v in videos:
            (src / part / "frames" / v).symlink_to((shared_ped2 / part / "frames" / v).resolve())
    labels = np.load(shared_ped2 / "frame_labels_ped2.npy").reshape(-1)[: 180 + 180]
    np.save(src / "frame_labels_ped2.npy", labels[None])
    assert main(["prepare", "ucsd-ped2", "--src", str(src), "--dst", s3_bucket,
                 "--size", "32", "32", "--workers", "2", "--no-progress"]) == 0
    assert "test: 2 videos, 360 frames" in capsys.readouterr().out
    info = _info(s3_bucket, capsys)
    train = info["splits"]["train"]
    assert train == {"videos": 3, "frames": 120 + 150 + 150, "windows": 105 + 135 + 135,
                     "abnormal": 0, "labelled_videos": 0, "bytes_stored": train["bytes_stored"]}
    assert 0 < train["bytes_stored"] < info["bytes_stored"]
    assert info["splits"]["test"]["abnormal"] == int(labels.sum())
    assert info["stored_over_raw"] <= 1.2
    _train_from_bucket(s3_bucket, "ped2-s3")


def test_folder_of_mixed_codecs_on_s3(s3_bucket, ray_local, tmp_path, capsys):
    src = tmp_path / "cams"
    (src / "train").mkdir(parents=True)
    (src / "test").mkdir()
    for stem, codec, n in (("lobby", "libx264", 40), ("gate", "mpeg4", 36),
                           ("yard", "mjpeg", 30)):
        write_video(video_path(src / "train", stem, codec), n, codec)
    write_video(video_path(src / "test", "door", "vp9"), 30, "vp9")
    (tmp_path / "labels.json").write_text(json.dumps({"door": [[10, 19]]}))
    assert main(["prepare", "folder", "--src", str(src), "--dst", s3_bucket, "--size", "32", "32",
                 "--labels", str(tmp_path / "labels.json"), "--no-progress"]) == 0
    assert "train: 3 videos, 106 frames, 0 abnormal" in capsys.readouterr().out
    info = _info(s3_bucket, capsys)
    assert {k: v["frames"] for k, v in info["splits"].items()} == {"train": 106, "test": 30}
    assert info["splits"]["test"]["abnormal"] == 10
    _train_from_bucket(s3_bucket, "cams-s3")


@pytest.mark.slow
def test_full_ped2_import_to_s3(shared_ped2, s3_bucket, ray_local, capsys):
    """The acceptance numbers: every Ped2 video into the bucket, then ``data info --json``."""
    assert main(["prepare", "ucsd-ped2", "--src", str(shared_ped2), "--dst", s3_bucket,
                 "--size", "64", "64", "--no-progress"]) == 0
    capsys.readouterr()
    info = _info(s3_bucket, capsys)
    train, test = info["splits"]["train"], info["splits"]["test"]
    assert (train["videos"], train["frames"], test["videos"], test["frames"]) == (16, 2550, 12,
                                                                                  2010)
    assert (train["abnormal"], test["abnormal"]) == (0, 1648)
    assert info["bytes_raw"] == (2550 + 2010) * 64 * 64
    assert info["bytes_stored"] <= 1.2 * info["bytes_raw"]
    print(f"\nfull Ped2 in S3 at 64x64: {info['bytes_stored'] / 1e6:.2f} MB stored, "
          f"{info['stored_over_raw']:.3f}x one uint8 copy")
