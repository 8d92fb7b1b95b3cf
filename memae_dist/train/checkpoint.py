"""What a checkpoint holds, and how it is written, found and read back.

A checkpoint is a folder ``checkpoint_epoch_NNNN`` in the run's storage with:
- ``state.pt``: model, optimizer, scaler, epoch, step, RNG states (torch, CUDA, numpy, Python),
  data position, the best metric so far and the training data's frame size,
  saved as tensors and plain values so ``torch.load(weights_only=True)`` reads it (no pickled
  code runs);
- ``config.json``: the experiment configuration (no secrets: credentials never enter it);
- ``history.json``: the per-epoch metrics up to this checkpoint, so a resumed run continues one
  history without gaps or duplicates.

Ray keeps the newest ``train.keep_checkpoints`` of them. The best one by
``train.checkpoint_metric`` is copied to ``RUN/best/checkpoint_epoch_NNNN`` with a pointer
``RUN/best.json``: Ray's own score-based retention keeps the best K *plus the latest*, which
would drop the recent checkpoints a restart may need.
"""

from __future__ import annotations

import json
import logging
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memae_dist.data.lock import DEFAULT_LOCK_TTL_S, read_lock
from memae_dist.data.storage import (
    StorageConfig,
    check_bucket,
    exists,
    join,
    listdir,
    read_bytes,
)
from memae_dist.errors import UserError
from memae_dist.layout import (
    BEST_DIR,
    BEST_POINTER,
    CHECKPOINT_RE,
    CONFIG_FILE,
    HISTORY_FILE,
    RAY_SNAPSHOT,
    STATE_FILE,
)
from memae_dist.train.transfer import upload_dir

CHECKPOINT_FILES = (CONFIG_FILE, HISTORY_FILE, STATE_FILE)


def checkpoint_dir_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch:04d}"


@dataclass
class TrainState:
    """Progress counters; ``epoch`` is the number of finished epochs (the data position)."""

    epoch: int = 0
    step: int = 0
    # Seconds the last checkpoint took to reach storage (reported with the next epoch).
    last_report_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    # Times training (re)started on this run: driver reruns and worker-group restarts.
    starts: int = 0
    # Best value of train.checkpoint_metric so far and its epoch (None: no best yet).
    best_value: float | None = None
    best_epoch: int = 0
    # "metric/mode" that best_value was judged by (None in checkpoints older than this field).
    best_of: str | None = None


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: dict[str, Any],
    scaler_state: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """``data``: what the run trains on (its frame size), kept for scoring and export."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler_state or {},
        "epoch": state.epoch,
        "step": state.step,
        "starts": state.starts,
        "best": {"value": state.best_value, "epoch": state.best_epoch, "of": state.best_of},
        "rng": rng_state(),
        # Batches of the next epoch already consumed: checkpoints are taken at epoch ends.
        "data_position": {"epoch": state.epoch, "batch": 0},
        "data": data or {},
    }
    torch.save(payload, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    (folder / HISTORY_FILE).write_text(json.dumps(state.history, indent=2))


def rng_state() -> dict[str, Any]:
    """Every global RNG, as tensors and plain values (``weights_only`` loading accepts them)."""
    np_state = np.random.get_state()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if "numpy" in rng:
        kind, keys, *rest = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in rng and torch.cuda.is_available():
        cuda = rng["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def load_state(folder: Path) -> dict[str, Any]:
    try:
        return torch_load(folder / STATE_FILE)
    except FileNotFoundError:
        raise UserError(f"checkpoint {folder} has no {STATE_FILE}") from None
    except Exception as exc:  # a truncated or foreign file: say which one
        raise unreadable_state(folder / STATE_FILE, exc) from None


def torch_load(source) -> Any:
    """``torch.load`` of a state file, weights only; torch's warning for a TorchScript archive
    (an exported model in a checkpoint's place) is left to ``unreadable_state`` to say."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript archive", category=UserWarning)
        state = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(state, torch.jit.ScriptModule):  # torch < 2.6 hands the archive to jit.load
        raise ValueError("the file is a TorchScript archive")
    return state


def unreadable_state(path, exc: Exception) -> UserError:
    """One line for a state file torch cannot load: truncated, foreign or not a checkpoint."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, EOFError):  # torch's message for a file of no bytes is the class alone
        first = "the file is empty (a write that was cut off?)"
    elif first.startswith("Weights only load failed"):  # torch's advice would be to unpickle it
        first = "damaged, or not written by memae-dist"
    elif first.startswith("PytorchStreamReader failed"):  # then four sentences of advice
        first = first.split(". ", 1)[0] + " (truncated or damaged)"
    elif "TorchScript archive" in first or "locating file data.pkl" in first:
        first = ("an exported model (TorchScript or pt2), not a checkpoint; give the "
                 "checkpoint 'memae-dist train' wrote")
    return UserError(f"cannot read checkpoint {path}: {first}")


def restore(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Load weights (and optimizer) into place; returns the progress and the scaler state."""
    payload = load_state(folder)
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    set_rng_state(payload["rng"])
    history = json.loads((folder / HISTORY_FILE).read_text()) if (
        folder / HISTORY_FILE).exists() else []
    best = payload.get("best") or {}
    state = TrainState(epoch=int(payload["epoch"]), step=int(payload["step"]), history=history,
                       starts=int(payload.get("starts", 0)), best_value=best.get("value"),
                       best_epoch=int(best.get("epoch") or 0), best_of=best.get("of"))
    return state, payload.get("scaler") or {}


def latest_checkpoint(run_uri: str, storage: StorageConfig | None = None) -> str | None:
    """The newest complete checkpoint folder under a run, or None when it has none yet."""
    if not exists(run_uri, storage):
        return None
    best: tuple[int, str] | None = None
    for name in listdir(run_uri, storage):
        match = CHECKPOINT_RE.match(name)
        if not match:
            continue
        uri = join(run_uri, name)
        if not is_complete(uri, storage):
            continue  # an upload that never finished (files may land in any order)
        epoch = int(match.group(1))
        if best is None or epoch > best[0]:
            best = (epoch, uri)
    return best[1] if best else None


def is_complete(uri: str, storage: StorageConfig | None = None) -> bool:
    return all(exists(join(uri, f), storage) for f in CHECKPOINT_FILES)


def resolve_checkpoint(uri: str, storage: StorageConfig | None = None) -> str:
    """A checkpoint URI, or a run URI (``STORAGE/NAME``) meaning its latest checkpoint.

    A checkpoint's own ``state.pt`` means that checkpoint: it is what users point at."""
    check_bucket(uri, storage)
    if uri.endswith(f"/{STATE_FILE}") and exists(uri, storage):
        uri = uri[: -len(STATE_FILE) - 1]
    if exists(join(uri, STATE_FILE), storage):
        return uri
    latest = latest_checkpoint(uri, storage)
    if latest is None:
        raise UserError(f"no checkpoint found at {uri} ({_why_none(uri, storage)})")
    return latest


def _why_none(uri: str, storage: StorageConfig | None) -> str:
    """What a folder without a checkpoint is: a run still in its first epoch, or not a run."""
    held = read_lock(uri, storage)
    if held is not None and held.age() <= DEFAULT_LOCK_TTL_S:
        return f"no epoch finished yet; the run is being trained by {held.holder()}"
    if exists(join(uri, CONFIG_FILE), storage):  # state.pt is written last: a cut-short copy
        return f"it has {CONFIG_FILE} but no {STATE_FILE}: an incomplete checkpoint"
    return "expected a checkpoint or a run folder"


def read_checkpoint_config(ckpt_uri: str, storage: StorageConfig | None = None) -> dict:
    try:
        config = json.loads(read_bytes(join(ckpt_uri, CONFIG_FILE), storage))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{join(ckpt_uri, CONFIG_FILE)} is not valid JSON") from None
    if not isinstance(config, dict):
        raise UserError(f"{join(ckpt_uri, CONFIG_FILE)} is not a run configuration "
                        f"(a JSON object), but a JSON {type(config).__name__}")
    return config


def prune(run_uri: str, keep: int, storage: StorageConfig | None = None) -> None:
    """Keep the newest ``keep`` complete checkpoints of a run; delete every older folder.

    Ray prunes only the checkpoints it recorded in this attempt; those a debug run or a cut-off
    attempt wrote are left to this. An incomplete folder newer than the kept ones (a cut-off
    upload) stays: the run writes that epoch again."""
    from memae_dist.data.storage import delete

    names = sorted((n for n in listdir(run_uri, storage) if CHECKPOINT_RE.match(n)),
                   key=lambda n: int(CHECKPOINT_RE.match(n).group(1)))
    complete = [n for n in names if is_complete(join(run_uri, n), storage)]
    if len(complete) <= keep:
        return
    older = names[: names.index(complete[-keep])]
    logging.getLogger("memae_dist.train").info(
        "%s: removing %d older checkpoint(s), train.keep_checkpoints=%d", run_uri, len(older),
        keep)
    for name in older:
        delete(join(run_uri, name), storage)


def forget_missing(run_uri: str, storage: StorageConfig | None = None) -> None:
    """Drop Ray's record of a run's checkpoints when it names one that is gone.

    Ray refuses to resume a run whose record names a missing checkpoint ("corrupted run
    directory"): one pruned by a debug run, deleted by hand, or cut off in its upload. Runs
    resume from ``restore_point`` whatever Ray recorded, so the record can go; Ray then prunes
    only what it writes from here on, and ``prune`` the rest."""
    from memae_dist.data.storage import delete

    snapshot = join(run_uri, RAY_SNAPSHOT)
    if not exists(snapshot, storage):
        return
    try:
        names = _dir_names(json.loads(read_bytes(snapshot, storage)))
        gone = sorted(n for n in names if not is_complete(join(run_uri, n), storage))
        why = f"names {', '.join(gone)}, which is gone" if gone else ""
    except ValueError:
        why = "cannot be read"
    if why:
        logging.getLogger("memae_dist.train").info(
            "Ray's record of %s %s: dropping the record (the run resumes from its newest "
            "checkpoint as always)", run_uri, why)
        delete(snapshot, storage)


def _dir_names(node: Any) -> set[str]:
    """Every ``checkpoint_dir_name`` in Ray's snapshot, wherever its schema keeps them."""
    if isinstance(node, dict):
        found = {str(v) for k, v in node.items() if k == "checkpoint_dir_name" and v}
        return found.union(*(_dir_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_dir_names(v) for v in node))
    return set()


def checkpoint_epoch(uri: str) -> int:
    match = CHECKPOINT_RE.match(uri.rstrip("/").rsplit("/", 1)[-1])
    if not match:
        raise UserError(f"{uri} is not a checkpoint folder (checkpoint_epoch_NNNN)")
    return int(match.group(1))


def restore_point(run_uri: str, storage: StorageConfig | None = None) -> str | None:
    """The checkpoint a (re)started run continues from, or None for a fresh start: the newest
    complete checkpoint folder, whoever wrote it.

    Not the one Ray's snapshot names: a run trained in-process (``workers=0``) writes
    checkpoints Ray never records, and a checkpoint uploaded just before a crash may be whole
    but unregistered; resuming from an older one would train those epochs again and write over
    their checkpoints. Every file of a checkpoint lands under its final name only once whole
    (``upload_file``) and ``state.pt`` comes last, so "complete" means all its files are there.
    The workers (``loop.resume``) and the data order (``trainer``) both follow this point.
    """
    return latest_checkpoint(run_uri, storage)


def ray_registered(run_uri: str, storage: StorageConfig | None = None) -> str | None:
    """The checkpoint Ray's snapshot names ("" when the snapshot names none that is whole), or
    None when Ray has written no snapshot for the run."""
    snapshot = join(run_uri, RAY_SNAPSHOT)
    if not exists(snapshot, storage):
        return None
    try:
        latest = json.loads(read_bytes(snapshot, storage)).get("latest_checkpoint_result")
        name = (latest or {}).get("checkpoint_dir_name", "")
    except (ValueError, AttributeError):
        name = ""
    if CHECKPOINT_RE.match(name) and exists(join(run_uri, name, STATE_FILE), storage):
        return join(run_uri, name)
    return ""


def save_best(local: Path, run_uri: str, epoch: int, metric: str, value: float,
              storage: StorageConfig | None = None) -> str:
    """Copy a finished checkpoint folder to ``RUN/best/``, then point ``RUN/best.json`` at it.

    The copy is complete before the pointer moves, and older copies go only after that, so a
    crash at any moment leaves the pointer on a whole checkpoint.
    """
    from memae_dist.data.storage import delete, write_bytes_atomic

    best_root = join(run_uri, BEST_DIR)
    uri = join(best_root, checkpoint_dir_name(epoch))
    upload_dir(local, uri, storage)
    pointer = {"checkpoint": f"{BEST_DIR}/{checkpoint_dir_name(epoch)}", "epoch": epoch,
               "metric": metric, "value": value}
    write_bytes_atomic(join(run_uri, BEST_POINTER), json.dumps(pointer, indent=2).encode(),
                       storage)
    for name in listdir(best_root, storage):
        if CHECKPOINT_RE.match(name) and name != checkpoint_dir_name(epoch):
            delete(join(best_root, name), storage)
    return uri


def best_checkpoint(run_uri: str, storage: StorageConfig | None = None) -> str | None:
    """The run's best checkpoint by ``train.checkpoint_metric``, or None without one."""
    pointer = join(run_uri, BEST_POINTER)
    if not exists(pointer, storage):
        return None
    rel = json.loads(read_bytes(pointer, storage))["checkpoint"]
    return join(run_uri, *rel.split("/"))
