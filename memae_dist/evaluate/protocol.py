"""Frame-level evaluation protocol of MemAE (Gong et al., ICCV 2019) for video anomaly detection.

A model scores 16-frame windows; each window's reconstruction error is assigned to the window's
9th frame (offset 8). With stride-1 windows a video of N frames yields N - 15 scores for frames
8 .. N - 8, so the first 8 and last 7 frames of every video are never scored and their labels
are dropped from the evaluation. Other window lengths score their middle frame (offset L // 2);
a "window" of one frame, a still image, scores itself.

The paper normalises the errors of each video to [0, 1] (min-max), reports a "regularity score"
1 - s, and computes one frame-level ROC AUC over the pooled frames of all test videos using the
normalised abnormality s. ``evaluate_videos`` reports that number as ``auc_paper`` next to the
un-normalised pooled AUC (``auc_micro``) and the mean of per-video AUCs, because the three are
often confused in follow-up work and differ noticeably.

Pure numpy + scikit-learn: importing this module does not import torch or Ray.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from memae_dist.data.atomic import atomic_local
from memae_dist.evaluate.definitions import METRICS, PROTOCOL_HELP, PROTOCOLS  # noqa: F401
from memae_dist.evaluate.thresholds import deployment_thresholds

WINDOW_LENGTH = 16
FRAME_COLUMNS = ("video", "frame", "score", "regularity", "label")


def target_offset_for(window_length: int) -> int:
    """The frame of a window its score belongs to: the middle one (``L // 2``)."""
    return window_length // 2


TARGET_OFFSET = target_offset_for(WINDOW_LENGTH)  # the 9th of 16 frames, as in the official code


def window_frame_index(window_start, window_length: int = WINDOW_LENGTH,
                       target_offset: int | None = None):
    """Frame index a window's score is assigned to: ``window_start + target_offset``.

    Works on an int or an integer array of starts; the offset defaults to the window's middle.
    """
    if target_offset is None:
        target_offset = target_offset_for(window_length)
    if not 0 <= target_offset < window_length:
        raise ValueError(
            f"target_offset must be in [0, {window_length}), got {target_offset}")
    return window_start + target_offset


def frame_scores_from_windows(video_frames: int, window_starts, window_scores,
                              window_length: int = WINDOW_LENGTH,
                              target_offset: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Map per-window scores of one video to per-frame scores, sorted by frame.

    Returns ``(frames, scores)`` as int64 and float64 arrays. Raises ValueError when a start
    does not leave a full window inside the video, when a start repeats, or on length mismatch.
    """
    starts = np.asarray(window_starts, dtype=np.int64).reshape(-1)
    scores = np.asarray(window_scores, dtype=np.float64).reshape(-1)
    if starts.shape != scores.shape:
        raise ValueError(
            f"got {starts.size} window starts but {scores.size} window scores")
    last_start = video_frames - window_length
    bad = starts[(starts < 0) | (starts > last_start)]
    if bad.size:
        raise ValueError(
            f"window start {int(bad[0])} out of range for a video of {video_frames} frames "
            f"and windows of {window_length} (valid starts: 0..{last_start})")
    order = np.argsort(starts, kind="stable")
    starts, scores = starts[order], scores[order]
    if starts.size > 1 and np.any(np.diff(starts) == 0):
        dup = int(starts[1:][np.diff(starts) == 0][0])
        raise ValueError(f"window start {dup} appears more than once")
    return window_frame_index(starts, window_length, target_offset), scores


def labels_from_ranges(num_frames: int,
                       abnormal_ranges: Sequence[Sequence[int]] | None) -> np.ndarray:
    """Per-frame 0/1 labels (uint8) from 0-based inclusive ``[first, last]`` ranges.

    ``None`` (an unlabelled video) and ``[]`` both give all zeros.
    """
    labels = np.zeros(int(num_frames), dtype=np.uint8)
    for rng in abnormal_ranges or ():
        if len(rng) != 2:
            raise ValueError(f"abnormal range must be [first, last], got {list(rng)}")
        first, last = int(rng[0]), int(rng[1])
        if not 0 <= first <= last < num_frames:
            raise ValueError(
                f"abnormal range [{first}, {last}] outside a video of {num_frames} frames")
        labels[first:last + 1] = 1
    return labels


def abnormality(scores) -> np.ndarray:
    """Per-video min-max normalised error ``s = (e - min) / (max - min)``, in [0, 1].

    A constant-score video (max == min) carries no ranking information; it gets all zeros
    rather than NaN so pooled metrics stay defined.
    """
    e = np.asarray(scores, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return e
    lo, hi = float(e.min()), float(e.max())
    if not hi > lo:
        return np.zeros_like(e)
    return (e - lo) / (hi - lo)


def regularity(scores) -> np.ndarray:
    """The paper's regularity score ``1 - s`` (1 = normal); all ones when max == min."""
    return 1.0 - abnormality(scores)


@dataclass
class VideoScores:
    """Per-frame scores of one test video; ``labels`` aligned with ``frames``."""

    name: str
    frames: np.ndarray = field(repr=False)  # (F,) int frame indices that have a score
    scores: np.ndarray = field(repr=False)  # (F,) float raw reconstruction errors
    labels: np.ndarray = field(repr=False)  # (F,) uint8, 1 = abnormal frame

    def __post_init__(self) -> None:
        self.frames = np.asarray(self.frames, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels).reshape(-1).astype(np.uint8)
        n = {self.frames.size, self.scores.size, self.labels.size}
        if len(n) != 1:
            raise ValueError(
                f"video {self.name}: frames, scores and labels differ in length "
                f"({self.frames.size}, {self.scores.size}, {self.labels.size})")
        if not np.all(np.isfinite(self.scores)):
            raise ValueError(f"video {self.name}: scores contain NaN or inf")


def video_scores_from_windows(name: str, video_frames: int, window_starts, window_scores,
                              abnormal_ranges: Sequence[Sequence[int]] | None,
                              window_length: int = WINDOW_LENGTH) -> VideoScores:
    """Build ``VideoScores`` from window scores and the manifest's abnormal ranges."""
    frames, scores = frame_scores_from_windows(
        video_frames, window_starts, window_scores, window_length)
    labels = labels_from_ranges(video_frames, abnormal_ranges)[frames]
    return VideoScores(name, frames, scores, labels)


def _both_classes(labels: np.ndarray) -> bool:
    return labels.size > 0 and 0 < int(labels.sum()) < labels.size


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if _both_classes(labels) else None


def _ap(labels: np.ndarray, scores: np.ndarray) -> float | None:
    # With no normal frame every ranking has precision 1 at each hit: an AP of 1.0 that measures
    # nothing (and would lift the per-video mean by every all-abnormal video), so None, as AUC.
    return float(average_precision_score(labels, scores)) if _both_classes(labels) else None


def equal_error_rate(labels, scores) -> float | None:
    """EER: the rate where false-positive rate equals false-negative rate (1 - TPR).

    Interpolated linearly between the two ROC points that bracket the crossing; None when the
    labels hold a single class.
    """
    labels = np.asarray(labels).reshape(-1)
    if not _both_classes(labels):
        return None
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    diff = (1.0 - tpr) - fpr  # non-increasing along the curve; starts at 1, ends at -1
    i = int(np.argmax(diff <= 0))
    if diff[i] == 0 or i == 0:
        return float(fpr[i])
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def evaluate_videos(videos: Sequence[VideoScores]) -> dict[str, Any]:
    """Frame-level metrics over the test videos (see the module docstring for the protocol).

    Undefined metrics (a single class) are None, never NaN. ``METRICS`` says what each key means.
    """
    if not videos:
        raise ValueError("evaluate_videos needs at least one video")
    labels = np.concatenate([v.labels for v in videos])
    raw = np.concatenate([v.scores for v in videos])
    norm = np.concatenate([abnormality(v.scores) for v in videos])
    per_video = []
    for v in videos:
        s = abnormality(v.scores)
        per_video.append({
            "name": v.name,
            "n_frames": int(v.labels.size),
            "n_abnormal": int(v.labels.sum()),
            "auc": _auc(v.labels, s),
            "ap": _ap(v.labels, s),
            "eer": equal_error_rate(v.labels, s),
        })
    return {
        "auc_paper": _auc(labels, norm),
        "auc_micro": _auc(labels, raw),
        "auc_per_video_mean": _mean(p["auc"] for p in per_video),
        "average_precision": _ap(labels, norm),
        "average_precision_micro": _ap(labels, raw),
        "ap_per_video_mean": _mean(p["ap"] for p in per_video),
        "eer": equal_error_rate(labels, norm),
        "eer_micro": equal_error_rate(labels, raw),
        "eer_per_video_mean": _mean(p["eer"] for p in per_video),
        "n_frames_scored": int(labels.size),
        "n_videos": len(videos),
        "n_abnormal": int(labels.sum()),
        "per_video": per_video,
        "thresholds": deployment_thresholds(labels, raw),
    }


def headline(metrics: dict[str, Any], protocol: str = "paper") -> dict[str, Any]:
    """``{"protocol", "auc", "ap", "eer"}`` picked from ``metrics`` for ``protocol``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    auc, ap, eer = PROTOCOLS[protocol]
    return {"protocol": protocol, "auc": metrics.get(auc), "ap": metrics.get(ap),
            "eer": metrics.get(eer)}


def window_error(recon, clip, kind: str = "mse"):
    """Per-sample reconstruction error, reduced over all but the batch dimension.

    ``kind="mse"`` (the training loss; the official AE test code) or ``"mae"`` (the official MemAE
    scoring script). Duck-typed: numpy arrays give a numpy (B,) array, torch tensors a (B,)
    tensor on the same device, so this module never imports torch.
    """
    if kind not in ("mse", "mae"):
        raise ValueError(f"window error kind must be 'mse' or 'mae', got {kind!r}")
    if tuple(recon.shape) != tuple(clip.shape):
        raise ValueError(
            f"recon shape {tuple(recon.shape)} != clip shape {tuple(clip.shape)}")
    if len(recon.shape) == 0:
        raise ValueError("window_error needs a batch dimension, got a scalar")
    diff = recon - clip  # (B, ...)
    err = diff * diff if kind == "mse" else abs(diff)
    return err.reshape(recon.shape[0], -1).mean(1)  # (B,)


def frame_table(videos: Iterable[VideoScores]) -> list[dict[str, Any]]:
    """One row per scored frame: video, frame, raw score, regularity, label."""
    rows = []
    for v in videos:
        reg = regularity(v.scores)
        for f, s, r, lab in zip(v.frames.tolist(), v.scores.tolist(), reg.tolist(),
                                v.labels.tolist()):
            rows.append({"video": v.name, "frame": f, "score": s, "regularity": r,
                         "label": lab})
    return rows


def _jsonable(obj: Any) -> Any:
    """Plain-Python copy of ``obj`` with numpy scalars unwrapped and NaN/inf turned to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj



def write_metrics(out_dir, metrics: dict[str, Any], table) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``frames.csv`` into ``out_dir``, each atomically.

    ``table`` is a list of row dicts (e.g. from ``frame_table``) or anything with
    ``to_pylist()`` (a pyarrow Table) holding the columns in ``FRAME_COLUMNS``.
    NaN/inf in ``metrics`` become JSON null. Returns the two paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = table.to_pylist() if hasattr(table, "to_pylist") else list(table)
    for i, row in enumerate(rows):
        missing = [c for c in FRAME_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"frame table row {i} lacks column(s) {', '.join(missing)}")
    text = json.dumps(_jsonable(metrics), indent=2, allow_nan=False) + "\n"
    metrics_path, frames_path = out / "metrics.json", out / "frames.csv"
    with atomic_local(frames_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FRAME_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(_jsonable(rows))
    with atomic_local(metrics_path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return metrics_path, frames_path
