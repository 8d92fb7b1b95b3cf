"""A finished (or interrupted) sweep as a table: one row per trial, the best one, and files.

Outputs in ``--out DIR``: ``trials.csv``, ``objective_vs_params.png``, ``best.yaml`` (a config
``memae-dist train --config`` accepts), ``best.json`` (best trial, checkpoint URI, test
metrics) and ``test/`` (the best checkpoint scored on the test split). Each file is written
whole or not at all, and the folder only ever holds one sweep's results. An ``s3://`` --out is
written in a local staging folder and published when the sweep command ends
(``commands.outdir``), after the files already published there were fetched into it.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memae_dist.data.atomic import atomic_local
from memae_dist.data.redact import error_reason
from memae_dist.data.storage import StorageConfig, exists, join
from memae_dist.errors import UserError
from memae_dist.tune.objective import DIVERGED, OBJECTIVE, Objective
from memae_dist.tune.space import SearchSpace
from memae_dist.tune.trainable import RUNS_DIR

# Trial states as the table shows them.
COMPLETED, STOPPED_EARLY, DIVERGED_STATUS = "COMPLETED", "STOPPED_EARLY", "DIVERGED"
ERROR, INTERRUPTED, PENDING = "ERROR", "INTERRUPTED", "PENDING"
FINISHED = (COMPLETED, STOPPED_EARLY, DIVERGED_STATUS, ERROR)


@dataclass
class TrialRow:
    trial_id: str
    status: str
    epochs: int  # epochs reported
    objective: float  # best over its epochs (nan when it reported none)
    best_epoch: int
    params: dict[str, Any]  # sampled values and derived config values
    metrics: dict[str, Any] = field(default_factory=dict)  # at the best epoch
    error: str = ""
    run_uri: str = ""

    def flat(self) -> dict[str, Any]:
        row = {"trial_id": self.trial_id, "status": self.status, "epochs": self.epochs,
               "objective": self.objective, "best_epoch": self.best_epoch}
        row.update(self.params)
        row.update({f"metric.{k}": v for k, v in self.metrics.items()})
        row.update(error=self.error, run=self.run_uri)
        return row


REPORTED = ("loss", "recon", "val_auc", "val_recon", "slots_used", "memory_collapse")


def collect(analysis, space: SearchSpace, base: dict, objective: Objective, sweep_uri: str,
            max_epochs: int, storage=None) -> list[TrialRow]:
    """Rows from a Tune ``ExperimentAnalysis`` (trials with their status and result history)."""
    frames = analysis.trial_dataframes
    rows = []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        sample = {p.name: trial.config.get(p.name) for p in space.params}
        params = dict(sample)
        if all(v is not None for v in sample.values()):
            params.update(space.assignments(sample, base))
        history = _history(frames.get(trial.trial_id))
        best = _best(history, objective)
        last = history[-1] if history else {}
        row = TrialRow(
            trial_id=trial.trial_id, status="", epochs=int(last.get("epoch", 0) or 0),
            objective=float(best.get(OBJECTIVE, math.nan)) if best else math.nan,
            best_epoch=int(best.get("epoch", 0) or 0) if best else 0, params=params,
            metrics={k: best[k] for k in REPORTED if best and k in best},
            run_uri=join(sweep_uri, RUNS_DIR, trial.trial_id),
        )
        # Tune records a trial cut off before its first report as PENDING; its run folder
        # (written from the trial's start) tells it from one that never started.
        started = bool(last) or exists(row.run_uri, storage)
        row.status, row.error = _status(trial, last, max_epochs, started)
        rows.append(row)
    return rows


def _history(df) -> list[dict]:
    if df is None or len(df) == 0 or "epoch" not in df:
        return []
    return [dict(r) for r in df.to_dict("records") if r.get("epoch") == r.get("epoch")]


def _best(history: list[dict], objective: Objective) -> dict | None:
    best = None
    for row in history:
        value = row.get(OBJECTIVE)
        if value is None or not math.isfinite(float(value)):
            continue
        if best is None or objective.better(float(value), float(best[OBJECTIVE])):
            best = row
    return best


def _status(trial, last: dict, max_epochs: int, started: bool) -> tuple[str, str]:
    status = trial.status
    if status == "ERROR":
        message = _error_line(trial)
        # A sweep stops diverging trials (train.on_nonfinite=stop): skipping is no advice here.
        message = message.replace(" or set train.on_nonfinite=skip", "")
        return (DIVERGED_STATUS if "diverged" in message else ERROR), message
    if status == "TERMINATED":
        if last.get(DIVERGED):
            return DIVERGED_STATUS, f"non-finite {OBJECTIVE} or loss at epoch {last.get('epoch')}"
        if int(last.get("epoch", 0) or 0) < max_epochs:
            return STOPPED_EARLY, ""
        return COMPLETED, ""
    return (PENDING if status == "PENDING" and not started else INTERRUPTED), ""


def _error_line(trial) -> str:
    err = trial.get_pickled_error() or trial.get_error()
    text = str(err or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "TrialDiverged: " in line:
            return line.split("TrialDiverged: ", 1)[1]
    return lines[-1] if lines else "error"


def best_row(rows: list[TrialRow], objective: Objective) -> TrialRow | None:
    best = None
    for row in rows:
        if row.status not in (COMPLETED, STOPPED_EARLY) or not math.isfinite(row.objective):
            continue
        if best is None or objective.better(row.objective, best.objective):
            best = row
    return best


def best_checkpoint(row: TrialRow, storage: StorageConfig | None) -> str | None:
    """The trial's best checkpoint (kept by ``train.checkpoint_metric``), else the one of its
    best epoch, else its latest."""
    from memae_dist.train.checkpoint import (
        STATE_FILE,
        checkpoint_dir_name,
        latest_checkpoint,
    )
    from memae_dist.train.checkpoint import best_checkpoint as kept_best

    kept = kept_best(row.run_uri, storage)
    if kept is not None:
        return kept
    uri = join(row.run_uri, checkpoint_dir_name(row.best_epoch))
    if row.best_epoch and exists(join(uri, STATE_FILE), storage):
        return uri
    return latest_checkpoint(row.run_uri, storage)


# ---------------------------------------------------------------------------- outputs
TABLE, BEST_YAML, BEST_JSON, TEST_DIR = "trials.csv", "best.yaml", "best.json", "test"
PLOT = "objective_vs_params.png"
# What the evaluation of the best checkpoint writes into TEST_DIR.
TEST_FILES = ("metrics.json", "frames.csv", "scores.parquet", "scores.png", "roc.png")
# Every file a sweep writes into --out, relative to it.
OUT_FILES = (TABLE, PLOT, BEST_YAML, BEST_JSON, *(f"{TEST_DIR}/{n}" for n in TEST_FILES))


def check_out(value: Path, sweep_uri: str, published: str | None = None) -> Path:
    """``--out``, before any trial: a folder this process can write, holding no other sweep's
    results (a table of one sweep beside the best config of another would mislead).
    ``published``: the S3 prefix ``value`` stages for; its files were fetched into it."""
    from memae_dist.commands.common import local_folder

    shown = published or value
    try:  # created now: a folder that cannot be made or written fails here, not after hours
        out = local_folder(str(value), "--out")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(f"--out {shown}: cannot write there: {_reason(exc)}") from None
    owner = out_owner(out, shown)
    if owner is not None and owner != sweep_uri:
        raise UserError(f"--out {shown}: holds the results of sweep {owner}; pick another --out "
                        "(or remove that folder) so the two sweeps' results do not mix")
    return out


def out_owner(out: Path, shown=None) -> str | None:
    """The sweep whose results ``out`` holds (from best.json, else trials.csv), None if none;
    ``shown``: how errors name the folder (default ``out``)."""
    summary, table = out / BEST_JSON, out / TABLE
    try:
        return owner_of(summary.read_text() if summary.exists() else None,
                        table.read_text() if table.exists() else None, shown or out)
    except (OSError, ValueError):  # a folder of that name, bytes that are not text
        name = BEST_JSON if summary.exists() else TABLE
        raise UserError(f"--out {shown or out}: {name} there is not a sweep's result "
                        "(unreadable, or written by something else); pick another --out") from None


def owner_of(summary: str | None, table: str | None, shown) -> str | None:
    """The sweep named by a best.json text, else by a trials.csv text (its first run)."""
    if summary is None and table is None:
        return None
    sweep = None
    try:
        if summary is not None:
            sweep = json.loads(summary).get("sweep")
        else:
            reader = csv.DictReader(table.splitlines())
            first = next(reader, None)
            if first is None and {"trial_id", "run"} <= set(reader.fieldnames or ()):
                return None  # a table of no trial: nothing to mix with
            run = (first or {}).get("run") or ""  # SWEEP/runs/<trial id>
            sweep = run.rsplit("/", 2)[0] if run.count("/") >= 2 else None
    except (ValueError, AttributeError, csv.Error):
        pass
    if not isinstance(sweep, str):
        name = BEST_JSON if summary is not None else TABLE
        raise UserError(f"--out {shown}: {name} there is not a sweep's result (unreadable, or "
                        "written by something else); pick another --out")
    return sweep


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while writing a result is one line naming the file: the sweep itself is kept
    in its storage, so rerunning the same command writes the results again."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write {path}: {_reason(exc)} (the sweep is kept: rerun "
                        "the same command to write its results again)") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or error_reason(exc)  # "Permission denied", without the path again


def write_text(path: Path, text: str) -> None:
    with writing(path), atomic_local(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_csv(rows: list[TrialRow], path: Path) -> None:
    flat = [r.flat() for r in rows]
    columns: list[str] = []
    for row in flat:
        columns.extend(k for k in row if k not in columns)
    with writing(path), atomic_local(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)


def remove_stale(out: Path, best: bool, test: bool) -> None:
    """Drop what an earlier sweep of this name left and this one did not write: a sweep whose
    folder was removed and started over with no finite objective must not leave the old best
    config (or its test score) beside its own table. Only the files a sweep writes go, by
    name: --out may be a folder that holds other things, even one called test/."""
    stale = [] if best else [out / BEST_YAML, out / BEST_JSON]
    if not test and (out / TEST_DIR).is_dir():
        stale += [out / TEST_DIR / name for name in TEST_FILES]
    for path in stale:
        with writing(path):
            path.unlink(missing_ok=True)
    if not test:
        try:
            (out / TEST_DIR).rmdir()
        except OSError:  # absent, or holding files that are not ours
            pass


def write_best(out: Path, row: TrialRow, space: SearchSpace, base: dict, sweep_name: str,
               objective: Objective, checkpoint: str | None) -> Path:
    """``best.yaml``: the base config with the best trial's values, ready for ``train``."""
    sample = {p.name: row.params[p.name] for p in space.params}
    tree = space.apply(base, sample)
    tree["run"] = {**base.get("run", {}), "name": f"{sweep_name}-best"}
    header = (f"# Best trial {row.trial_id} of sweep {sweep_name}: {objective.metric} "
              f"({objective.mode}) objective {row.objective:.6g} at epoch {row.best_epoch}.\n"
              f"# Its checkpoint: {checkpoint or '(none)'}\n"
              f"# Train it again with: memae-dist train --config best.yaml\n")
    path = out / BEST_YAML
    write_text(path, header + yaml.safe_dump(tree, sort_keys=False))
    return path


def write_summary(out: Path, summary: dict) -> None:
    write_text(out / BEST_JSON, json.dumps(summary, indent=2, default=str))


def plot(rows: list[TrialRow], space: SearchSpace, objective: Objective, path: Path) -> None:
    """Objective against each parameter (and derived value), one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p.name for p in space.params] + [k for k, _ in space.derived]
    logs = {p.name for p in space.params if p.log_scale} | {n for n in names if _spans_decades(
        [r.params.get(n) for r in rows])}
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    colors = {COMPLETED: "tab:blue", STOPPED_EARLY: "tab:orange"}
    for ax, name in zip(axes[0], names):
        for status, color in colors.items():
            pts = [(r.params.get(name), r.objective) for r in rows
                   if r.status == status and math.isfinite(r.objective)]
            pts = [(x, y) for x, y in pts if isinstance(x, (int, float))]
            if pts:
                ax.scatter(*zip(*pts), c=color, s=24, label=status.lower())
        if name in logs:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(f"{objective.metric} ({objective.mode})")
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    try:
        with writing(path), atomic_local(path) as fh:
            fig.savefig(fh, format="png", dpi=100)
    finally:
        plt.close(fig)


def _spans_decades(values: list) -> bool:
    """Positive numbers two or more orders of magnitude apart read best on a log axis."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return bool(nums) and min(nums) > 0 and max(nums) / min(nums) >= 100


def format_table(rows: list[TrialRow], space: SearchSpace, objective: Objective) -> str:
    names = [p.name for p in space.params] + [k for k, _ in space.derived]
    header = ["trial", "status", "epochs", objective.metric] + names
    body = [[r.trial_id, r.status, str(r.epochs), _fmt(r.objective)]
            + [_fmt(r.params.get(n)) for n in names] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header, *body]]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)
