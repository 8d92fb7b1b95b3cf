"""Scoring a prepared split with a trained model, in one process (the reference path).

Every window of stride 1 in every video is reconstructed; its error becomes the score of the
window's 9th frame (the paper's protocol, see ``protocol.py``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from memae_dist.config import ExperimentConfig, from_dict
from memae_dist.data.manifest import load_manifest
from memae_dist.data.shards import read_video_frames
from memae_dist.data.storage import StorageConfig, join, read_bytes
from memae_dist.errors import UserError
from memae_dist.evaluate.protocol import VideoScores, frame_scores_from_windows, window_error
from memae_dist.models import MemAE, build_model
from memae_dist.train.checkpoint import STATE_FILE, read_checkpoint_config, resolve_checkpoint


@dataclass
class LoadedModel:
    model: MemAE
    config: ExperimentConfig
    checkpoint_uri: str


def load_model(uri: str, storage: StorageConfig | None = None) -> LoadedModel:
    """A model from a checkpoint URI or a run URI (its latest checkpoint), in eval mode."""
    ckpt = resolve_checkpoint(uri, storage)
    cfg = from_dict(ExperimentConfig, read_checkpoint_config(ckpt, storage))
    model = build_model(cfg.model)
    blob = read_bytes(join(ckpt, STATE_FILE), storage)
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {join(ckpt, STATE_FILE)}: {exc}") from None
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedModel(model, cfg, ckpt)


def window_batches(frames: np.ndarray, window: int, batch_size: int):
    """Yield (starts, clips) with clips (B, L, H, W) uint8 for every stride-1 window."""
    view = np.lib.stride_tricks.sliding_window_view(frames, window, axis=0)  # (n, H, W, L)
    for lo in range(0, view.shape[0], batch_size):
        hi = min(lo + batch_size, view.shape[0])
        yield np.arange(lo, hi), np.ascontiguousarray(view[lo:hi].transpose(0, 3, 1, 2))


@torch.no_grad()
def score_clips(model: MemAE, clips: np.ndarray, error: str = "mse") -> np.ndarray:
    """uint8 clips (B, L, H, W) -> one reconstruction error per clip, on [-1, 1] inputs."""
    x = torch.from_numpy(clips).float().div_(127.5).sub_(1.0).unsqueeze(1)  # (B, 1, L, H, W)
    recon = model(x).recon
    return window_error(recon, x, kind=error).double().numpy()


def score_split(
    loaded: LoadedModel,
    data_uri: str,
    split: str = "test",
    error: str = "mse",
    batch_size: int = 32,
    storage: StorageConfig | None = None,
) -> list[VideoScores]:
    manifest = load_manifest(data_uri, storage)
    window = loaded.config.data.window
    videos = manifest.videos(split)
    if not videos:
        raise UserError(f"{join(data_uri, 'manifest.json')}: split '{split}' has no videos")
    out = []
    for video in videos:
        if video.num_frames < window:
            continue  # too short for a single window: no frame of it can be scored
        frames, _ = read_video_frames(manifest.shard_uri(data_uri, video), storage)
        starts, errors = [], []
        for s, clips in window_batches(frames, window, batch_size):
            starts.append(s)
            errors.append(score_clips(loaded.model, clips, error))
        frame_idx, scores = frame_scores_from_windows(
            video.num_frames, np.concatenate(starts), np.concatenate(errors), window
        )
        labels = manifest.frame_labels(video)[frame_idx]
        out.append(VideoScores(video.name, frame_idx, scores, labels))
    return out
