"""Scoring a prepared split with a trained model: the per-segment kernel and the in-process path.

Every window of stride 1 in every video is reconstructed; its error becomes the score of the
window's 9th frame (the paper's protocol, see ``protocol.py``).

Windows are cut from the stored segments, and each segment's windows go through the model in
chunks of ``batch_size`` counted from the segment's first window. The batch composition therefore
depends only on the data and ``batch_size``, never on how work is spread over processes, which is
what makes one process and N Ray workers give bit-identical scores at the same threads per
process (oneDNN picks a different kernel for a batch of one than for larger batches, and may sum
in another order with another thread count, so both matter in the last bits).
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from memae_dist.config import ExperimentConfig, from_dict
from memae_dist.data.manifest import Manifest, VideoEntry, check_model_input, load_manifest
from memae_dist.data.shards import damage_reported, open_shard, owned_window_starts
from memae_dist.data.storage import (
    StorageConfig,
    exists,
    is_file,
    join,
    pyarrow_fs,
    read_bytes,
    user_errors,
)
from memae_dist.errors import UserError
from memae_dist.evaluate.protocol import VideoScores, frame_scores_from_windows, window_error
from memae_dist.models import MemAE, build_model
from memae_dist.models.build import model_input
from memae_dist.models.fuse import for_inference, inference_layout
from memae_dist.train.checkpoint import (
    CONFIG_FILE,
    STATE_FILE,
    is_complete,
    read_checkpoint_config,
    resolve_checkpoint,
    torch_load,
    unreadable_state,
)

log = logging.getLogger("memae_dist.score")
SEGMENT_COLUMNS = ["video", "start", "num_frames", "video_frames", "height", "width", "frames"]
PRECISIONS = ("auto", "fp32", "bf16")
CHECKPOINT_IS = (f"give a checkpoint folder (with {STATE_FILE} and {CONFIG_FILE}), its "
                 f"{STATE_FILE}, or a run folder (meaning its latest checkpoint)")


@dataclass
class LoadedModel:
    model: MemAE
    config: ExperimentConfig
    checkpoint_uri: str
    # What it was trained on ({"size": [H, W]}); empty for checkpoints older than the record.
    trained_on: dict = field(default_factory=dict)


def read_model_state(uri: str, storage: StorageConfig | None = None
                     ) -> tuple[str, dict, dict, dict]:
    """(checkpoint URI, experiment config dict, model state dict, training data record) of a
    checkpoint or run URI; the record is empty for checkpoints older than it.

    A run still training prunes its old checkpoints: the latest one, gone while it was read,
    is replaced by the run's new latest (a few times at most)."""
    for attempt in range(3):
        ckpt = _resolved(uri, storage)
        try:
            _check_complete(ckpt, storage)
            return _read_checkpoint(ckpt, storage)
        except UserError:
            # Pruning deletes a checkpoint's files in no fixed order: any of them gone counts.
            pruned = ckpt.rstrip("/") != uri.rstrip("/") and not is_complete(ckpt, storage)
            if not pruned or attempt == 2:
                raise
            log.info("%s was pruned while it was read; reading the run's latest again", ckpt)
    raise AssertionError("unreachable")


def _read_checkpoint(ckpt: str, storage: StorageConfig | None) -> tuple[str, dict, dict, dict]:
    config = read_checkpoint_config(ckpt, storage)
    state_uri = join(ckpt, STATE_FILE)
    blob = read_bytes(state_uri, storage)
    try:
        state = torch_load(io.BytesIO(blob))
    except Exception as exc:
        raise unreadable_state(state_uri, exc) from None
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise UserError(f"{state_uri} is not a memae-dist checkpoint (a torch file without its "
                        "'model' weights; checkpoints are written by 'memae-dist train')")
    trained_on = state.get("data")
    return ckpt, config, weights, trained_on if isinstance(trained_on, dict) else {}


def _resolved(uri: str, storage: StorageConfig | None) -> str:
    """The checkpoint ``uri`` means, or one line saying what a checkpoint is."""
    if is_file(uri, storage):
        if uri.rstrip("/").rsplit("/", 1)[-1] != STATE_FILE:
            raise UserError(f"{uri} is a file, not a checkpoint: {CHECKPOINT_IS}")
        if "/" not in uri:
            uri = f"./{uri}"  # a bare "state.pt" still names the folder it is in
    return resolve_checkpoint(uri, storage)


def _check_complete(ckpt: str, storage: StorageConfig | None) -> None:
    if not exists(join(ckpt, CONFIG_FILE), storage):
        raise UserError(f"{ckpt} has {STATE_FILE} but no {CONFIG_FILE}, so it is not a "
                        f"complete checkpoint: {CHECKPOINT_IS}")


def model_from_state(config: dict, state: dict, where: str = "checkpoint"
                     ) -> tuple[MemAE, ExperimentConfig]:
    """An eval-mode model from a config dict and a state dict (what Ray actors receive);
    ``where`` names the checkpoint in errors."""
    cfg = from_dict(ExperimentConfig, config)
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        # PyTorch's first line is a header ("Error(s) in loading state_dict for MemAE:"); the
        # first mismatch below it says which weight, and the shapes.
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
        raise UserError(f"{where}: weights do not fit its {CONFIG_FILE} ({detail})") from None
    model.eval()
    return model, cfg


def load_model(uri: str, storage: StorageConfig | None = None) -> LoadedModel:
    """A model from a checkpoint URI or a run URI (its latest checkpoint), in eval mode."""
    ckpt, config, state, trained_on = read_model_state(uri, storage)
    model, cfg = model_from_state(config, state, ckpt)
    return LoadedModel(model, cfg, ckpt, trained_on)


def use_bf16(precision: str, device: torch.device) -> bool:
    """``auto`` means bf16 autocast on a GPU and plain fp32 on a CPU."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


@torch.no_grad()
def score_clips(model: MemAE, clips: np.ndarray, error: str = "mse",
                device: torch.device | None = None, bf16: bool = False,
                arch: str = "video") -> np.ndarray:
    """uint8 clips (B, L, H, W) -> one reconstruction error per clip (float64), on [-1, 1] inputs.

    The uint8 clips travel to the device before the conversion: 4x less to copy to a GPU.
    """
    device = device or torch.device("cpu")
    x = model_input(torch.from_numpy(clips).to(device, non_blocking=True), arch)
    x = x.contiguous(memory_format=inference_layout(device, arch))
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    with autocast:
        recon = model(x).recon
    # The error itself is always reduced in fp32, even after a bf16 forward pass.
    return window_error(recon.float(), x, kind=error).double().cpu().numpy()


def score_windows(model: MemAE, clips: np.ndarray, batch_size: int, error: str = "mse",
                  device: torch.device | None = None, bf16: bool = False,
                  arch: str = "video") -> np.ndarray:
    """(N,) errors of clips (N, L, H, W), in chunks of ``batch_size`` starting at clip 0."""
    if len(clips) == 0:
        return np.zeros(0, np.float64)
    return np.concatenate([
        score_clips(model, clips[lo:lo + batch_size], error, device, bf16, arch)
        for lo in range(0, len(clips), batch_size)
    ])


class SegmentScorer:
    """Segments in, window errors out: the callable Ray Data runs in each actor of the pool.

    The model is built once per actor: from ``checkpoint`` (a concrete checkpoint URI, read
    with ``storage`` like the shards), or from ``model=(config dict, state dict)`` in-process.
    """

    def __init__(self, checkpoint: str | None = None, *, window: int, segment_frames: int,
                 overlap: int, error: str = "mse", batch_size: int = 32,
                 precision: str = "auto", use_gpu: bool = False, threads: int | None = None,
                 storage: StorageConfig | None = None, model: tuple[dict, dict] | None = None):
        if threads:
            torch.set_num_threads(threads)
        cuda = use_gpu and torch.cuda.is_available()
        if use_gpu and not cuda:
            log.warning("a GPU was asked for but torch sees none (CPU-only torch build?); "
                        "scoring on the CPU")
        self.device = torch.device("cuda" if cuda else "cpu")
        if model is None:
            if checkpoint is None:
                raise ValueError("SegmentScorer needs a checkpoint URI or model=(config, state)")
            checkpoint, config, state, _ = read_model_state(checkpoint, storage)
        else:
            # The driver's copy, through Ray's object store when it comes from the driver: a
            # run still training may have pruned the checkpoint since it was read.
            if not isinstance(model, tuple):
                import ray

                model = ray.get(model)
            config, state = model
        model, cfg = model_from_state(config, state, checkpoint or "checkpoint")
        self.arch = cfg.model.arch
        self.model = for_inference(model, self.device, self.arch)
        self.bf16 = use_bf16(precision, self.device)
        self.window, self.segment_frames, self.overlap = window, segment_frames, overlap
        self.error, self.batch_size = error, batch_size
        self.storage = storage

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of segments, or of ``{"uri", "row_group"}`` items naming segments to read."""
        if "frames" not in batch:
            batch = read_segments(batch["uri"], batch["row_group"], self.storage)
        videos, starts, errors = [], [], []
        for i in range(len(batch["start"])):
            n, h, w = int(batch["num_frames"][i]), int(batch["height"][i]), int(batch["width"][i])
            seg_start = int(batch["start"][i])
            owned = owned_window_starts(seg_start, n, int(batch["video_frames"][i]),
                                        self.segment_frames, self.overlap, self.window)
            if len(owned) == 0:
                continue
            frames = np.frombuffer(batch["frames"][i], dtype=np.uint8).reshape(n, h, w)
            view = np.lib.stride_tricks.sliding_window_view(frames, self.window, axis=0)
            clips = np.ascontiguousarray(view[owned - seg_start].transpose(0, 3, 1, 2))
            errors.append(score_windows(self.model, clips, self.batch_size, self.error,
                                        self.device, self.bf16, self.arch))
            starts.append(owned.astype(np.int32))
            videos.append(np.full(len(owned), str(batch["video"][i]), dtype=object))
        if not errors:
            return {"video": np.zeros(0, object), "start": np.zeros(0, np.int32),
                    "error": np.zeros(0, np.float64)}
        return {"video": np.concatenate(videos), "start": np.concatenate(starts),
                "error": np.concatenate(errors)}


def read_segments(uris, row_groups, storage: StorageConfig | None = None
                  ) -> dict[str, np.ndarray]:
    """Segments (one Parquet row group each) as the numpy batch a ``SegmentScorer`` takes.

    Scoring actors read their own segments straight from storage: frames never pass through
    Ray's object store, and work is spread one segment at a time.
    """
    tables = []
    for uri, group in zip(uris, row_groups):
        uri = str(uri)
        fs, path = pyarrow_fs(uri, storage)
        with user_errors(uri, "read shard", storage), damage_reported(uri):
            with fs.open_input_file(path) as fh:
                tables.append(open_shard(fh).read_row_group(int(group), columns=SEGMENT_COLUMNS))
    table = pa.concat_tables(tables)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in SEGMENT_COLUMNS}


def segment_items(manifest: Manifest, data_uri: str, video: VideoEntry) -> dict[str, list]:
    """``{"uri", "row_group"}`` of every segment of a video (one row group per segment)."""
    rows = manifest.shard_entry(video).rows
    uri = manifest.shard_uri(data_uri, video)
    return {"uri": [uri] * rows, "row_group": list(range(rows))}


def check_scorable(manifest: Manifest, cfg: ExperimentConfig, data_uri: str,
                   trained_on: dict | None = None) -> None:
    """Refuse data this checkpoint cannot score, naming the dataset and the setting.

    ``trained_on``: the checkpoint's record of its training data. A convolutional net runs on
    any frame size, but its memory holds features of objects at the training scale: errors at
    another scale are not the ones it learned to tell apart, so a mismatch is refused."""
    check_model_input(manifest, cfg.model, data_uri)
    size = tuple((trained_on or {}).get("size") or ())
    if size and size != tuple(manifest.size):
        raise UserError(f"dataset {data_uri} has {manifest.size[0]}x{manifest.size[1]} frames, "
                        f"but the checkpoint was trained on {size[0]}x{size[1]}: prepare the "
                        f"data again with --size {size[0]} {size[1]}")
    if cfg.data.window > manifest.segment_overlap + 1:
        raise UserError(
            f"data.window={cfg.data.window} of the checkpoint is longer than dataset {data_uri} "
            f"supports (segment_overlap={manifest.segment_overlap})")


def score_split(
    loaded: LoadedModel,
    data_uri: str,
    split: str = "test",
    error: str = "mse",
    batch_size: int = 32,
    storage: StorageConfig | None = None,
) -> list[VideoScores]:
    """Score every video of ``split`` in this process (no Ray); the reference path."""
    manifest = load_manifest(data_uri, storage)
    check_scorable(manifest, loaded.config, data_uri, loaded.trained_on)
    window = loaded.config.data.window
    videos = manifest.videos(split)
    if not videos:
        raise UserError(f"{join(data_uri, 'manifest.json')}: split '{split}' has no videos")
    scorer = SegmentScorer(model=(loaded.config.to_dict(), loaded.model.state_dict()),
                           window=window,
                           segment_frames=manifest.segment_frames,
                           overlap=manifest.segment_overlap, error=error, batch_size=batch_size,
                           precision="fp32", storage=storage)
    out = []
    for video in videos:
        if video.num_frames < window:
            continue  # too short for a single window: no frame of it can be scored
        result = scorer(segment_items(manifest, data_uri, video))
        frame_idx, scores = frame_scores_from_windows(
            video.num_frames, result["start"], result["error"], window)
        labels = manifest.frame_labels(video)[frame_idx]
        out.append(VideoScores(video.name, frame_idx, scores, labels))
    return out
