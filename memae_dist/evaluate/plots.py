"""Figures for an evaluation run: per-video regularity curves (for a still-image set, per-group
histograms of the error: its images have no order) and the pooled ROC curve.

Uses matplotlib's object API with the Agg canvas rather than pyplot, so plotting never touches
a global backend or window state (safe inside Ray workers and threads). matplotlib is imported
lazily so importing this module stays cheap.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from memae_dist.data.atomic import atomic_local
from memae_dist.data.redact import error_reason
from memae_dist.errors import UserError
from memae_dist.evaluate.protocol import VideoScores, abnormality, regularity

# The temporary sibling ``atomic_local`` writes first: ``.NAME.tmp-<uuid hex>``.
_ATOMIC_TEMP = re.compile(r"\.(.+)\.tmp-[0-9a-f]{32}")


@contextmanager
def writing(target) -> Iterator[None]:
    """An OSError while creating or writing outputs becomes ``cannot write PATH: reason``.

    PATH is the output file the error is about (the file a temporary sibling was to become), or
    ``target`` when the error names none of them: a folder that cannot be made, a full disk."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write {_written(exc, target)}: {_reason(exc)}") from None


def _written(exc: OSError, target) -> str:
    for name in (exc.filename2, exc.filename):  # os.replace: (temp, destination)
        if name is None:
            continue
        folder, base = os.path.split(os.fsdecode(name))
        temp = _ATOMIC_TEMP.fullmatch(base)
        if temp:
            return os.path.join(folder, temp.group(1))
    return os.fspath(target)


def _reason(exc: OSError) -> str:
    # strerror leaves out the paths (a temporary name means nothing to the user).
    if exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return error_reason(exc)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path, title: str) -> Path:
    """Save ``fig`` as PNG at ``path`` via a temp name and ``os.replace``; ``title`` goes into
    the file's Title text, which image viewers and scripts can read without the pixels."""
    out = Path(path)
    with writing(out), atomic_local(out) as fh:
        fig.savefig(fh, format="png", dpi=100,
                    metadata={"Title": title, "Software": "memae-dist"})
    return out


def _abnormal_runs(frames: np.ndarray, labels: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of consecutive abnormal frames as (first, last) frame indices."""
    runs: list[tuple[int, int]] = []
    for f, lab in zip(frames.tolist(), labels.tolist()):
        if not lab:
            continue
        if runs and f == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], f)
        else:
            runs.append((f, f))
    return runs


def _panel_grid(items: Sequence, limit: int, limit_name: str, unit: str):
    """A figure of up to ``limit`` small panels, four a row: (figure, [(axis, item), ...])."""
    if limit < 1:
        raise ValueError(f"{limit_name} must be >= 1, got {limit}")
    shown = list(items)[:limit]
    if not shown:
        raise ValueError(f"a grid of {unit}s needs at least one {unit}")
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = _new_figure(3.2 * ncols, 2.4 * nrows)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    return fig, list(zip(axes, shown))


def plot_score_curves(videos: Sequence[VideoScores], path, max_videos: int = 12) -> Path:
    """Grid of per-video regularity curves with ground-truth abnormal frames shaded red.

    Only the first ``max_videos`` videos are drawn. Returns the PNG path.
    """
    fig, panels = _panel_grid(videos, max_videos, "max_videos", "video")
    for ax, v in panels:
        for first, last in _abnormal_runs(v.frames, v.labels):
            ax.axvspan(first - 0.5, last + 0.5, color="tab:red", alpha=0.25, lw=0)
        ax.plot(v.frames, regularity(v.scores), color="tab:blue", lw=1)
        ax.set_title(str(v.name), fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("frame", fontsize=8)
        ax.set_ylabel("regularity", fontsize=8)
        ax.tick_params(labelsize=7)
    return _save_png(fig, path, f"regularity of {len(panels)} of {len(videos)} videos")


def plot_score_histograms(groups: Sequence[VideoScores], path, max_groups: int = 12) -> Path:
    """Grid of per-group histograms of the raw error, normal and abnormal images apart: the
    still-image counterpart of :func:`plot_score_curves` (images have no order, and the micro
    protocol ranks them by raw error, not by a per-group normalisation)."""
    fig, panels = _panel_grid(groups, max_groups, "max_groups", "group")
    for ax, g in panels:
        _error_histogram(ax, g, labelled=True)
        ax.set_title(str(g.name), fontsize=9)
    return _save_png(fig, path, f"error histograms of {len(panels)} of {len(groups)} groups")


def _error_histogram(ax, g: VideoScores, labelled: bool) -> None:
    scores, labels = np.asarray(g.scores, np.float64), np.asarray(g.labels)
    bins = np.histogram_bin_edges(scores, bins=min(40, max(5, scores.size // 5)))
    if labelled:
        for cls, name, color in ((0, "normal", "tab:blue"), (1, "abnormal", "tab:red")):
            part = scores[labels == cls]
            if part.size:
                ax.hist(part, bins=bins, color=color, alpha=0.6, label=f"{name} ({part.size})")
        ax.legend(fontsize=7)
    else:
        ax.hist(scores, bins=bins, color="tab:grey", label=f"unlabelled ({scores.size})")
    ax.set_xlabel("error", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    ax.tick_params(labelsize=7)


def plot_roc(videos: Sequence[VideoScores], path, images: bool = False) -> Path:
    """Pooled frame-level ROC: per-video normalised scores (the paper) and raw scores; for a
    still-image set (``images``) the raw scores only, its headline (protocol micro).

    When the pooled labels hold a single class the ROC is undefined; the figure says so.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    if not videos:
        raise ValueError("plot_roc needs at least one video")
    labels = np.concatenate([v.labels for v in videos])
    curves = {} if images else {
        "per-video normalised (paper)": np.concatenate([abnormality(v.scores) for v in videos])}
    curves["raw pooled (micro)" if images else "raw pooled"] = np.concatenate(
        [v.scores for v in videos])
    fig = _new_figure(4.5, 4.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    if 0 < labels.sum() < labels.size:
        for (name, scores), style in zip(curves.items(), ("-", "--")):
            fpr, tpr, _ = roc_curve(labels, scores)
            auc = roc_auc_score(labels, scores)
            ax.plot(fpr, tpr, ls=style, lw=1.2, label=f"{name}: AUC {auc:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    title = (f"image-level ROC ({len(videos)} groups, {labels.size} images)" if images
             else f"frame-level ROC ({len(videos)} videos, {labels.size} frames)")
    ax.set_title(title, fontsize=9)
    return _save_png(fig, path, title)


def plot_video(v: VideoScores, path, labelled: bool = True, title: str | None = None) -> Path:
    """One video's regularity score over time; ground-truth abnormal frames shaded red."""
    fig = _new_figure(7.0, 2.4)
    ax = fig.add_subplot()
    if labelled:
        for first, last in _abnormal_runs(v.frames, v.labels):
            ax.axvspan(first - 0.5, last + 0.5, color="tab:red", alpha=0.25, lw=0)
    ax.plot(v.frames, regularity(v.scores), color="tab:blue", lw=1)
    ax.set_ylim(-0.05, 1.05)
    if v.frames.size:
        ax.set_xlim(int(v.frames[0]) - 1, int(v.frames[-1]) + 1)
    ax.set_xlabel("frame", fontsize=8)
    ax.set_ylabel("regularity", fontsize=8)
    ax.tick_params(labelsize=7)
    note = "" if labelled else " (unlabelled)"
    title = title or f"{v.name}{note}"
    ax.set_title(title, fontsize=9)
    return _save_png(fig, path, f"regularity of video {title}")


def plot_group(g: VideoScores, path, labelled: bool = True, title: str | None = None) -> Path:
    """One group of still images: histogram of the raw error, normal and abnormal apart."""
    fig = _new_figure(7.0, 2.4)
    ax = fig.add_subplot()
    _error_histogram(ax, g, labelled)
    title = title or f"{g.name}{'' if labelled else ' (unlabelled)'}"
    ax.set_title(title, fontsize=9)
    return _save_png(fig, path, f"error histogram of group {title}")


def plot_triptych(clip, recon, path, title: str) -> Path:
    """Input, reconstruction and squared-error heatmap of one frame; values in [-1, 1].

    ``clip`` and ``recon`` are (H, W) arrays of the frame the score belongs to.
    """
    err = (np.asarray(recon, np.float64) - np.asarray(clip, np.float64)) ** 2
    fig = _new_figure(9.0, 3.3)
    axes = fig.subplots(1, 3)
    for ax, img, name in zip(axes[:2], (clip, recon), ("input", "reconstruction")):
        ax.imshow(img, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
    im = axes[2].imshow(err, cmap="inferno", vmin=0, interpolation="nearest")
    axes[2].set_title(f"squared error (mean {err.mean():.4f})", fontsize=9)
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return _save_png(fig, path, title)


def plot_slots(images, captions: Sequence[str], path, title: str) -> Path:
    """Grid of decoded memory slots: ``images`` (K, H, W) in [-1, 1], one caption each."""
    k = len(images)
    if k == 0:
        raise ValueError("plot_slots needs at least one slot")
    ncols = min(8, k)
    nrows = math.ceil(k / ncols)
    fig = _new_figure(1.6 * ncols, 1.8 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(img, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(cap, fontsize=7)
    for ax in list(axes.flat)[k:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return _save_png(fig, path, title)
