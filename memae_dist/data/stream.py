"""Ray Data pipeline: Parquet frame segments in storage -> shuffled 16-frame clips on each worker.

Frames are stored once, as overlapping segments; clips are cut here, at read time, so the store
holds ~1.13 frames per frame instead of 16 (one copy per window). Each training worker receives
its share through Ray Train's ``DataConfig`` (``streaming_split``): no worker ever holds the
whole dataset, and nodes need not share a disk.

Each shard is fetched whole, in one request, and parsed in memory: Ray's Parquet reader fetched
each shard's footer three times as 64 KiB reads before the data, which for shards of a few
hundred KiB read 1.8x the stored bytes per epoch (measured in bench/data_pipeline.py). A shard
is one video, so a read task holds at most one video's compressed frames, and its windows leave
in blocks of at most ``BLOCK_BYTES``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from ray.data.datasource import FileShuffleConfig

from memae_dist.data.config import DataConfig
from memae_dist.data.manifest import check_window, load_manifest
from memae_dist.data.shards import damage_reported, open_shard, owned_window_starts
from memae_dist.data.storage import StorageConfig, is_remote, join, portable_fs, pyarrow_fs
from memae_dist.errors import UserError

SEGMENT_COLUMNS = ["video", "start", "num_frames", "video_frames", "height", "width", "frames"]
BLOCK_BYTES = 16 * 2**20  # clip bytes per output block: large enough to amortise, small to stream


@dataclass
class EpochShuffle(FileShuffleConfig):
    """Shard order that depends on (seed, epoch) alone, so a resumed run replays the same order.

    Ray numbers the executions of a dataset from 0 in each driver process; ``first_epoch``
    shifts that count to the epoch the run resumes at.
    """

    first_epoch: int = 0

    def get_seed(self, execution_idx: int = 0) -> int | None:
        if self.seed is None:
            return None
        entropy = [self.seed, self.first_epoch + execution_idx]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class WindowCutter:
    """Turns whole shard files into every window their segments own, as uint8 clips."""

    def __init__(self, window: int, stride: int, segment_frames: int, overlap: int,
                 video_ids: dict[str, int], segments_per_block: int = 4,
                 scheme: str = ""):
        # Torch batches carry numbers only: videos travel as their index in the split.
        self.video_ids = video_ids
        self.scheme = scheme  # "s3://" turns a shard's path in its filesystem into its URI
        self.window = window
        self.stride = stride
        self.segment_frames = segment_frames
        self.overlap = overlap
        self.segments_per_block = segments_per_block

    def __call__(self, batch: dict[str, np.ndarray]):
        """Yield blocks of windows from a batch of shard files (columns ``bytes``, ``path``)."""
        for data, path in zip(batch["bytes"], batch["path"]):
            shard = open_shard(pa.BufferReader(data))  # one row group per segment
            groups = shard.num_row_groups
            for first in range(0, groups, self.segments_per_block):
                rows = range(first, min(first + self.segments_per_block, groups))
                with damage_reported(self.scheme + path):
                    table = shard.read_row_groups(rows, columns=SEGMENT_COLUMNS)
                cut = self.cut({c: table.column(c).to_numpy(zero_copy_only=False)
                                for c in SEGMENT_COLUMNS})
                yield from self._split(cut)

    def _split(self, cut: dict[str, np.ndarray]):
        n = len(cut["start"])
        if n == 0:
            return
        per_block = max(1, BLOCK_BYTES // max(1, cut["clip"][0].nbytes))
        for i in range(0, n, per_block):
            yield {k: v[i : i + per_block] for k, v in cut.items()}

    def cut(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every window owned by a batch of segments (columns as in SEGMENT_COLUMNS)."""
        clips, videos, starts = [], [], []
        for i in range(len(batch["start"])):
            n, h, w = int(batch["num_frames"][i]), int(batch["height"][i]), int(batch["width"][i])
            seg_start = int(batch["start"][i])
            frames = np.frombuffer(batch["frames"][i], dtype=np.uint8).reshape(n, h, w)
            owned = owned_window_starts(
                seg_start, n, int(batch["video_frames"][i]), self.segment_frames,
                self.overlap, self.window, self.stride,
            )
            if len(owned) == 0:
                continue
            # (n - L + 1, H, W, L) view; no copy until the owned windows are gathered.
            view = np.lib.stride_tricks.sliding_window_view(frames, self.window, axis=0)
            clips.append(np.ascontiguousarray(view[owned - seg_start].transpose(0, 3, 1, 2)))
            videos.append(np.full(len(owned), self.video_ids[str(batch["video"][i])], np.int32))
            starts.append(owned.astype(np.int32))
        if not clips:
            return {
                "clip": np.zeros((0, self.window, 1, 1), np.uint8),
                "video": np.zeros((0,), np.int32),
                "start": np.zeros((0,), np.int32),
            }
        return {
            "clip": np.concatenate(clips),  # (N, L, H, W) uint8
            "video": np.concatenate(videos),  # (N,) index into the split's videos
            "start": np.concatenate(starts),
        }


def shard_uris(data_uri: str, split: str,
               storage: StorageConfig | None = None) -> tuple[list[str], dict]:
    """The split's shard URIs and the manifest, refusing windows the segments cannot hold."""
    manifest = load_manifest(data_uri, storage)
    videos = manifest.videos(split)
    if not videos:
        raise UserError(f"{join(data_uri, 'manifest.json')}: split '{split}' has no videos")
    return [manifest.shard_uri(data_uri, v) for v in videos], manifest


def window_dataset(
    data_uri: str,
    cfg: DataConfig,
    split: str | None = None,
    *,
    seed: int | None = 0,
    first_epoch: int = 0,
    storage: StorageConfig | None = None,
):
    """A Ray Dataset of clips ``{"clip": (L, H, W) uint8, "video": int, "start": int}``.

    ``seed=None`` shuffles shards differently in every run; an integer makes the shard order a
    function of (seed, epoch), which exact resumption relies on.
    """
    import ray.data

    split = split or cfg.train_split
    uris, manifest = shard_uris(data_uri, split, storage)
    check_window(manifest, cfg, data_uri)
    fs, _ = portable_fs(data_uri, storage)
    paths = [pyarrow_fs(u, storage)[1] for u in uris]
    ds = ray.data.read_binary_files(
        paths,
        filesystem=fs,
        include_paths=True,  # names a damaged shard
        shuffle=EpochShuffle(seed=seed, first_epoch=first_epoch),
    )
    ids = {v.name: i for i, v in enumerate(manifest.videos(split))}
    cutter = WindowCutter(cfg.window, cfg.stride, manifest.segment_frames,
                          manifest.segment_overlap, ids, cfg.segments_per_block,
                          scheme="s3://" if is_remote(data_uri) else "")
    return ds.map_batches(cutter, batch_format="numpy", batch_size=1)
