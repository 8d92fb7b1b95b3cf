"""``memae-dist report``: a folder of figures and an ``index.html`` that shows them together.

From a scores file alone: one regularity plot per video (ground truth shaded; for a still-image
set, one histogram of the error per group of images, normal and abnormal apart), the ROC curve
and the metrics table (when labels are known). With the model (``--checkpoint``, or the checkpoint
recorded in the scores file) and the frames (``--data`` or the recorded dataset): input /
reconstruction / error triptychs of chosen frames and the most used memory slots, decoded.

Layout: ``index.html``, ``roc.png``, ``videos/<video>.png`` (``groups/<group>.png`` for a
still-image set), ``triptychs/<video>_<frame>.png``, ``memory_slots.png``.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memae_dist.data.atomic import atomic_local
from memae_dist.data.storage import StorageConfig, absolute
from memae_dist.errors import UserError
from memae_dist.evaluate.batch_score import read_scores, video_scores
from memae_dist.evaluate.definitions import units
from memae_dist.evaluate.plots import plot_group, plot_roc, plot_video, writing
from memae_dist.evaluate.protocol import METRICS, VideoScores, evaluate_videos

log = logging.getLogger("memae_dist.report")


@dataclass
class Report:
    index: Path
    metrics: dict | None
    videos: list[Path] = field(default_factory=list)
    roc: Path | None = None
    triptychs: list[tuple[str, int, Path]] = field(default_factory=list)
    memory: Path | None = None
    notes: list[str] = field(default_factory=list)
    images: bool = False  # a still-image set: ``videos`` holds its groups' histograms
    # The checkpoint of the reconstructions and memory picture, when not the scoring one.
    figures_from: str | None = None


def parse_frames(specs: list[str] | None) -> list[tuple[str, int]]:
    """``["01:120", ...]`` -> ``[("01", 120), ...]``."""
    out = []
    for spec in specs or []:
        name, sep, frame = spec.rpartition(":")
        if not sep or not name or not frame.isdigit():
            raise UserError(f"--frame expects VIDEO:FRAME (e.g. 01:120), got {spec!r}")
        out.append((name, int(frame)))
    return out


def top_frames(videos: list[VideoScores], count: int) -> list[tuple[str, int]]:
    """The ``count`` highest raw scores, at most one frame per video."""
    best = [(float(v.scores.max()), v.name, int(v.frames[int(v.scores.argmax())]))
            for v in videos if v.scores.size]
    best.sort(key=lambda item: -item[0])
    return [(name, frame) for _, name, frame in best[:count]]


# Above a still-image set's metrics: what the video-worded definitions mean for it.
IMAGES_NOTE = ("A still-image set: below, a video is a group of images stored together and a "
               "frame is an image. Its headline is auc_micro (raw errors pooled, protocol "
               "micro); the per-video normalised numbers rank images by the group they were "
               "stored in.")

# Every file a report writes, relative to its folder; index.html is opened first.
REPORT_FILES = ("index.html", "roc.png", "memory_slots.png", "videos/*.png", "groups/*.png",
                "triptychs/*.png")


def build_report(scores_uri: str, out_dir: Path, *, checkpoint: str | None = None,
                 data: str | None = None, frames: list[str] | None = None, top: int = 4,
                 slots: int = 32, max_videos: int = 200,
                 storage: StorageConfig | None = None) -> Report:
    out_dir = Path(out_dir)
    table, meta = read_scores(scores_uri, storage)
    videos = video_scores(table)
    check_names(scores_uri, videos)
    labelled = {v.name for v in video_scores(table, labelled_only=True)}
    report = Report(out_dir / "index.html", None)
    # Whatever can refuse the input does so before the first file is written.
    chosen = parse_frames(frames) or top_frames(videos, top)
    sources = _model_sources(report, meta, checkpoint, data, storage)
    check_frames(chosen, videos, sources and sources[1].videos(meta.get("split", "test")),
                 given=bool(frames), data=sources and sources[2])
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        clear_previous(out_dir)
    images = report.images = meta.get("content") == "images"
    scored = [v for v in videos if v.name in labelled]
    if scored:
        report.metrics = evaluate_videos(scored)
        report.roc = plot_roc(scored, out_dir / "roc.png", images=images)
    else:
        report.notes.append("No labels: no metrics and no ROC curve.")
    _per_video_figures(report, videos, labelled, max_videos, images, out_dir)
    if sources is not None:
        _model_figures(report, sources, meta, videos, chosen, slots, out_dir, storage)
    write_index(report, meta, scores_uri, videos, labelled)
    return report


def _per_video_figures(report: Report, videos: list[VideoScores], labelled: set[str],
                       max_videos: int, images: bool, out_dir: Path) -> None:
    """A regularity plot per video; a still-image set's groups get error histograms instead
    (their images have no order to draw a curve along)."""
    per_video = {p["name"]: p for p in (report.metrics or {}).get("per_video", [])}
    plot, folder = (plot_group, "groups") if images else (plot_video, "videos")
    for v in videos[:max_videos]:
        auc = per_video.get(v.name, {}).get("auc")
        title = f"{v.name}" + (f"  (AUC {auc:.3f})" if auc is not None else "")
        if v.name not in labelled:
            title += "  (unlabelled)"
        report.videos.append(plot(v, out_dir / folder / f"{v.name}.png",
                                  v.name in labelled, title))
    if len(videos) > max_videos:
        what, unit = ("Error histograms", "groups") if images else ("Regularity plots", "videos")
        report.notes.append(f"{what} for the first {max_videos} of {len(videos)} "
                            f"{unit} only (--max-videos).")


def check_names(scores_uri: str, videos: list[VideoScores]) -> None:
    """Video names become file names here (``videos/<video>.png``): one that holds a path
    separator or is a relative folder name would write outside the report, so the scores file
    is refused ('memae-dist prepare' never names a video so)."""
    for v in videos:
        if not v.name or v.name in (".", "..") or any(c in v.name for c in "/\\\0"):
            raise UserError(f"{scores_uri}: video name {v.name!r} cannot be a file name in the "
                            "report; scores files name videos as 'memae-dist prepare' did")


def check_frames(chosen: list[tuple[str, int]], videos: list[VideoScores],
                 entries: list | None = None, given: bool = True, data: str | None = None) -> None:
    """Refuse a chosen frame without a score, or whose video is not in ``entries`` (if given).

    ``given``: the frames came from --frame (else from the top scores, which the user did not
    type: the message then names the dataset instead)."""
    known = {v.name: v for v in videos}
    in_data = None if entries is None else {e.name for e in entries}
    for name, frame in chosen:
        if name not in known:
            raise UserError(f"--frame {name}:{frame}: no video {name!r} in the scores")
        if in_data is not None and name not in in_data:
            if not given:
                raise UserError(f"video {name!r} of the scores is not in the dataset {data} "
                                "(--data: the dataset it was scored on)")
            raise UserError(f"--frame {name}:{frame}: video {name!r} is not in the dataset "
                            "(--data) the frames come from")
        if frame not in set(known[name].frames.tolist()):
            raise UserError(f"--frame {name}:{frame}: that frame has no score")


def _model_sources(report: Report, meta: dict, checkpoint: str | None, data: str | None,
                   storage: StorageConfig | None) -> tuple | None:
    """(model, manifest, dataset URI) for the figures, or None with a note saying why not.

    A checkpoint or dataset the user named must load; the ones the scores file merely
    recorded may have moved since, which costs the figures and not the report."""
    from memae_dist.data.manifest import load_manifest
    from memae_dist.evaluate.batch_score import check_shard_sizes
    from memae_dist.evaluate.score import check_scorable, load_model

    ckpt_uri, data_uri = checkpoint or meta.get("checkpoint"), data or meta.get("data")
    if not ckpt_uri or not data_uri:
        report.notes.append("No reconstructions or memory picture: pass --checkpoint and --data.")
        return None
    try:
        loaded, manifest = load_model(ckpt_uri, storage), load_manifest(data_uri, storage)
        check_shard_sizes(data_uri, manifest, meta.get("split", "test"), storage)
        # Reconstructions of frames the model cannot take (or at another scale) would mislead.
        check_scorable(manifest, loaded.config, data_uri, loaded.trained_on)
    except UserError as exc:
        if checkpoint or data:
            raise
        report.notes.append(f"No reconstructions or memory picture: {exc}")
        return None
    scored_by = meta.get("checkpoint")
    if scored_by and absolute(loaded.checkpoint_uri) != absolute(scored_by):
        report.figures_from = absolute(loaded.checkpoint_uri)
        report.notes.append(f"Reconstructions and the memory picture come from "
                            f"{report.figures_from}, not from the checkpoint that scored these "
                            "frames: their errors need not match the scores.")
    return loaded, manifest, data_uri


def _model_figures(report: Report, sources: tuple, meta: dict, videos: list[VideoScores],
                   chosen: list[tuple[str, int]], slots: int, out_dir: Path,
                   storage: StorageConfig | None) -> None:
    """Input / reconstruction / error triptychs of ``chosen`` and the memory slots, decoded."""
    from memae_dist.data.shards import read_video_frames
    from memae_dist.evaluate import visuals

    loaded, manifest, data = sources
    entries = {v.name: v for v in manifest.videos(meta.get("split", "test"))}
    window, arch = loaded.config.data.window, loaded.config.model.arch
    known = {v.name: v for v in videos}
    unit, item = units(meta.get("content"))
    mass_total, cache = None, {}

    def frames_of(name):
        if name not in cache:
            cache.clear()  # one video in memory at a time
            cache[name] = read_video_frames(manifest.shard_uri(data, entries[name]), storage)[0]
        return cache[name]

    for name, frame in chosen:
        path = out_dir / "triptychs" / f"{name}_{frame}.png"
        score = float(known[name].scores[known[name].frames.tolist().index(frame)])
        png, mass = visuals.triptych(loaded.model, frames_of(name), frame, window, path,
                                     f"{unit} {name}, {item} {frame}: error {score:.5f}", arch)
        report.triptychs.append((name, frame, png))
        mass_total = _add(mass_total, mass)
    ordinary = [v for v in videos if v.name in entries][:16]  # for a fair usage estimate
    for v in ordinary:
        starts = visuals.sample_starts(entries[v.name].num_frames, window, 4)
        mass_total = _add(mass_total, visuals.usage_mass(loaded.model, frames_of(v.name),
                                                         starts, window, arch))
    report.memory = visuals.memory_picture(loaded.model, mass_total, tuple(manifest.size),
                                           window, out_dir / "memory_slots.png", slots, arch)
    if report.memory is None:
        report.notes.append("No memory picture: this model has no memory (variant ae).")


def _add(total: np.ndarray | None, mass: np.ndarray | None) -> np.ndarray | None:
    if mass is None:
        return total
    return mass if total is None else total + mass


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("&ndash;" if value is None
                                                            else html.escape(str(value)))


def _threshold(value) -> str:
    # In full, as `evaluate` prints it: each is a frame's score, and a copy rounded up would
    # no longer flag that frame, so the FPR beside it would not be the one it gives.
    return _fmt(None) if value is None else repr(float(value))


def _rel(path: Path, root: Path) -> str:
    return html.escape(path.relative_to(root).as_posix(), quote=True)


def clear_previous(out_dir: Path) -> None:
    """A reused report folder loses the previous report's figures, its index first: the folder
    never mixes two reports, and one stopped half-way has no index to open. Only the report's
    own names go, and only files: anything else there (the scores file itself, a folder in a
    figure's way, which its write then names) stays."""
    for path in (path for pattern in REPORT_FILES for path in out_dir.glob(pattern)):
        if path.is_file() or path.is_symlink():
            path.unlink()


def write_index(report: Report, meta: dict, scores_uri: str, videos: list[VideoScores],
                labelled: set[str]) -> Path:
    root = report.index.parent
    e = html.escape
    unit, item = units(meta.get("content"))
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        "<title>memae-dist report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:right}td.l,th.l{text-align:left}img{max-width:100%}</style>",
        "</head>", "<body>", "<h1>memae-dist report</h1>",
        "<table>",
    ]
    rows = [("scores", scores_uri), ("checkpoint", meta.get("checkpoint")),
            *([("figures' checkpoint", report.figures_from)] if report.figures_from else []),
            ("data", meta.get("data")), ("split", meta.get("split")),
            ("window error", meta.get("error")), (f"{unit}s", len(videos)),
            (f"{item}s scored", sum(v.frames.size for v in videos))]
    parts += [f'<tr><th class="l">{e(k)}</th><td class="l">{_fmt(v)}</td></tr>' for k, v in rows]
    parts.append("</table>")
    if report.metrics:
        parts.append("<h2>Metrics</h2>")
        if unit == "group":
            parts.append(f"<p>{e(IMAGES_NOTE)}</p>")
        parts += ["<table>",
                  '<tr><th class="l">metric</th><th>value</th><th class="l">meaning</th></tr>']
        parts += [f'<tr><td class="l">{e(k)}</td><td>{_fmt(report.metrics.get(k))}</td>'
                  f'<td class="l">{e(text)}</td></tr>' for k, text in METRICS.items()]
        parts.append("</table>")
        parts += _thresholds_section(report.metrics.get("thresholds"), meta.get("split"))
    if report.roc:
        parts += ["<h2>ROC curve</h2>", f'<img src="{_rel(report.roc, root)}" alt="ROC curve">']
    parts += _video_section(report, videos, labelled, root, unit)
    if report.triptychs:
        parts.append(f"<h2>Why these {item}s: input, reconstruction, error</h2>")
        for name, frame, png in report.triptychs:
            parts.append(f'<figure><img src="{_rel(png, root)}" alt="{unit} {e(name)} {item} '
                         f'{frame}"><figcaption>{unit} {e(name)}, {item} {frame}</figcaption>'
                         "</figure>")
    if report.memory:
        parts += ["<h2>Memory slots, decoded</h2>",
                  f'<img src="{_rel(report.memory, root)}" alt="decoded memory slots">']
    if report.notes:
        parts += ["<h2>Notes</h2>", "<ul>"] + [f"<li>{e(n)}</li>" for n in report.notes]
        parts.append("</ul>")
    parts += ["</body>", "</html>", ""]
    with writing(report.index), atomic_local(report.index, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    return report.index


def _thresholds_section(thresholds: dict | None, split: str | None) -> list[str]:
    """The raw-error thresholds of ``evaluate`` (``thresholds.py``), as a table."""
    if not thresholds:
        return []
    parts = ["<h2>Thresholds on the raw error</h2>",
             f"<p>Read off split {html.escape(str(split))}; a live system flags windows whose "
             "error (the <code>score</code> column) is at or above the threshold.</p>",
             "<table>", '<tr><th class="l">chosen for</th><th>threshold</th><th>FPR</th>'
             "<th>recall</th><th>precision</th></tr>"]
    for p in thresholds["at_fpr"]:
        parts.append(f'<tr><td class="l">false positives &le; {p["target_fpr"]:.1%}</td>'
                     f'<td>{_threshold(p["threshold"])}</td><td>{_fmt(p["fpr"])}</td>'
                     f'<td>{_fmt(p["tpr"])}</td><td>{_fmt(None)}</td></tr>')
    f1 = thresholds["best_f1"]
    if f1 is None:  # normal frames only: no recall, no F1
        return [*parts, "</table>"]
    parts.append(f'<tr><td class="l">best F1 ({f1["f1"]:.4f})</td><td>{_threshold(f1["threshold"])}'
                 f'</td><td>{_fmt(None)}</td><td>{_fmt(f1["recall"])}</td>'
                 f'<td>{_fmt(f1["precision"])}</td></tr>')
    return [*parts, "</table>"]


def _video_section(report: Report, videos: list[VideoScores], labelled: set[str],
                   root: Path, unit: str = "video") -> list[str]:
    e = html.escape
    per = {p["name"]: p for p in (report.metrics or {}).get("per_video", [])}
    plots = {p.stem: p for p in report.videos}
    images = unit == "group"
    parts = ["<h2>Groups of images</h2>" if images else "<h2>Videos</h2>", "<table>",
             f'<tr><th class="l">{unit}</th><th>{"images" if images else "frames"}</th>'
             "<th>abnormal</th><th>AUC</th><th>AP</th><th>EER</th><th>max error</th></tr>"]
    for v in videos:
        p = per.get(v.name, {})
        name = e(v.name)
        if v.name in plots:
            name = f'<a href="#v-{e(v.name, quote=True)}">{name}</a>'
        abnormal = p.get("n_abnormal") if v.name in labelled else None
        parts.append(f'<tr><td class="l">{name}</td><td>{v.frames.size}</td>'
                     f"<td>{_fmt(abnormal)}</td><td>{_fmt(p.get('auc'))}</td>"
                     f"<td>{_fmt(p.get('ap'))}</td><td>{_fmt(p.get('eer'))}</td>"
                     f"<td>{_fmt(float(v.scores.max()))}</td></tr>")
    parts.append("</table>")
    for v in videos:
        if v.name in plots:
            what = "error histogram of group" if images else "regularity of video"
            parts.append(f'<div id="v-{e(v.name, quote=True)}"><img src="'
                         f'{_rel(plots[v.name], root)}" alt="{what} {e(v.name)}">'
                         "</div>")
    return parts
