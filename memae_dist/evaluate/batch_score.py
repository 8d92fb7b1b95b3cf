"""``score``: per-frame anomaly scores of a prepared dataset of any size, with Ray Data.

Pipeline: one Ray Data item per stored segment (shard URI, row group) ->
``map_batches(SegmentScorer)`` on a pool of ``workers`` actors, each loading the checkpoint once
(on a GPU when asked, bf16 there), reading its segments straight from storage and cutting the
stride-1 windows itself -> (video, window start, error) rows back to the driver. Neither frames
nor clips pass through the object store (a clip view would copy every frame 16 times), and work
spreads one segment (~113 windows) at a time, so even one long video keeps every actor busy. The
driver keeps one float per frame, groups per video and writes one Parquet file.

Output columns (one row per scored frame, videos in manifest order, frames ascending):
``video`` string, ``frame`` int32 (the window start + 8; + L // 2 for other windows L: a still
image is its own frame), ``score`` float64 (raw window error),
``regularity`` float64 (1 - per-video min-max normalised score; 1 = normal), ``label`` int8
(1 abnormal, 0 normal, null when the video is unlabelled). The file's schema metadata holds the
checkpoint and data URIs and the settings (key ``memae_dist``), so ``report`` can find them.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from memae_dist.data.manifest import Manifest, VideoEntry, load_manifest
from memae_dist.data.storage import (
    StorageConfig,
    absolute,
    join,
    read_bytes,
    write_bytes_atomic,
)
from memae_dist.errors import UserError
from memae_dist.evaluate.protocol import (
    VideoScores,
    frame_scores_from_windows,
    regularity,
    target_offset_for,
)
from memae_dist.evaluate.score import (
    PRECISIONS,
    SegmentScorer,
    check_scorable,
    model_from_state,
    read_model_state,
    segment_items,
)
from memae_dist.runtime import require_torch_gpu

log = logging.getLogger("memae_dist.score")
SCORES_FORMAT = "memae-dist-scores"
SCORES_VERSION = 1
META_KEY = b"memae_dist"
SCHEMA = pa.schema([("video", pa.string()), ("frame", pa.int32()), ("score", pa.float64()),
                    ("regularity", pa.float64()), ("label", pa.int8())])


@dataclass
class ScoreConfig:
    # Split of the prepared dataset to score.
    split: str = "test"
    # Window error: "mse" (the training loss) or "mae" (the official MemAE test code's, grey);
    # None = the checkpoint's recipe (its eval.error), so a recipe scores the way it was meant to.
    error: str | None = None
    # Windows per forward pass (counted within each stored segment; see score.py).
    batch_size: int = 32
    # Scoring actors; 0 scores in this process without Ray (same numbers: for debugging, or a
    # single machine whose one GPU needs no Ray around it).
    workers: int = 1
    # Logical CPUs (and torch threads) per actor; None = this machine's cores / workers.
    cpus_per_worker: float | None = None
    # GPUs per actor (fractions share a GPU); 0 = CPU only. With workers=0, any value > 0
    # scores in this process on its GPU.
    gpus_per_worker: float = 0.0
    # "auto": bf16 autocast on GPU, fp32 on CPU; or force "fp32" / "bf16".
    precision: str = "auto"
    # Progress bar on stderr.
    progress: bool = True

    def __post_init__(self) -> None:
        if self.error not in (None, "mse", "mae"):
            raise UserError(f"score.error must be 'mse' or 'mae', got {self.error!r}")
        if self.batch_size < 1:
            raise UserError(f"score.batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise UserError(f"score.workers must be >= 0, got {self.workers}")
        # "not (x > 0)" also refuses nan, which compares false with everything.
        cpus = self.cpus_per_worker
        if cpus is not None and not (0 < cpus < math.inf):
            raise UserError(f"score.cpus_per_worker must be > 0, got {cpus}")
        if not (0 <= self.gpus_per_worker < math.inf):
            raise UserError(f"score.gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.precision not in PRECISIONS:
            raise UserError(
                f"score.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def threads(self) -> int:
        cpus = self.cpus_per_worker or (os.cpu_count() or 1) / max(self.workers, 1)
        return max(1, int(cpus))


@dataclass
class ScoreResult:
    uri: str
    table: pa.Table
    meta: dict
    seconds: float  # wall time of the scoring (actor start and model load to the last window)

    @property
    def frames_per_s(self) -> float:
        return self.table.num_rows / self.seconds if self.seconds > 0 else math.inf


def scorable_videos(manifest: Manifest, data_uri: str, split: str, window: int,
                    need_labels: bool) -> list[VideoEntry]:
    """The videos of ``split`` long enough for one window; refuses a split with none (or,
    ``need_labels``, with no labelled one) and warns of the short ones."""
    videos = [v for v in manifest.videos(split) if v.num_frames >= window]
    short = [v.name for v in manifest.videos(split) if v.num_frames < window]
    if short and videos:
        log.warning("%d video(s) of split '%s' are shorter than the model's %d-frame window and "
                    "get no scores: %s", len(short), split, window, ", ".join(short[:10])
                    + (" ..." if len(short) > 10 else ""))
    if not videos:
        raise UserError(f"{join(data_uri, 'manifest.json')}: split '{split}' has no video "
                        f"of at least {window} frames to score")
    if need_labels and not any(v.labelled for v in videos):
        raise UserError(f"{join(data_uri, 'manifest.json')}: no labelled video in split "
                        f"'{split}': there is nothing to evaluate against (use 'memae-dist "
                        "score' and 'memae-dist report' to look at its scores)")
    return videos


def score_dataset(checkpoint: str, data_uri: str, out_uri: str | None,
                  cfg: ScoreConfig | None = None, *, storage: StorageConfig | None = None,
                  address: str | None = None, need_labels: bool = False) -> ScoreResult:
    """Score every window of ``cfg.split``; write the per-frame Parquet to ``out_uri`` if given.

    ``need_labels``: refuse, before scoring, a split without a labelled video (evaluation)."""
    cfg = cfg or ScoreConfig()
    if not cfg.workers:
        require_torch_gpu(cfg.gpus_per_worker)
    storage = (storage or StorageConfig()).resolved()  # workers must agree on the endpoint
    # Absolute paths: Ray workers need not share the driver's working directory.
    checkpoint, data_uri = absolute(checkpoint), absolute(data_uri)
    ckpt, config, state, trained_on = read_model_state(checkpoint, storage)
    _, exp = model_from_state(config, state, ckpt)  # fails early on a bad checkpoint
    cfg = replace(cfg, error=cfg.error or exp.eval.error)
    manifest = load_manifest(data_uri, storage)
    check_scorable(manifest, exp, data_uri, trained_on)
    window = exp.data.window
    videos = scorable_videos(manifest, data_uri, cfg.split, window, need_labels)
    check_shard_sizes(data_uri, manifest, cfg.split, storage)
    kwargs = dict(window=window, segment_frames=manifest.segment_frames,
                  overlap=manifest.segment_overlap, error=cfg.error, batch_size=cfg.batch_size,
                  precision=cfg.precision, use_gpu=cfg.gpus_per_worker > 0,
                  threads=cfg.threads(), storage=storage)
    total = manifest.n_windows(cfg.split, window)
    if cfg.workers:
        from memae_dist.runtime import ensure_ray

        ensure_ray(cfg.workers * (cfg.cpus_per_worker or cfg.threads()), address,
                   gpus_needed=cfg.gpus_per_worker)
    t0 = time.perf_counter()  # from here: actors start, load the model, score
    if cfg.workers == 0:
        batches = _local_batches((config, state), kwargs, manifest, data_uri, videos)
    else:
        batches = _ray_batches(ckpt, (config, state), kwargs, manifest, data_uri, videos, cfg)
    starts = _collect(batches, total, cfg.progress)
    seconds = time.perf_counter() - t0
    table = frames_table(manifest, videos, starts, window)
    meta = {
        "format": SCORES_FORMAT, "format_version": SCORES_VERSION,
        "checkpoint": ckpt, "data": data_uri, "split": cfg.split, "error": cfg.error,
        "window": window, "target_offset": target_offset_for(window),
        "frame_size": list(manifest.size), "content": manifest.content,
        "variant": exp.model.variant, "precision": cfg.precision, "batch_size": cfg.batch_size,
        "workers": cfg.workers, "gpus_per_worker": cfg.gpus_per_worker,
        "videos": [{"name": v.name, "num_frames": v.num_frames, "abnormal": v.abnormal}
                   for v in manifest.videos(cfg.split)],
        "seconds": round(seconds, 3),
    }
    if out_uri:
        write_scores(out_uri, table, meta, storage)
    return ScoreResult(out_uri or "", table, meta, seconds)


def check_shard_sizes(data_uri: str, manifest: Manifest, split: str,
                       storage: StorageConfig) -> None:
    """One listing before any actor starts: a truncated or missing shard would otherwise stop
    the scoring deep inside Ray Data, after minutes of work."""
    from memae_dist.data.info import shard_size_problems

    problems = shard_size_problems(data_uri, manifest, storage, split=split)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}: rerun the same 'memae-dist prepare' to write it "
                        "again ('memae-dist data verify' checks every byte)")


def _local_batches(model: tuple[dict, dict], kwargs, manifest: Manifest, data_uri: str,
                   videos) -> Iterator[dict]:
    scorer = SegmentScorer(model=model, **kwargs)
    for video in videos:
        yield scorer(segment_items(manifest, data_uri, video))


def _ray_batches(ckpt: str, model: tuple[dict, dict], kwargs, manifest: Manifest,
                 data_uri: str, videos, cfg: ScoreConfig) -> Iterator[dict]:
    import ray.data

    cpus = cfg.cpus_per_worker or float(cfg.threads())
    items = []
    for video in videos:
        seg = segment_items(manifest, data_uri, video)
        items += [{"uri": u, "row_group": g} for u, g in zip(seg["uri"], seg["row_group"])]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        SegmentScorer,
        # The weights the driver read, not the checkpoint again: a run still training prunes
        # its checkpoints, and one written meanwhile changes nothing. ``ckpt`` names them.
        fn_constructor_args=(ckpt,),
        fn_constructor_kwargs={**kwargs, "model": ray.put(model)},
        batch_size=1,  # one segment per call: ~113 windows, chunked by batch_size inside
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.workers),
        num_cpus=cpus,
        num_gpus=cfg.gpus_per_worker or None,
    )
    # One progress bar (ours, in windows) is enough; Ray Data would also warn that its own are
    # off, through this logger only.
    ds.context.enable_progress_bars = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    return ds.iter_batches(batch_size=None, batch_format="numpy")


def _collect(batches: Iterator[dict], total: int, progress: bool) -> dict[str, list]:
    """video -> list of (starts, errors) array pairs, with a progress bar in windows."""
    from tqdm import tqdm

    out: dict[str, list] = {}
    with tqdm(total=total, unit="window", desc="scoring", disable=not progress,
              smoothing=0.1) as bar:
        for batch in batches:
            videos = batch["video"]
            if len(videos) == 0:
                continue
            names, index = np.unique(videos.astype(str), return_inverse=True)
            for k, name in enumerate(names):
                sel = index == k
                out.setdefault(str(name), []).append((batch["start"][sel], batch["error"][sel]))
            bar.update(len(videos))
    return out


def frames_table(manifest: Manifest, videos, starts: dict[str, list], window: int) -> pa.Table:
    """The per-frame table, videos in manifest order; every window must have come back once."""
    parts = []
    for video in videos:
        pieces = starts.get(video.name, [])
        s = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, np.int64)
        e = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.float64)
        expected = video.num_frames - window + 1
        if len(s) != expected:
            # Only a manifest that no longer describes its shards gets here (edited by hand).
            raise UserError(f"video {video.name}: {len(s)} window scores, expected {expected} "
                            f"from the manifest's {video.num_frames} frames; the manifest and "
                            "the shard disagree ('memae-dist data verify' names which)")
        frames, scores = frame_scores_from_windows(video.num_frames, s, e, window)
        if video.labelled:
            labels = pa.array(manifest.frame_labels(video)[frames].astype(np.int8), pa.int8())
        else:
            labels = pa.nulls(len(frames), pa.int8())
        parts.append(pa.table({
            "video": pa.array([video.name] * len(frames), pa.string()),
            "frame": pa.array(frames.astype(np.int32)),
            "score": pa.array(scores),
            "regularity": pa.array(regularity(scores)),
            "label": labels,
        }, schema=SCHEMA))
    return pa.concat_tables(parts)


def write_scores(uri: str, table: pa.Table, meta: dict,
                 storage: StorageConfig | None = None) -> None:
    """One Parquet file, written atomically (temp + rename locally, a single PUT on S3)."""
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes_atomic(uri, buf.getvalue(), storage)


def read_scores(uri: str, storage: StorageConfig | None = None) -> tuple[pa.Table, dict]:
    """(table, metadata) of a scores file written by ``score``; anything else is refused."""
    blob = read_bytes(uri, storage)
    # Parquet reads the bytes from an Arrow-owned copy: a source that holds a Python object
    # (BytesIO, bytes) is released by one of Arrow's pool threads, which then waits for the
    # GIL; when the command exits right after (a refused file), that thread meets a finalising
    # interpreter and the process aborts ("terminate called without an active exception").
    arrow_blob = pa.BufferOutputStream()
    arrow_blob.write(blob)
    try:
        table = pq.read_table(pa.BufferReader(arrow_blob.getvalue()))
    except (pa.ArrowInvalid, OSError):
        raise UserError(f"{uri} is not a scores file: not Parquet (scores are written by "
                        "'memae-dist score' and 'memae-dist evaluate')") from None
    meta = _scores_meta(uri, (table.schema.metadata or {}).get(META_KEY))
    missing = [n for n in SCHEMA.names if n not in table.column_names]
    if missing:
        raise UserError(f"{uri} lacks column(s) {', '.join(missing)}")
    for expected in SCHEMA:
        found = table.schema.field(expected.name).type
        if found != expected.type:
            raise UserError(f"{uri}: column '{expected.name}' holds {found}, expected "
                            f"{expected.type} as 'memae-dist score' writes it")
        # Only a label may be unknown (an unlabelled video); a null anywhere else would turn
        # into NaN or a bogus video name downstream.
        if expected.name != "label" and table.column(expected.name).null_count:
            raise UserError(f"{uri}: column '{expected.name}' has missing values")
    if not table.num_rows:  # score never writes one: a file cut down by another tool
        raise UserError(f"{uri} holds no scores (0 rows)")
    labels = table.column("label").drop_null().to_numpy(zero_copy_only=False)
    bad = labels[(labels != 0) & (labels != 1)]
    if bad.size:  # a 5 or a -1 would reach the metrics as a third class
        raise UserError(f"{uri}: column 'label' holds {bad[0]}; labels are 0 (normal), "
                        "1 (abnormal) or missing (unlabelled)")
    return _in_frame_order(uri, table.replace_schema_metadata(None)), meta


def _in_frame_order(uri: str, table: pa.Table) -> pa.Table:
    """Each video's rows together and by frame, videos in order of first appearance.

    ``score`` writes them so; a file sorted or filtered by another tool is put back, because
    events and curves read neighbouring rows as neighbouring frames. A frame twice or a
    non-finite score (a diverged model) has no meaning there and is refused."""
    names = table.column("video").to_pylist()
    first_seen = {name: i for i, name in enumerate(dict.fromkeys(names))}
    video = np.fromiter((first_seen[n] for n in names), dtype=np.int64, count=len(names))
    frame = table.column("frame").to_numpy(zero_copy_only=False)
    order = np.lexsort((frame, video))
    if not np.array_equal(order, np.arange(len(order))):
        table, video, frame = table.take(order), video[order], frame[order]
        names = table.column("video").to_pylist()
    twice = np.flatnonzero((video[1:] == video[:-1]) & (frame[1:] == frame[:-1]))
    if twice.size:
        raise UserError(f"{uri}: video {names[twice[0]]!r} has frame {frame[twice[0]]} twice")
    score = table.column("score").to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~np.isfinite(score))
    if bad.size:
        raise UserError(f"{uri}: video {names[bad[0]]!r} has a non-finite score ({score[bad[0]]}) "
                        f"at frame {frame[bad[0]]}: the model that wrote it has diverged")
    return table


def _scores_meta(uri: str, raw: bytes | None) -> dict:
    """The ``memae_dist`` metadata of a scores file, checked to be one this code can read."""
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:  # also UnicodeDecodeError
        raise UserError(f"{uri}: its '{META_KEY.decode()}' metadata is not valid JSON "
                        "(the file is damaged, or was not written by 'memae-dist score')") from None
    if not isinstance(meta, dict) or meta.get("format") != SCORES_FORMAT:
        raise UserError(f"{uri} is not a memae-dist scores file (written by 'memae-dist score')")
    version = meta.get("format_version")
    if type(version) is not int or version < 1:
        raise UserError(f"{uri}: unknown scores format_version {version!r} (expected "
                        f"1 to {SCORES_VERSION})")
    if version > SCORES_VERSION:
        raise UserError(f"{uri} was written by a newer memae-dist (scores format_version "
                        f"{version}; this one reads up to {SCORES_VERSION}): upgrade memae-dist")
    for key in _META_TEXT:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise UserError(f"{uri}: its '{META_KEY.decode()}' metadata is damaged ({key!r} is "
                            f"{type(meta[key]).__name__}, not text)")
    return meta


_META_TEXT = ("checkpoint", "data", "split", "error", "content", "variant")


def video_scores(table: pa.Table, labelled_only: bool = False) -> list[VideoScores]:
    """Per-video scores in row order; unlabelled videos get all-zero labels (or are dropped)."""
    cols = {n: table.column(n).to_numpy(zero_copy_only=False) for n in ("frame", "score")}
    names = table.column("video").to_pylist()
    labels = table.column("label")
    known = pc.is_valid(labels).to_numpy(zero_copy_only=False)
    label_values = labels.fill_null(0).to_numpy(zero_copy_only=False)
    out, order = [], list(dict.fromkeys(names))
    bounds = _runs(names)
    for name in order:
        lo, hi = bounds[name]
        if labelled_only and not known[lo:hi].all():
            continue
        out.append(VideoScores(name, cols["frame"][lo:hi], cols["score"][lo:hi],
                               label_values[lo:hi]))
    return out


def _runs(names: list[str]) -> dict[str, tuple[int, int]]:
    """name -> (first row, end row) for a column where each video's rows are contiguous."""
    bounds: dict[str, tuple[int, int]] = {}
    for i, name in enumerate(names):
        if name in bounds:
            lo, hi = bounds[name]
            if hi != i:
                raise UserError(f"scores file: rows of video {name!r} are not contiguous")
            bounds[name] = (lo, i + 1)
        else:
            bounds[name] = (i, i + 1)
    return bounds
