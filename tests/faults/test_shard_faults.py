"""Damaged datasets at read time: `data verify` and `train` name the shard or the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memae_dist.data.shards import SCHEMA
from tests.faults.helpers import assert_user_error, memae

SCHEMA_FRAMES = SCHEMA.get_field_index("frames")

TRAIN = ("--workers", "0", "--epochs", "1", "--storage", "runs", "--name", "r",
         "--set", "model.num_slots=20", "--set", "train.batch_size=4",
         "--set", "train.max_steps_per_epoch=2", "--set", "data.shuffle_buffer=0")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


@pytest.mark.parametrize(("damage", "says"), [
    (_truncate, "bytes, manifest says"),
    (_flip, "sha256 does not match"),
])
def test_verify_names_the_damaged_shard(tiny_copy, tmp_path, damage, says):
    shard = _manifest(tiny_copy)["shards"][0]["path"]
    damage(tiny_copy / shard)
    proc = memae("data", "verify", str(tiny_copy), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    bad = [line for line in proc.stdout.splitlines() if line.startswith("BAD: ")]
    assert len(bad) == 1 and shard in bad[0] and says in bad[0], proc.stdout
    n = len(_manifest(tiny_copy)["shards"])
    assert f"{n - 1} of {n} shards OK" in proc.stdout
    assert "to repair: rerun the 'memae-dist prepare' that wrote the dataset" in proc.stdout


def test_verify_finds_a_manifest_edited_out_of_step_with_its_shards(tiny_copy):
    from memae_dist.data.info import verify_dataset

    manifest = _manifest(tiny_copy)
    split, body = next(iter(manifest["splits"].items()))
    video = body["videos"][0]
    video["num_frames"] += 5  # windows past the video's end, had scoring believed it
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    n, problems = verify_dataset(str(tiny_copy))
    assert len(problems) == 1, problems
    assert (f"holds {video['num_frames'] - 5} frames of video {video['name']}, but the "
            f"manifest says {video['num_frames']}") in problems[0]
    manifest["splits"][split]["videos"][0]["num_frames"] -= 5
    manifest["size"] = [manifest["size"][0] * 2, manifest["size"][1]]
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    n, problems = verify_dataset(str(tiny_copy))
    assert len(problems) == n and "frames, but the manifest says" in problems[0]


def test_rerunning_prepare_repairs_a_damaged_dataset(tmp_path):
    from memae_dist.data.importers.synthetic import SyntheticConfig, generate_synthetic
    from memae_dist.data.info import verify_dataset

    dst = tmp_path / "data"
    cfg = SyntheticConfig(seed=1, size=(16, 16), train_videos=2, test_videos=1,
                          frames_per_video=40)
    generate_synthetic(str(dst), cfg, workers=1)
    shard = dst / _manifest(dst)["shards"][0]["path"]
    _flip_frames(shard)
    assert len(verify_dataset(str(dst))[1]) == 1
    untouched = {p: p.stat().st_mtime_ns for p in dst.rglob("*.parquet") if p != shard}
    generate_synthetic(str(dst), cfg, workers=1)  # the damaged shard is found by its sha256
    assert verify_dataset(str(dst)) == (3, [])
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched  # only that one rewritten


def test_train_refuses_a_truncated_shard_before_training(tiny_copy, tmp_path):
    shard = _manifest(tiny_copy)["shards"][0]["path"]
    _truncate(tiny_copy / shard)
    proc = memae("train", "--data", str(tiny_copy), *TRAIN, cwd=tmp_path)
    assert_user_error(proc, "preflight failed, nothing was started", shard)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("state.pt"))


def test_future_format_version_is_refused_by_verify_and_train(tiny_copy, tmp_path):
    manifest = _manifest(tiny_copy)
    manifest["format_version"] = 99
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    for args in (("data", "verify", str(tiny_copy)), ("train", "--data", str(tiny_copy), *TRAIN)):
        proc = memae(*args, cwd=tmp_path)
        assert_user_error(proc, "manifest.json", "unsupported format_version 99")
    assert not list(tmp_path.rglob("state.pt"))


def test_shard_path_escaping_the_dataset_is_refused(tiny_copy, tmp_path):
    manifest = _manifest(tiny_copy)
    (tmp_path / "x.parquet").write_bytes((tiny_copy / manifest["shards"][0]["path"]).read_bytes())
    manifest["shards"][0]["path"] = "../x.parquet"
    manifest["splits"]["train"]["videos"][0]["shard"] = "../x.parquet"
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    for args in (("data", "verify", str(tiny_copy)), ("data", "info", str(tiny_copy)),
                 ("train", "--data", str(tiny_copy), *TRAIN)):
        proc = memae(*args, cwd=tmp_path)
        assert_user_error(proc, "manifest.json", "'../x.parquet'", "stay inside the dataset")


def _flip_frames(path: Path) -> None:
    """Flip bytes inside the compressed frames of the first segment (a same-size damage)."""
    import pyarrow.parquet as pq

    chunk = pq.ParquetFile(path).metadata.row_group(0).column(SCHEMA_FRAMES)
    data = bytearray(path.read_bytes())
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    for i in range(middle, middle + 4):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_same_size_corruption_stops_training_and_scoring_naming_the_shard(tiny_copy, tmp_path):
    """Pages carry CRC32s: flipped frame bytes, which zstd would decode into wrong pixels
    without a word, fail the read, in Ray Data's read tasks as in its scoring actors."""
    shards = [tiny_copy / s["path"] for s in _manifest(tiny_copy)["shards"]]
    train = [p for p in shards if p.parent.name == "train"]
    test = [p for p in shards if p.parent.name == "test"]
    for shard in train:
        _flip_frames(shard)
    proc = memae("train", "--data", str(tiny_copy), *TRAIN, cwd=tmp_path)
    line = assert_user_error(proc, "is damaged (a page checksum does not match)",
                             "'memae-dist data verify'")
    assert any(f"shard {p} is damaged" in line for p in train), line
    for shard in train:  # undone: train for a checkpoint, then score
        _flip_frames(shard)
    proc = memae("train", "--data", str(tiny_copy), *TRAIN[2:], "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _flip_frames(test[0])
    proc = memae("score", "--checkpoint", "runs/r", "--data", str(tiny_copy), "--out",
                 "s.parquet", "--workers", "1", "--no-progress", cwd=tmp_path)
    assert_user_error(proc, f"shard {test[0]} is damaged")
    assert not (tmp_path / "s.parquet").exists()
    # A truncated shard is found by one listing, before any scoring actor starts.
    _flip_frames(test[0])
    _truncate(test[-1])
    proc = memae("score", "--checkpoint", "runs/r", "--data", str(tiny_copy), "--out",
                 "s.parquet", "--workers", "1", "--no-progress", cwd=tmp_path)
    assert_user_error(proc, f"shard {test[-1]} is corrupt or stale",
                      "rerun the same 'memae-dist prepare'")
    assert "Started a local Ray" not in proc.stderr and not (tmp_path / "s.parquet").exists()
