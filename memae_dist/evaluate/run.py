"""``memae-dist evaluate``: score a split (or reuse a scores file), apply the protocol, write.

Writes into the output folder: ``scores.parquet`` (when it scored), ``metrics.json`` (every
number, what it means, and the headline of the chosen ``--protocol``), ``frames.csv``,
``scores.png`` and ``roc.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from memae_dist.data.storage import StorageConfig, absolute, same_file
from memae_dist.errors import UserError
from memae_dist.evaluate.batch_score import (
    ScoreConfig,
    read_scores,
    score_dataset,
    video_scores,
    write_scores,
)
from memae_dist.evaluate.plots import (
    plot_roc,
    plot_score_curves,
    plot_score_histograms,
    writing,
)
from memae_dist.evaluate.protocol import (
    METRICS,
    PROTOCOL_HELP,
    evaluate_videos,
    frame_table,
    headline,
    write_metrics,
)

SCORES_FILE = "scores.parquet"
# Every file an evaluation writes; metrics.json is opened first.
EVALUATION_FILES = ("metrics.json", "frames.csv", "scores.png", "roc.png", SCORES_FILE)


def evaluate_checkpoint(
    checkpoint: str,
    data_uri: str,
    out_dir: Path,
    *,
    split: str = "test",
    error: str | None = None,
    batch_size: int = 32,
    storage: StorageConfig | None = None,
    workers: int = 0,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
    protocol: str | None = None,
    address: str | None = None,
    progress: bool = False,
    scores_uri: str | None = None,
) -> dict:
    """Score ``split`` with ``checkpoint`` (``workers=0``: in this process; N: N Ray actors).
    ``scores_uri``: where ``out_dir/scores.parquet`` is published to, for metrics.json."""
    cfg = ScoreConfig(split=split, error=error, batch_size=batch_size, workers=workers,
                      gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                      progress=progress)
    result = score_dataset(checkpoint, data_uri, None, cfg, storage=storage, address=address,
                           need_labels=True)
    return evaluate_table(result.table, result.meta, Path(out_dir), protocol,
                          scores_uri=scores_uri, scored=True)


def evaluate_scores(scores_uri: str, out_dir: Path, protocol: str | None = None,
                    storage: StorageConfig | None = None) -> dict:
    """The same metrics from an existing ``memae-dist score`` file (no model needed)."""
    table, meta = read_scores(scores_uri, storage)
    return evaluate_table(table, meta, Path(out_dir), protocol, scores_uri=scores_uri)


def default_protocol(meta: dict) -> str:
    """``paper`` for videos; ``micro`` for still images, where a "video" is only a storage group
    and min-max normalising each group would rank images by the group they were stored in."""
    return "micro" if meta.get("content") == "images" else "paper"


def evaluate_table(table: pa.Table, meta: dict, out_dir: Path, protocol: str | None = None,
                   scores_uri: str | None = None, scored: bool = False) -> dict:
    """metrics.json, frames.csv and the figures for the labelled videos of a scores table.

    ``scored``: the table is new, and written to ``out_dir/scores.parquet`` too. Nothing is
    written before the table is found evaluable; then the previous ``metrics.json`` goes first
    and the new one comes last, so an interrupted evaluation never leaves one result's metrics
    beside another's scores or figures."""
    protocol = protocol or default_protocol(meta)
    if protocol not in PROTOCOL_HELP:
        raise UserError(f"--protocol must be one of {', '.join(PROTOCOL_HELP)}, got {protocol!r}")
    videos = video_scores(table, labelled_only=True)
    if not videos:
        raise UserError(
            f"no labelled video in split '{meta.get('split')}' of {meta.get('data')}: "
            "there is nothing to evaluate against (use 'memae-dist report' to look at the scores)")
    metrics = evaluate_videos(videos)
    scored_names = set(table.column("video").to_pylist())
    n_all = len(scored_names)
    # Videos shorter than the model's window have no window, so no score: named, not dropped.
    unscored = [v["name"] for v in meta.get("videos") or []
                if isinstance(v, dict) and v.get("name") not in scored_names]
    metrics.update(
        headline=headline(metrics, protocol),
        protocol=protocol,
        protocol_meaning=PROTOCOL_HELP[protocol],
        definitions=METRICS,
        n_unlabelled_videos=n_all - len(videos),
        unscored_videos=unscored,
        checkpoint=meta.get("checkpoint"), data=meta.get("data"), split=meta.get("split"),
        error=meta.get("error"), variant=meta.get("variant"), content=meta.get("content"),
        # Absolute: the file is found from wherever metrics.json is read.
        scores=absolute(scores_uri) if scores_uri else str((out_dir / SCORES_FILE).absolute()),
    )
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        previous = out_dir / "metrics.json"
        if previous.is_file() or previous.is_symlink():
            previous.unlink()
        own_scores = out_dir / SCORES_FILE
        if scored:
            write_scores(str(own_scores), table, meta)
        elif scores_uri and own_scores.is_file() and not same_file(str(own_scores), scores_uri):
            own_scores.unlink()  # an earlier evaluation's scores: not these metrics'
    images = meta.get("content") == "images"
    (plot_score_histograms if images else plot_score_curves)(videos, out_dir / "scores.png")
    plot_roc(videos, out_dir / "roc.png", images=images)
    with writing(out_dir):
        write_metrics(out_dir, metrics, frame_table(videos))
    return json.loads((out_dir / "metrics.json").read_text())
