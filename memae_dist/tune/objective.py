"""What a sweep optimises, and how each epoch's metrics become that number.

The objective is always measured on data the final test never sees: a validation split declared
in the config (``data.val_split``), either labelled (``val_auc``: videos carved out of the test
set, see ``valsplit.py``) or unlabelled (``val_recon``, an unsupervised proxy penalised when the
memory collapses). Without a validation split the sweep falls back to the training
reconstruction error, with a warning. The test split is scored once, after the sweep, for the
best configuration only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from memae_dist.config import ExperimentConfig
from memae_dist.errors import UserError
from memae_dist.tune.space import ObjectiveSpec

log = logging.getLogger("memae_dist.tune")

# The name every trial reports its objective under (what ASHA and the searcher read).
OBJECTIVE = "objective"
DIVERGED = "diverged"


@dataclass(frozen=True)
class Objective:
    metric: str  # the training-loop metric it is computed from
    mode: str  # "min" | "max"
    collapse_penalty: float = 0.0  # > 0 only for the unsupervised proxy
    note: str = ""  # why this metric was chosen, for the sweep's summary

    @property
    def worst(self) -> float:
        return -math.inf if self.mode == "max" else math.inf

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def annotate(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """One epoch's metrics plus ``objective`` and ``diverged``.

        An epoch without the metric (``val_auc`` is undefined when the scored frames hold one
        class) reports NaN, which ASHA and the searchers skip; a non-finite loss or metric marks
        the trial diverged.
        """
        raw = metrics.get(self.metric)
        value = math.nan if raw is None else float(raw)
        if self.collapse_penalty and metrics.get("memory_collapse"):
            value *= 1.0 + self.collapse_penalty
        out = dict(metrics)
        loss = float(metrics.get("loss", 0.0))
        out[DIVERGED] = not math.isfinite(loss) or (raw is not None and not math.isfinite(value))
        out[OBJECTIVE] = value
        return out


class ObjectiveReportCallback(TuneReportCallback):
    """Forwards Train's per-epoch metrics to Tune with the sweep's objective added.

    Runs on the Train controller; rank 0's metrics are the reduced epoch statistics.
    """

    def __init__(self, objective: Objective):
        super().__init__()
        self.objective = objective

    def after_report(self, run_context, metrics, checkpoint):
        rows = [self.objective.annotate(metrics[0]), *metrics[1:]]
        super().after_report(run_context, rows, checkpoint)


def resolve_objective(spec: ObjectiveSpec, cfg: ExperimentConfig) -> Objective:
    """Pick the metric and mode for this config, refusing anything that would touch the test."""
    val = cfg.data.val_split
    if val and val == cfg.eval.split:
        raise UserError(
            f"data.val_split is the test split ({val!r}, eval.split): tuning on it would leak "
            "the test set into model selection; carve a separate split (--val-from-test)"
        )
    if val and val == cfg.data.train_split:
        raise UserError(f"data.val_split must differ from data.train_split, both are {val!r}")
    labelled = bool(val) and split_is_labelled(cfg, val)
    metric, note = spec.metric, ""
    if metric == "auto":
        if labelled:
            metric, note = "val_auc", f"frame AUC on the labelled '{val}' split"
        elif val:
            metric, note = "val_recon", (f"reconstruction error on the unlabelled '{val}' split "
                                         "(unsupervised proxy, memory-collapse penalty)")
        else:
            metric = "recon"
            note = ("training reconstruction error: no validation split is configured "
                    "(set data.val_split, e.g. with --val-from-test)")
            log.warning("objective: %s", note)
    if metric.startswith("val_") and not val:
        raise UserError(f"objective.metric={metric} needs a validation split: set data.val_split")
    if metric == "val_auc" and not labelled:
        raise UserError(
            f"objective.metric=val_auc needs labelled anomalies in split '{val}'; use val_recon "
            "or carve a labelled split with --val-from-test"
        )
    mode = spec.mode if spec.mode != "auto" else ("max" if metric == "val_auc" else "min")
    penalty = spec.collapse_penalty if metric == "val_recon" else 0.0
    return Objective(metric, mode, penalty, note or metric)


def split_is_labelled(cfg: ExperimentConfig, split: str) -> bool:
    """True when every video of ``split`` is labelled and its frames hold both classes."""
    from memae_dist.data.manifest import load_manifest

    if not cfg.data.path:
        raise UserError("data.path is not set: pass --data URI or set data.path in the config")
    manifest = load_manifest(cfg.data.path, cfg.storage)
    videos = manifest.videos(split)
    if not videos:
        raise UserError(f"split '{split}' of {cfg.data.path} has no videos")
    if not all(v.labelled for v in videos):
        return False
    abnormal = sum(int(manifest.frame_labels(v).sum()) for v in videos)
    return 0 < abnormal < sum(v.num_frames for v in videos)
