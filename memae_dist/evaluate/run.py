"""``memae-dist evaluate``: score a split with a checkpoint, apply the paper's protocol, write."""

from __future__ import annotations

import json
from pathlib import Path

from memae_dist.data.storage import StorageConfig
from memae_dist.evaluate.plots import plot_roc, plot_score_curves
from memae_dist.evaluate.protocol import evaluate_videos, frame_table, write_metrics
from memae_dist.evaluate.score import load_model, score_split


def evaluate_checkpoint(
    checkpoint: str,
    data_uri: str,
    out_dir: Path,
    *,
    split: str = "test",
    error: str = "mse",
    batch_size: int = 32,
    storage: StorageConfig | None = None,
) -> dict:
    """Writes ``metrics.json``, ``frames.csv``, ``scores.png`` and ``roc.png`` into ``out_dir``."""
    loaded = load_model(checkpoint, storage)
    videos = score_split(loaded, data_uri, split, error=error, batch_size=batch_size,
                         storage=storage)
    metrics = evaluate_videos(videos)
    metrics.update(checkpoint=loaded.checkpoint_uri, data=data_uri, split=split, error=error,
                   variant=loaded.config.model.variant)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(out_dir, metrics, frame_table(videos))
    plot_score_curves(videos, out_dir / "scores.png")
    plot_roc(videos, out_dir / "roc.png")
    return json.loads((out_dir / "metrics.json").read_text())
