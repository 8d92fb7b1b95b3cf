"""The per-epoch validation metric: every worker scores its share of ``data.val_split``.

Videos are dealt round-robin to the workers; each scores windows at stride ``data.stride`` in
eval mode without gradients, then the per-video errors are gathered so every rank computes the
same metrics:

- ``val_recon``: mean window reconstruction error, measured as ``eval.error`` (mse or mae), as
  the run's checkpoints will be scored (an unsupervised proxy: lower is better);
- ``val_auc``: the paper's frame AUC (``evaluate_videos()["auc_paper"]``) when every video of
  the split is labelled and both classes occur among the scored frames. At stride 1 this is
  exactly the evaluation protocol; at stride s it scores every s-th frame. For a dataset of
  still images it is the pooled image AUC (``auc_micro``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.distributed as dist

from memae_dist.data.manifest import load_manifest
from memae_dist.data.shards import read_video_frames
from memae_dist.errors import UserError
from memae_dist.evaluate.protocol import (
    evaluate_videos,
    video_scores_from_windows,
    window_error,
)
from memae_dist.models.build import model_input
from memae_dist.train.step import Worker

log = logging.getLogger("memae_dist.train")


def check_val_split(cfg, manifest=None) -> None:
    """Driver-side: the split exists and suits ``train.checkpoint_metric`` (fail before Ray).

    ``manifest``: the dataset's, when the caller has loaded it already."""
    metric = cfg.train.checkpoint_metric
    split = cfg.data.val_split
    if metric.startswith("val_") and not split:
        raise UserError(f"train.checkpoint_metric={metric} needs data.val_split to be set")
    if not split:
        return
    if split == cfg.data.train_split:
        raise UserError(f"data.val_split must differ from data.train_split, both are {split!r}")
    manifest = manifest or load_manifest(cfg.data.path, cfg.storage)
    videos = [v for v in manifest.videos(split)
              if v.num_frames >= cfg.data.window]
    if not videos:
        raise UserError(f"data.val_split={split}: no video has data.window={cfg.data.window} "
                        "frames")
    if metric == "val_auc" and not (all(v.labelled for v in videos)
                                     and any(v.abnormal for v in videos)):
        raise UserError(f"train.checkpoint_metric=val_auc needs labelled anomalies in split "
                        f"'{split}'; use val_recon for an unlabelled split")


class Validator:
    """Holds the worker's share of the split (frames cached after the first epoch)."""

    def __init__(self, w: Worker):
        cfg = w.cfg
        self.w = w
        self.manifest = load_manifest(cfg.data.path, cfg.storage)
        self.videos = [v for v in self.manifest.videos(cfg.data.val_split)
                       if v.num_frames >= cfg.data.window]
        self.mine = self.videos[w.rank::w.world]
        self._frames: dict[str, np.ndarray] = {}

    def frames(self, video) -> np.ndarray:
        if video.name not in self._frames:
            uri = self.manifest.shard_uri(self.w.cfg.data.path, video)
            self._frames[video.name] = read_video_frames(uri, self.w.cfg.storage)[0]
        return self._frames[video.name]  # (N, H, W) uint8

    @torch.no_grad()
    def score_mine(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(video, window starts, window errors) for this worker's videos."""
        w, window = self.w, self.w.cfg.data.window
        batch = max(w.cfg.train.micro_batch_size, 1)
        out = []
        was_training = w.model.training
        w.model.eval()
        try:
            for video in self.mine:
                frames = self.frames(video)
                starts = np.arange(0, video.num_frames - window + 1, w.cfg.data.stride)
                view = np.lib.stride_tricks.sliding_window_view(frames, window, axis=0)
                errors = []
                for lo in range(0, len(starts), batch):
                    clips = view[starts[lo:lo + batch]].transpose(0, 3, 1, 2)  # (B, L, H, W)
                    x = model_input(torch.from_numpy(np.ascontiguousarray(clips)),
                                    w.cfg.model.arch)
                    x = x.to(w.device).contiguous(memory_format=w.memory_format)
                    with w.precision.autocast():
                        recon = w.model(x).recon
                    err = window_error(recon.float(), x, w.cfg.eval.error)
                    errors.append(err.double().cpu().numpy())
                out.append((video.name, starts, np.concatenate(errors)))
        finally:
            w.model.train(was_training)
        return out

    def run(self) -> dict:
        scored = self.score_mine()
        if self.w.world > 1:
            parts: list = [None] * self.w.world
            dist.all_gather_object(parts, scored)
            scored = [item for part in parts for item in part]
        return self.metrics(scored)

    def metrics(self, scored) -> dict:
        errors = np.concatenate([e for _, _, e in scored])
        out = {"val_recon": float(errors.mean()), "val_windows": int(errors.size)}
        window = self.w.cfg.data.window
        if not all(v.labelled for v in self.videos):
            return out
        by_name = {v.name: v for v in self.videos}
        videos = [video_scores_from_windows(name, by_name[name].num_frames, starts, errs,
                                            by_name[name].abnormal, window)
                  for name, starts, errs in scored]
        # Still images have no per-video scale to normalise away: their AUC is the pooled one.
        key = "auc_micro" if self.manifest.content == "images" else "auc_paper"
        auc = evaluate_videos(videos)[key]
        if auc is not None:  # undefined when the scored frames hold a single class
            out["val_auc"] = auc
        return out
