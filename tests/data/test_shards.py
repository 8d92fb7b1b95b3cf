import itertools

import numpy as np
import pyarrow.parquet as pq
import pytest

from memae_dist.data import storage
from memae_dist.data.shards import (
    SCHEMA,
    owned_window_starts,
    read_video_frames,
    segment_bounds,
    verify_shard,
    write_video_shard,
)
from memae_dist.errors import UserError


def _video(n=150, h=8, w=12, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)  # (N, H, W)
    labels = (np.arange(n) % 7 == 3).astype(np.uint8)
    return frames, labels


def test_segment_bounds_examples():
    assert segment_bounds(120, 128, 15) == [(0, 120)]
    assert segment_bounds(128, 128, 15) == [(0, 128)]
    assert segment_bounds(129, 128, 15) == [(0, 128), (113, 16)]
    assert segment_bounds(180, 128, 15) == [(0, 128), (113, 67)]
    with pytest.raises(ValueError):
        segment_bounds(10, 8, 8)


@pytest.mark.parametrize("K,overlap", [(16, 15), (20, 15), (32, 15), (128, 15), (8, 3), (5, 0)])
def test_ownership_covers_every_window_once(K, overlap):
    for n_frames, L, stride in itertools.product(
        [1, 2, 5, 16, 17, 31, 40, 113, 128, 129, 200, 257], range(1, overlap + 2), [1, 2, 3, 16]
    ):
        bounds = segment_bounds(n_frames, K, overlap)
        assert bounds[0][0] == 0 and sum(1 for _ in bounds) >= 1
        assert bounds[-1][0] + bounds[-1][1] == n_frames
        assert all(s % (K - overlap) == 0 and n <= K for s, n in bounds)
        owned = []
        for s, n in bounds:
            starts = owned_window_starts(s, n, n_frames, K, overlap, L, stride)
            assert np.all(starts >= s) and np.all(starts + L <= s + n)  # inside its segment
            owned.extend(starts.tolist())
        expected = list(range(0, n_frames - L + 1, stride))
        assert sorted(owned) == expected and len(set(owned)) == len(owned), (n_frames, L, stride)


def test_ownership_refuses_windows_longer_than_overlap():
    with pytest.raises(UserError, match="segment_overlap"):
        owned_window_starts(0, 128, 200, 128, 15, 17, 1)


def test_local_round_trip_and_format(tmp_path):
    frames, labels = _video()
    fs, path = storage.pyarrow_fs(str(tmp_path / "train" / "01.parquet"))
    info = write_video_shard(fs, path, "01", "train", frames, labels, 64, 15)
    assert info["rows"] == len(segment_bounds(150, 64, 15)) == 3
    assert info["bytes"] == (tmp_path / "train" / "01.parquet").stat().st_size
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["01.parquet"]
    got_frames, got_labels = read_video_frames(str(tmp_path / "train" / "01.parquet"))
    np.testing.assert_array_equal(got_frames, frames)
    np.testing.assert_array_equal(got_labels, labels)
    pf = pq.ParquetFile(path)
    assert pf.schema_arrow.equals(SCHEMA)
    assert pf.metadata.num_row_groups == 3
    assert pf.metadata.row_group(0).column(7).compression == "ZSTD"
    row = pf.read_row_group(1).to_pylist()[0]
    assert (row["start"], row["num_frames"], row["video_frames"]) == (49, 64, 150)
    assert (row["height"], row["width"], row["video"], row["split"]) == (8, 12, "01", "train")
    seg = np.frombuffer(row["frames"], np.uint8).reshape(64, 8, 12)
    np.testing.assert_array_equal(seg, frames[49:113])
    verify_shard(fs, path, info["bytes"], info["sha256"])


def test_checksum_mismatch_is_detected(tmp_path):
    frames, labels = _video(40)
    fs, path = storage.pyarrow_fs(str(tmp_path / "v.parquet"))
    info = write_video_shard(fs, path, "v", "test", frames, labels, 128, 15)
    data = bytearray((tmp_path / "v.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    (tmp_path / "v.parquet").write_bytes(bytes(data))
    with pytest.raises(UserError, match="v.parquet.*sha256"):
        verify_shard(fs, path, info["bytes"], info["sha256"])
    with pytest.raises(UserError, match="v.parquet.*bytes"):
        verify_shard(fs, path, info["bytes"] + 1, info["sha256"])
    with pytest.raises(UserError, match="missing"):
        verify_shard(fs, str(tmp_path / "w.parquet"), info["bytes"], info["sha256"])


def test_s3_round_trip(s3_bucket):
    frames, labels = _video(130, 4, 4, seed=3)
    uri = storage.join(s3_bucket, "test", "07.parquet")
    fs, path = storage.pyarrow_fs(uri)
    info = write_video_shard(fs, path, "07", "test", frames, labels, 128, 15)
    verify_shard(fs, path, info["bytes"], info["sha256"])
    got_frames, got_labels = read_video_frames(uri)
    np.testing.assert_array_equal(got_frames, frames)
    np.testing.assert_array_equal(got_labels, labels)
    with pytest.raises(UserError, match="s3://.*07.parquet"):
        verify_shard(fs, path, info["bytes"], "0" * 64)


def _flip_first_frames_page(path) -> None:
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(SCHEMA.get_field_index("frames"))
    data = bytearray(path.read_bytes())
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    data[middle] ^= 0x01  # one bit, same size
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_frames_is_refused_naming_the_shard(tmp_path):
    frames, labels = _video()
    fs, path = storage.pyarrow_fs(str(tmp_path / "01.parquet"))
    write_video_shard(fs, path, "01", "train", frames, labels, 128, 15)
    _flip_first_frames_page(tmp_path / "01.parquet")
    with pytest.raises(UserError) as err:
        read_video_frames(path)
    assert str(err.value).startswith(f"shard {path} is damaged (a page checksum does not match)")


def test_a_truncated_shard_is_refused_naming_the_shard(tmp_path):
    frames, labels = _video()
    path = _written(tmp_path, frames, labels)
    with open(path, "r+b") as f:
        f.truncate(2000)
    with pytest.raises(UserError) as err:
        read_video_frames(path)
    assert str(err.value).startswith(f"shard {path} is damaged (Parquet magic bytes not found")
    assert str(err.value).endswith("rerun the same 'memae-dist prepare' to write them again")


def test_shards_written_before_page_checksums_still_read(tmp_path):
    frames, labels = _video()
    table = pq.read_table(_written(tmp_path, frames, labels))
    # as prepare wrote shards before: no write_page_checksum
    pq.write_table(table, tmp_path / "old.parquet", row_group_size=1, compression="zstd")
    got, got_labels = read_video_frames(str(tmp_path / "old.parquet"))
    np.testing.assert_array_equal(got, frames)
    np.testing.assert_array_equal(got_labels, labels)


def _written(tmp_path, frames, labels) -> str:
    fs, path = storage.pyarrow_fs(str(tmp_path / "new.parquet"))
    write_video_shard(fs, path, "01", "train", frames, labels, 128, 15)
    return path
