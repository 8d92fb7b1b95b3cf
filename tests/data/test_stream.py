"""Ray Data streaming: every window exactly once with the right frames, from disk and from S3,
split across 1..n consumers, with a shard order that is a function of (seed, epoch)."""

import functools
import threading

import numpy as np
import pytest

from memae_dist.data.config import DataConfig
from memae_dist.data.manifest import load_manifest
from memae_dist.data.stream import EpochShuffle, window_dataset
from memae_dist.data.writer import VideoSpec, write_dataset
from memae_dist.errors import UserError

SIZE = (8, 12)
TRAIN = {"a": 40, "b": 16, "c": 130, "d": 61, "e": 33, "f": 47}  # c spans 5 segments of 32
TEST = {"x": 15, "y": 60}  # x is shorter than a window: no windows at all


def video_frames(seed: int, n: int) -> np.ndarray:
    """(n, H, W) uint8 frames, different in every frame and video."""
    return np.random.default_rng(seed).integers(0, 256, (n, *SIZE), dtype=np.uint8)


def load(seed: int, n: int, ranges):
    return video_frames(seed, n), ranges


def _specs():
    specs = [VideoSpec("train", k, functools.partial(load, i, n, None))
             for i, (k, n) in enumerate(TRAIN.items())]
    specs += [VideoSpec("test", k, functools.partial(load, 100 + i, n, []))
              for i, (k, n) in enumerate(TEST.items())]
    return specs


def _seeds(split):
    lengths = TRAIN if split == "train" else TEST
    offset = 0 if split == "train" else 100
    return {k: (offset + i, n) for i, (k, n) in enumerate(lengths.items())}


def _write(dst):
    # Short segments so that windows come from several segments of one video.
    write_dataset(_specs(), dst, SIZE, name="stream", source="unit", segment_frames=32,
                  progress=False)
    return dst


def _check_windows(rows, dst, split, window, stride, dropped=0):
    """Each (video, start) at most once, all but ``dropped`` windows present, clips equal to
    the frames."""
    manifest = load_manifest(dst)
    names = [v.name for v in manifest.videos(split)]
    seeds = _seeds(split)
    seen = list(zip(rows["video"].tolist(), rows["start"].tolist()))
    assert len(seen) == len(set(seen)) == manifest.n_windows(split, window, stride) - dropped
    expected = {(i, t) for i, name in enumerate(names)
                for t in range(0, seeds[name][1] - window + 1, stride)}
    assert set(seen) <= expected
    for clip, (vid, start) in zip(rows["clip"], seen):
        frames = video_frames(*seeds[names[vid]])
        np.testing.assert_array_equal(clip, frames[start : start + window])


def _take_all(ds) -> dict:
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {k: np.concatenate([b[k] for b in batches]) for k in ("clip", "video", "start")}


def test_windows_exactly_once_and_shard_order_per_epoch(tmp_path, ray_local):
    import ray.data

    dst = _write(str(tmp_path / "ds"))
    for split, window, stride in (("train", 5, 3), ("test", 16, 2)):
        cfg = DataConfig(window=window, stride=stride)
        rows = _take_all(window_dataset(dst, cfg, split))
        assert rows["clip"].shape[1:] == (window, *SIZE) and rows["clip"].dtype == np.uint8
        _check_windows(rows, dst, split, window, stride)

    # The shard order depends on (seed, epoch) alone: the same in a fresh run, new each epoch.
    ctx = ray.data.DataContext.get_current()
    saved, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        def video_order(ds):
            videos = np.concatenate([b["video"] for b in ds.iter_batches(
                batch_size=None, batch_format="numpy")])
            return [int(v) for v in dict.fromkeys(videos.tolist())]  # first appearances

        ds = window_dataset(dst, DataConfig(), seed=7)
        epoch0, epoch1 = video_order(ds), video_order(ds)  # two executions: two epochs
        assert sorted(epoch0) == sorted(epoch1) == list(range(6)) and epoch0 != epoch1
        # A run resumed at epoch 1 (a fresh driver: executions counted from 0 again).
        assert video_order(window_dataset(dst, DataConfig(), seed=7, first_epoch=1)) == epoch1
    finally:
        ctx.execution_options.preserve_order = saved


def test_epoch_shuffle_seed_is_a_function_of_seed_and_epoch():
    base = EpochShuffle(seed=3)
    assert base.get_seed(0) == EpochShuffle(seed=3).get_seed(0) != base.get_seed(1)
    assert EpochShuffle(seed=3, first_epoch=2).get_seed(0) == base.get_seed(2)
    assert EpochShuffle(seed=4).get_seed(0) != base.get_seed(0)
    assert EpochShuffle(seed=None).get_seed(5) is None  # unseeded: new order every run


def test_windows_longer_than_the_data_allows_are_refused(tmp_path, ray_local):
    dst = _write(str(tmp_path / "ds"))
    with pytest.raises(UserError, match=r"data.window=17 .*segments overlap by 15"):
        window_dataset(dst, DataConfig(window=17))
    with pytest.raises(UserError, match=r"shortest training video \(15 frames\)"):
        window_dataset(dst, DataConfig(window=16, train_split="test"))


def test_streaming_split_from_s3(s3_bucket, ray_local, consumers=3):
    """Consumers (training workers) each stream a disjoint, equal part, as Ray Train splits it."""
    dst = _write(s3_bucket)
    ds = window_dataset(dst, DataConfig(), seed=None)
    parts = ds.streaming_split(consumers, equal=True)  # what ray.train.DataConfig does
    got: list[dict] = [None] * consumers

    def consume(rank):
        batches = list(parts[rank].iter_torch_batches(
            batch_size=8, local_shuffle_buffer_size=32, prefetch_batches=2))
        assert all(b["clip"].dtype.is_floating_point is False for b in batches)
        got[rank] = {k: np.concatenate([b[k].numpy() for b in batches]) if batches else
                     np.zeros((0,)) for k in ("clip", "video", "start")}

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(consumers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(g is not None for g in got), "a consumer failed"
    total = load_manifest(dst).n_windows("train", 16)
    sizes = [len(g["start"]) for g in got]
    # Equal shares (a remainder of < consumers windows is dropped per epoch); nobody holds all.
    assert sizes == [total // consumers] * consumers, (sizes, total)
    merged = {k: np.concatenate([g[k] for g in got]) for k in got[0]}
    _check_windows(merged, dst, "train", 16, 1, dropped=total % consumers)
