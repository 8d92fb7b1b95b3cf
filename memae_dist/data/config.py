"""How training reads a prepared dataset: which split, how windows are cut and shuffled."""

from __future__ import annotations

from dataclasses import dataclass

from memae_dist.errors import UserError


@dataclass
class DataConfig:
    # Prepared dataset (local path, file:// or s3://); the folder holding manifest.json.
    path: str = ""
    # Split used for training; only normal footage belongs there.
    train_split: str = "train"
    # Optional split scored each epoch for a validation metric (e.g. "val"); "" disables it.
    val_split: str = ""
    # Frames per clip (the paper: 16). Must not exceed the dataset's segment overlap + 1.
    window: int = 16
    # Distance between consecutive training windows in frames (the paper: 1).
    stride: int = 1
    # Clips held in each worker's local shuffle buffer (0 disables it).
    shuffle_buffer: int = 256
    # Batches prepared ahead of the training step on each worker.
    prefetch_batches: int = 2
    # Random horizontal flips of training clips (same flip for all frames of a clip).
    augment: bool = False
    # Segments cut into windows per Ray Data task: larger is faster, smaller streams earlier.
    segments_per_block: int = 4

    def __post_init__(self) -> None:
        if self.window < 1:
            raise UserError(f"data.window must be >= 1, got {self.window}")
        if self.stride < 1:
            raise UserError(f"data.stride must be >= 1, got {self.stride}")
        if self.shuffle_buffer < 0:
            raise UserError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.prefetch_batches < 0:
            raise UserError(f"data.prefetch_batches must be >= 0, got {self.prefetch_batches}")
        if self.segments_per_block < 1:
            raise UserError(
                f"data.segments_per_block must be >= 1, got {self.segments_per_block}"
            )
        if not self.train_split:
            raise UserError("data.train_split must name a split, got an empty string")
