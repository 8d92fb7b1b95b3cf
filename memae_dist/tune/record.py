"""What a sweep records beside its trials: what it is (``sweep.json``, checked when it resumes)
and its one test score (of the best trial only)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from memae_dist.config import ExperimentConfig
from memae_dist.data.storage import exists, join, read_bytes, write_bytes_atomic
from memae_dist.errors import UserError
from memae_dist.tune.space import SearchSpace

log = logging.getLogger("memae_dist.tune")

SWEEP_FILE = "sweep.json"


def space_fingerprint(space: SearchSpace) -> dict:
    return json.loads(json.dumps(asdict(space), default=str)) | {"source": None}


def score_test_once(checkpoint: str, cfg: ExperimentConfig, out: Path,
                    published: str | None = None) -> dict | None:
    """Test metrics of the best checkpoint; reused when this checkpoint was already scored.
    ``published``: the prefix ``out`` is published to, where its scores file will be."""
    from memae_dist.data.manifest import load_manifest
    from memae_dist.evaluate.run import SCORES_FILE, evaluate_checkpoint

    previous = _previous_score(out / "metrics.json")
    if previous is not None and previous.get("checkpoint") == checkpoint:
        return previous
    manifest = load_manifest(cfg.data.path, cfg.storage)
    split = cfg.eval.split
    videos = manifest.splits.get(split, [])
    if not videos or not any(v.labelled for v in videos):
        log.warning("no labelled '%s' split in %s: skipping the test score", split, cfg.data.path)
        return None
    return evaluate_checkpoint(checkpoint, cfg.data.path, out, split=split, error=cfg.eval.error,
                               batch_size=cfg.eval.batch_size, storage=cfg.storage,
                               scores_uri=join(published, SCORES_FILE) if published else None)


def _previous_score(path: Path) -> dict | None:
    """A test score left by an earlier run of this sweep, or None: it only saves scoring again,
    so a missing, damaged or unreadable one means scoring again (which rewrites it whole)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        log.warning("%s is unreadable (%s): scoring the test split again", path, exc)
        return None
    return data if isinstance(data, dict) else None


def check_same_sweep(sweep_uri: str, cfg: ExperimentConfig, fingerprint: dict) -> None:
    """Resuming a sweep with a different space or config would mix incomparable trials."""
    uri = join(sweep_uri, SWEEP_FILE)
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    if exists(uri, cfg.storage):
        try:
            saved = json.loads(read_bytes(uri, cfg.storage))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            saved = None
        if not isinstance(saved, dict):
            # Without it nothing tells whether resuming would mix incomparable trials.
            raise UserError(f"{uri}: damaged sweep file (not the JSON this sweep wrote); "
                            "restore it, or remove the sweep folder or pick another --name to "
                            "start over")
        for key, value in fingerprint.items():
            if saved.get(key) != value:
                where, old, new = first_difference(saved.get(key), value, key)
                # The config's keys are the --set names: train.epochs, not config.train.epochs.
                where = where.removeprefix("config.")
                what = f" ({where}={old!r}, now {new!r})"
                raise UserError(f"sweep {sweep_uri} already exists with a different {key}{what}; "
                                "rerun the same command (space, config, flags) to resume, or "
                                "pick another --name")
        return
    write_bytes_atomic(uri, json.dumps(fingerprint, indent=1).encode(), cfg.storage)


def first_difference(old, new, path: str = "") -> tuple[str, object, object]:
    """(dotted path, old value, new value) of the first leaf where two JSON trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if old.get(key) != new.get(key):
                return first_difference(old.get(key), new.get(key),
                                        f"{path}.{key}" if path else str(key))
    return path, old, new
