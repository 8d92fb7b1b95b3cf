"""Deployment thresholds on the raw reconstruction error, read off a labelled split.

The paper's AUC needs every frame of a video before it can normalise one, so a live system
cannot use it: it compares each window's raw error (the ``score`` column of ``memae-dist
score``) with a fixed threshold, flagging ``error >= threshold``. These are the thresholds a
deployment is usually tuned to: a false-positive budget (how many normal frames may raise an
alarm) and the best F1. They hold for data like the split they were read from; read them off
a labelled validation split, not the test split whose numbers are reported. A split of normal
footage only (held-out normal video, the data most deployments have) gives the false-positive
budgets: they need normal frames alone, recall and F1 need anomalies.

Pure numpy + scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

# False-positive budgets a deployment is commonly tuned to.
TARGET_FPRS = (0.001, 0.01, 0.05)


def deployment_thresholds(labels, scores) -> dict[str, Any] | None:
    """``{"at_fpr": [...], "best_f1": {...}}`` for raw ``scores`` (higher = more abnormal).

    Normal frames only: the budgets with ``tpr`` None, and ``best_f1`` None. None when every
    frame is abnormal (no false positive can be counted) or there is no frame."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.all():
        return None
    normal = int((~labels).sum())
    if not labels.any():
        points = [normal_only_at_fpr(scores, t) for t in TARGET_FPRS]
        best = None
    else:
        curve = roc_curve(labels, scores, drop_intermediate=False)
        points, best = [at_fpr(curve, t) for t in TARGET_FPRS], best_f1(labels, scores)
    # A budget under one frame in ``normal`` cannot be read off this split (no threshold).
    return {"at_fpr": [{**p, "normal_frames": normal} for p in points], "best_f1": best}


def normal_only_at_fpr(scores: np.ndarray, target: float) -> dict[str, Any]:
    """``at_fpr`` for scores of normal frames alone: the lowest score that flags at most
    ``target`` of them (``score >= threshold``); recall is unknown (``tpr`` None)."""
    values, counts = np.unique(scores, return_counts=True)  # ascending
    flagged = np.cumsum(counts[::-1])[::-1]  # frames at or above each value
    within = np.flatnonzero(flagged / scores.size <= target)
    if within.size == 0:  # even the highest score is shared by more frames than the budget
        return {"target_fpr": target, "threshold": None, "fpr": 0.0, "tpr": None}
    i = int(within[0])
    return {"target_fpr": target, "threshold": float(values[i]),
            "fpr": float(flagged[i] / scores.size), "tpr": None}


def at_fpr(curve, target: float) -> dict[str, Any]:
    """From a ROC ``curve`` (``roc_curve``'s fpr, tpr, thresholds): the lowest threshold whose
    false-positive rate is at most ``target``, with the rates it gives. ``threshold`` is None
    when even the highest one flags more normal frames than that (normal frames at the top)."""
    fpr, tpr, thr = curve
    i = int(np.searchsorted(fpr, target, side="right")) - 1  # fpr is non-decreasing
    threshold = float(thr[i]) if np.isfinite(thr[i]) else None
    return {"target_fpr": target, "threshold": threshold, "fpr": float(fpr[i]),
            "tpr": float(tpr[i])}


def best_f1(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The threshold with the highest F1 (abnormal = positive), and its precision and recall."""
    precision, recall, thr = precision_recall_curve(labels, scores)
    # The curve's last point (precision 1, recall 0) has no threshold.
    p, r = precision[:-1], recall[:-1]
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    i = int(np.argmax(f1))
    return {"threshold": float(thr[i]), "f1": float(f1[i]), "precision": float(p[i]),
            "recall": float(r[i])}
