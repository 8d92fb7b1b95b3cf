"""Per-epoch observability on rank 0: a log line and TensorBoard events beside the checkpoints.

The JSON/CSV history is written by ``history.write_history``; this module adds what a person
watches while a run is going: one log line per epoch and, when a writer is installed
(``tensorboard`` or ``tensorboardX``), event files under ``RUN/tensorboard``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from memae_dist.data.storage import StorageConfig, join
from memae_dist.layout import TENSORBOARD_DIR
from memae_dist.train.scratch import scratch_dir

log = logging.getLogger("memae_dist.train")

# The two data timers are always shown: a run starved by its input says so in every epoch.
_LINE = (("loss", ".5f"), ("recon", ".5f"), ("entropy", ".4f"), ("slots_used", "d"),
         ("clips_per_s", ".1f"), ("time_to_first_batch_s", ".2f"), ("data_wait_s", ".1f"),
         ("data_wait_frac", ".2f"), ("val_recon", ".5f"), ("val_auc", ".4f"), ("lr", ".3g"))


def log_epoch(row: dict, epochs: int) -> None:
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for key, fmt in _LINE:
        if key == "entropy" and "slots_used" not in row:
            continue  # no memory (the ae variant): its entropy term is no measurement
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{key} {value:{fmt}}")
    if row.get("memory_collapse"):
        parts.append("MEMORY COLLAPSE")
    log.info("  ".join(parts))


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return None
    return SummaryWriter


class TensorBoard:
    """Scalars of every history row, written locally and copied to ``RUN/tensorboard``.

    Event files are append-only, so each epoch re-copies this process's file; a resumed run
    starts a new file in the same folder, which TensorBoard reads as one run.
    """

    def __init__(self, run_uri: str, storage: StorageConfig | None = None):
        self.writer = None
        self.target = join(run_uri, TENSORBOARD_DIR)
        self.storage = storage
        cls = _summary_writer_class()
        if cls is None:
            log.info("TensorBoard events off: neither tensorboard nor tensorboardX is installed")
            return
        self._tmp = scratch_dir("memae-tb")
        self.writer = cls(self._tmp.name)

    def write(self, row: dict) -> None:
        if self.writer is None:
            return
        step = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()
        self._upload()

    def _upload(self) -> None:
        from memae_dist.data.storage import pyarrow_fs
        from memae_dist.train.transfer import upload_file

        fs, path = pyarrow_fs(self.target, self.storage)
        fs.create_dir(path, recursive=True)
        # Whole or not at all: copied in place, a kill mid-copy left an empty event file where
        # the epochs before it had been.
        for file in Path(self._tmp.name).iterdir():
            upload_file(fs, file, f"{path}/{file.name}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._tmp.cleanup()
            self.writer = None
