"""Synthetic road videos: deterministic, well-formed, honestly labelled, anomalies distinct."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from memae_dist.data.importers.synthetic import (
    SyntheticConfig,
    anomaly_kind,
    generate_synthetic,
    render_scene,
    render_video,
    synthetic_videos,
)
from memae_dist.errors import UserError

CFG = SyntheticConfig()


def _labels(ranges: list[list[int]], n: int) -> np.ndarray:
    y = np.zeros(n, dtype=bool)
    for first, last in ranges:
        y[first : last + 1] = True
    return y


def _test_videos(cfg: SyntheticConfig = CFG, kind: str | None = None):
    """(index, frames, labels) of the test videos, optionally only those with anomaly ``kind``."""
    for i in range(cfg.test_videos):
        if kind is None or anomaly_kind(i) == kind:
            frames, ranges = render_video(cfg, "test", i)
            yield i, frames, _labels(ranges, len(frames))


def test_same_seed_same_bytes_other_seed_other_bytes():
    a_frames, a_ranges = render_video(CFG, "test", 0)
    b_frames, b_ranges = render_video(SyntheticConfig(), "test", 0)
    assert a_frames.tobytes() == b_frames.tobytes() and a_ranges == b_ranges
    c_frames, _ = render_video(SyntheticConfig(seed=1), "test", 0)
    assert c_frames.tobytes() != a_frames.tobytes()
    # Videos of one set differ from each other too (not one clip repeated).
    assert render_video(CFG, "train", 0)[0].tobytes() != render_video(CFG, "train", 1)[0].tobytes()


@pytest.mark.parametrize("size", [(32, 32), (64, 48)])
def test_shapes_and_dtype(size):
    cfg = SyntheticConfig(size=size, frames_per_video=40)
    for split in ("train", "test"):
        frames, _ = render_video(cfg, split, 0)
        assert frames.shape == (40, *size) and frames.dtype == np.uint8
        # Dim background, bright objects: the full range is used but not saturated.
        assert frames.min() < 80 and 150 < frames.max() < 255


def test_train_videos_are_unlabelled_and_normal():
    for i in range(CFG.train_videos):
        frames, ranges = render_video(CFG, "train", i)
        assert ranges is None
        assert (frames > 120).any(axis=(1, 2)).mean() > 0.8  # someone walks most of the time


def test_test_labels_cover_30_to_50_percent_and_lie_inside():
    for seed in (0, 1, 2):
        cfg = SyntheticConfig(seed=seed)
        total = abnormal = 0
        clean = 0
        for i in range(cfg.test_videos):
            frames, ranges = render_video(cfg, "test", i)
            for first, last in ranges:
                assert 0 <= first <= last < len(frames)
            assert all(a[1] + 1 < b[0] for a, b in zip(ranges, ranges[1:]))  # sorted, apart
            assert (ranges == []) == (anomaly_kind(i) == "none")
            clean += ranges == []
            total += len(frames)
            abnormal += sum(last - first + 1 for first, last in ranges)
        assert clean >= 1
        assert 0.30 <= abnormal / total <= 0.50, (seed, abnormal / total)


def test_labels_mark_exactly_where_the_anomaly_is_drawn():
    for i, frames, labels in _test_videos():
        clean, ranges = render_scene(CFG, "test", i, "none")
        assert ranges == []
        changed = np.abs(frames.astype(int) - clean).max(axis=(1, 2))  # (N,)
        assert (changed[labels] > 20).all()  # every abnormal frame shows the anomaly
        assert (changed[~labels] <= 20).mean() > 0.97  # barely anything outside the ranges


def test_fast_objects_move_more():
    for _, frames, labels in _test_videos(kind="fast"):
        energy = (np.diff(frames.astype(float), axis=0) ** 2).mean(axis=(1, 2))  # (N-1,)
        assert energy[labels[1:]].mean() > 1.5 * energy[~labels[1:]].mean()


def test_large_objects_cover_more_pixels():
    for _, frames, labels in _test_videos(kind="large"):
        bright = (frames > 120).sum(axis=(1, 2))  # (N,)
        assert bright[labels].mean() > 2 * bright[~labels].mean()


def _track(cfg: SyntheticConfig, i: int, kind: str) -> tuple[np.ndarray, ...]:
    """Abnormal frames and the anomaly's centroid (y, x) there, from the difference to the
    clean scene."""
    frames, ranges = render_scene(cfg, "test", i, kind)
    clean, _ = render_scene(cfg, "test", i, "none")
    diff = np.abs(frames.astype(float) - clean)  # (N, H, W)
    ts = np.flatnonzero(_labels(ranges, len(frames)))
    ys, xs = np.mgrid[: diff.shape[1], : diff.shape[2]]
    w = diff[ts]
    cy = (w * ys).sum(axis=(1, 2)) / w.sum(axis=(1, 2))
    cx = (w * xs).sum(axis=(1, 2)) / w.sum(axis=(1, 2))
    return ts, cy, cx


def test_wrong_way_objects_go_against_or_across_the_traffic():
    cfg = SyntheticConfig(test_videos=12)
    seen = set()
    for i in range(cfg.test_videos):
        ts, cy, cx = _track(cfg, i, "wrong_way")
        vx, vy = np.polyfit(ts, cx, 1)[0], np.polyfit(ts, cy, 1)[0]
        assert vx < -0.3 or (abs(vy) > 0.3 and abs(vx) < 0.1), (i, vx, vy)
        seen.add("against" if vx < 0 else "across")
        # The same check sees a large object in that scene walk with the traffic.
        ts, _, cx = _track(cfg, i, "large")
        assert np.polyfit(ts, cx, 1)[0] > 0.3
    assert seen == {"against", "across"}


def test_config_validation_names_the_setting():
    bad = {
        "seed": -1,
        "size": (30, 32),
        "train_videos": 0,
        "test_videos": 0,
        "frames_per_video": 16,
    }
    for name, value in bad.items():
        with pytest.raises(UserError, match=f"synthetic.{name}"):
            SyntheticConfig(**{name: value})
    assert SyntheticConfig(size=[64, 64]).size == (64, 64)
    with pytest.raises(UserError, match="index"):
        render_video(CFG, "test", CFG.test_videos)
    with pytest.raises(UserError, match="split"):
        render_video(CFG, "val", 0)


def test_video_specs_are_picklable_and_render_the_videos():
    cfg = SyntheticConfig(train_videos=2, test_videos=3, frames_per_video=32)
    specs = synthetic_videos(cfg)
    assert [(s.split, s.name) for s in specs] == [
        ("train", "01"),
        ("train", "02"),
        ("test", "01"),
        ("test", "02"),
        ("test", "03"),
    ]
    load = pickle.loads(pickle.dumps(specs[3].load))
    frames, ranges = load()
    expected_frames, expected_ranges = render_video(cfg, "test", 1)
    assert frames.tobytes() == expected_frames.tobytes() and ranges == expected_ranges


def test_generate_synthetic_writes_a_dataset(tmp_path, ray_local):
    from memae_dist.data.manifest import load_manifest
    from memae_dist.data.shards import read_video_frames

    cfg = SyntheticConfig(train_videos=1, test_videos=2, frames_per_video=32)
    dst = str(tmp_path / "syn")
    manifest = generate_synthetic(dst, cfg, progress=False)
    m = load_manifest(dst)
    assert manifest == m.to_dict()
    assert m.name == "synthetic" and m.source == "synthetic" and tuple(m.size) == cfg.size
    assert [v.abnormal for v in m.videos("train")] == [None]
    test = m.videos("test")[1]
    frames, labels = read_video_frames(m.shard_uri(dst, test))
    expected, ranges = render_video(cfg, "test", 1)
    np.testing.assert_array_equal(frames, expected)
    assert test.abnormal == ranges
    np.testing.assert_array_equal(labels, _labels(ranges, 32).astype(np.uint8))


def test_a_dataset_is_not_written_over_another(tmp_path, ray_local):
    """Another import into the folder would drop the first one's videos from the manifest and
    leave their shards behind: refused, and the first dataset is left whole."""
    from memae_dist.data.importers.folder import import_folder
    from tests.data.videos import write_video

    dst = str(tmp_path / "syn")
    first = generate_synthetic(dst, SyntheticConfig(train_videos=1, test_videos=1,
                                                    frames_per_video=32), progress=False)
    (tmp_path / "cams").mkdir()
    write_video(tmp_path / "cams" / "gate.avi", 20)
    with pytest.raises(UserError, match=r"syn already holds another dataset \('synthetic', "
                                        r"from synthetic\); write 'cams' to another place"):
        import_folder(tmp_path / "cams", dst, (16, 16), split="test", progress=False)
    assert json.loads((tmp_path / "syn" / "manifest.json").read_text()) == first
    again = generate_synthetic(dst, SyntheticConfig(train_videos=1, test_videos=1,
                                                    frames_per_video=32), progress=False)
    assert again == first  # its own rerun is still an update


def test_the_same_dataset_at_another_size_is_rewritten_said_out_loud(tmp_path, ray_local,
                                                                     caplog):
    dst = str(tmp_path / "syn")
    small = SyntheticConfig(train_videos=1, test_videos=1, frames_per_video=32)
    generate_synthetic(dst, small, progress=False)
    assert "rewriting" not in caplog.text
    resized = generate_synthetic(dst, SyntheticConfig(train_videos=1, test_videos=1,
                                                      frames_per_video=32, size=(48, 48)),
                                 progress=False)
    assert resized["size"] == [48, 48]
    assert (f"{dst} holds synthetic at 32x32 frames: rewriting every video at 48x48 (models "
            "trained on the old size no longer score it)") in caplog.text


def test_prepare_synthetic_takes_its_endpoint_from_config(s3_bucket, tmp_path):
    """`--config`'s storage: section, as for every other kind: no AWS_ENDPOINT_URL needed."""
    import os
    import subprocess
    import sys

    from memae_dist.data.manifest import load_manifest

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    (tmp_path / "s3.yaml").write_text(f"storage:\n  endpoint_url: {endpoint}\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ENDPOINT_URL", "RAY_ADDRESS")}
    proc = subprocess.run(
        [sys.executable, "-m", "memae_dist.cli", "prepare", "synthetic", "--dst", s3_bucket,
         "--size", "32", "32", "--workers", "1", "--no-progress", "--config", "s3.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_manifest(s3_bucket).name == "synthetic"


def test_the_set_is_sized_from_the_command_line(tmp_path):
    from memae_dist.cli import main
    from memae_dist.data.manifest import load_manifest

    dst = tmp_path / "small"
    assert main(["prepare", "synthetic", "--dst", str(dst), "--videos", "2", "1", "--frames",
                 "40", "--seed", "3", "--workers", "0", "--no-progress"]) == 0
    manifest = load_manifest(str(dst))
    videos = {split: [v.num_frames for v in manifest.videos(split)]
              for split in ("train", "test")}
    assert videos == {"train": [40, 40], "test": [40]}
