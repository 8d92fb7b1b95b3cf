"""What a checkpoint holds, and how it is written, found and read back.

A checkpoint is a folder ``checkpoint_epoch_NNNN`` in the run's storage with:
- ``state.pt``: model, optimizer, scaler, epoch, step, RNG state and data position, saved as
  tensors and plain values so ``torch.load(weights_only=True)`` reads it (no pickled code runs);
- ``config.json``: the experiment configuration (no secrets: credentials never enter it);
- ``history.json``: the per-epoch metrics up to this checkpoint, so a resumed run continues one
  history without gaps or duplicates.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memae_dist.data.storage import StorageConfig, exists, join, listdir, read_bytes
from memae_dist.errors import UserError

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
CHECKPOINT_RE = re.compile(r"^checkpoint_epoch_(\d+)$")


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


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: dict[str, Any],
    scaler_state: dict[str, Any] | None = None,
) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler_state or {},
        "epoch": state.epoch,
        "step": state.step,
        "rng": {"torch": torch.get_rng_state()},
        # Batches of the next epoch already consumed: checkpoints are taken at epoch ends.
        "data_position": {"epoch": state.epoch, "batch": 0},
    }
    torch.save(payload, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    (folder / HISTORY_FILE).write_text(json.dumps(state.history, indent=2))


def load_state(folder: Path) -> dict[str, Any]:
    try:
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {folder} has no {STATE_FILE}") from None
    except Exception as exc:  # a truncated or foreign file: say which one
        raise UserError(f"cannot read checkpoint {folder / STATE_FILE}: {exc}") from None


def restore(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> TrainState:
    payload = load_state(folder)
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng"]["torch"])
    history = json.loads((folder / HISTORY_FILE).read_text()) if (
        folder / HISTORY_FILE).exists() else []
    return TrainState(epoch=int(payload["epoch"]), step=int(payload["step"]), history=history)


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
        if not exists(join(uri, STATE_FILE), storage):
            continue  # an upload that never finished
        epoch = int(match.group(1))
        if best is None or epoch > best[0]:
            best = (epoch, uri)
    return best[1] if best else None


def resolve_checkpoint(uri: str, storage: StorageConfig | None = None) -> str:
    """A checkpoint URI, or a run URI (``STORAGE/NAME``) meaning its latest checkpoint."""
    if exists(join(uri, STATE_FILE), storage):
        return uri
    latest = latest_checkpoint(uri, storage)
    if latest is None:
        raise UserError(f"no checkpoint found at {uri} (expected a checkpoint or a run folder)")
    return latest


def read_checkpoint_config(ckpt_uri: str, storage: StorageConfig | None = None) -> dict:
    try:
        return json.loads(read_bytes(join(ckpt_uri, CONFIG_FILE), storage))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{join(ckpt_uri, CONFIG_FILE)} is not valid JSON") from None


def upload_dir(local: Path, uri: str, storage: StorageConfig | None = None) -> None:
    """Copy a finished checkpoint folder to ``uri``; ``state.pt`` goes last, so a folder
    without it (an interrupted upload) is never taken for a checkpoint."""
    import pyarrow.fs as pafs

    from memae_dist.data.storage import pyarrow_fs

    fs, path = pyarrow_fs(uri, storage)
    fs.create_dir(path, recursive=True)
    names = sorted(p.name for p in local.iterdir() if p.name != STATE_FILE) + [STATE_FILE]
    for name in names:
        pafs.copy_files(str(local / name), f"{path}/{name}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download_dir(uri: str, local: Path, storage: StorageConfig | None = None) -> None:
    import pyarrow.fs as pafs

    from memae_dist.data.storage import pyarrow_fs

    fs, path = pyarrow_fs(uri, storage)
    pafs.copy_files(path, str(local), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())


def prune(run_uri: str, keep: int, storage: StorageConfig | None = None) -> None:
    """Keep the newest ``keep`` checkpoints of a run (debug mode; Ray prunes its own)."""
    from memae_dist.data.storage import delete

    names = sorted(n for n in listdir(run_uri, storage) if CHECKPOINT_RE.match(n))
    for name in names[:-keep]:
        delete(join(run_uri, name), storage)
