"""``memae-dist data info`` (manifest only) and ``data verify`` (every byte), local and on S3."""

import functools
import json
import shutil

import numpy as np

from memae_dist.cli import main
from memae_dist.data.info import dataset_info
from memae_dist.data.manifest import load_manifest
from memae_dist.data.writer import VideoSpec, write_dataset


def test_info_reads_the_manifest_only(tiny_data, tmp_path, capsys):
    data = tmp_path / "copy"
    shutil.copytree(tiny_data, data)  # tiny_data is shared by the session: never modify it
    m = load_manifest(str(data))
    info = dataset_info(str(data))
    abnormal = sum(int(m.frame_labels(v).sum()) for v in m.videos("test"))
    assert abnormal > 0
    stored = {split: sum(s.bytes for s in m.shards if s.split == split)
              for split in ("train", "test")}
    assert info["splits"] == {
        "train": {"videos": 3, "frames": 120, "windows": 3 * 25, "abnormal": 0,
                  "labelled_videos": 0, "bytes_stored": stored["train"]},
        "test": {"videos": 2, "frames": 80, "windows": 2 * 25, "abnormal": abnormal,
                 "labelled_videos": 2, "bytes_stored": stored["test"]},
    }
    assert (info["videos"], info["frames"], info["shards"]) == (5, 200, 5)
    assert info["bytes_stored"] == info["bytes_manifest"] == sum(s.bytes for s in m.shards)
    assert info["bytes_raw"] == 200 * 16 * 16
    assert info["stored_over_raw"] == round(info["bytes_stored"] / info["bytes_raw"], 4)
    assert info["missing_shards"] == info["size_mismatch"] == []

    # Garbage of the same size in a shard: info does not notice (it opens no shard) ...
    shard = data / m.shards[0].path
    shard.write_bytes(b"\0" * shard.stat().st_size)
    assert dataset_info(str(data)) == info
    assert main(["data", "info", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == info
    # ... verify reads every byte and does.
    assert main(["data", "verify", str(data)]) == 1
    out = capsys.readouterr().out
    assert f"BAD: shard {shard} is corrupt or stale: sha256" in out and "4 of 5 shards OK" in out

    shard.unlink()
    assert main(["data", "info", str(data), "--window", "8", "--stride", "4"]) == 0
    text = capsys.readouterr().out
    assert "(windows of 8, stride 4)" in text and "train        3       120        27" in text
    # The missing shard's bytes are not counted: the split column shows what is there.
    train_mb = (stored["train"] - (m.shards[0].bytes if m.shards[0].split == "train" else 0))
    assert f"{train_mb / 1e6:,.2f} MB" in text.splitlines()[2]
    assert f"WARNING: 1 shard(s) missing: {m.shards[0].path}" in text
    # A window no segment holds whole is what training refuses: not counted as if it could be.
    assert main(["data", "info", str(data), "--window", "17"]) == 2
    assert capsys.readouterr().err == (
        f"memae-dist: error: --window 17 is longer than the dataset {data} supports (segments "
        "overlap by 15 frames: window <= 16, the window length it was prepared for)\n")
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "no manifest.json in dataset" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "typo")]) == 2
    assert capsys.readouterr().err.endswith("typo (no such folder)\n")


def ramp_video(n: int, ranges):
    """(n, 20, 30) frames; module level so Ray can pickle it."""
    return np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 20, 30), np.uint8), ranges


def test_info_on_s3_with_a_storage_section(s3_server, s3_bucket, ray_local, tmp_path,
                                          monkeypatch, capsys):
    videos = [VideoSpec("train", "a", functools.partial(ramp_video, 50, None)),
              VideoSpec("test", "b", functools.partial(ramp_video, 30, [[3, 9]]))]
    write_dataset(videos, s3_bucket, (16, 32), name="ramp", source="unit", progress=False)
    # The endpoint now comes only from the config's storage: section.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    config = tmp_path / "storage.yaml"
    config.write_text(f"storage:\n  endpoint_url: {s3_server}\n")
    assert main(["data", "info", s3_bucket, "--json", "--config", str(config)]) == 0
    info = json.loads(capsys.readouterr().out)
    train = info["splits"]["train"]
    assert train == {"videos": 1, "frames": 50, "windows": 35, "abnormal": 0,
                     "labelled_videos": 0, "bytes_stored": train["bytes_stored"]}
    assert 0 < train["bytes_stored"] < info["bytes_stored"] == sum(
        s["bytes_stored"] for s in info["splits"].values())
    assert info["splits"]["test"]["abnormal"] == 7 and info["shards"] == 2
    assert info["bytes_stored"] == info["bytes_manifest"] > 0
    assert info["bytes_all_objects"] > info["bytes_stored"]  # + manifest and markers
    assert main(["data", "verify", s3_bucket, "--config", str(config)]) == 0
    assert "2 of 2 shards OK" in capsys.readouterr().out
