"""Typed configuration of the MemAE network (the ``model:`` section of a run config)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from memae_dist.errors import UserError

ARCHS = ("video", "image", "mlp")
VARIANTS = ("memae", "memae_nonsparse", "ae")
ADDRESSING = ("dot", "cosine")
QUERIES = ("position", "flatten")
# The paper uses 2,000 slots; a million (1 GB of memory matrix at 256 wide) is far past use.
MAX_SLOTS = 1_000_000
GRID_STEPS = (16, 8, 4)  # frame pixels per memory query of the video net (16: the paper's)


@dataclass
class ModelConfig:
    # Network family: "video" = 3D-conv net on (B, C, 16, H, W) clips, "image" = 2D-conv net on
    # (B, C, 28, 28) images, "mlp" = fully connected net on (B, input_dim) vectors.
    arch: str = "video"
    # "memae" = memory with hard shrinkage + entropy loss (the paper's model);
    # "memae_nonsparse" = memory without shrinkage and without entropy loss (paper ablation);
    # "ae" = plain autoencoder, no memory (paper baseline).
    variant: str = "memae"
    # N, number of memory slots. The paper uses 2000 for videos, 100 for MNIST.
    num_slots: int = 2000
    # lambda of the hard shrinkage; the paper advises a value in [1/N, 3/N].
    shrink_threshold: float = 0.0025
    # alpha, weight of the attention entropy term in the training loss.
    entropy_weight: float = 0.0002
    # Similarity used to address memory: "dot" (official code) or "cosine" (paper Eq. 5).
    addressing: str = "dot"
    # What one memory query is: "position" = every spatial position of the encoding (the
    # official video code); "flatten" = the whole encoding as one vector, so a slot is a whole
    # prototype image code (image arch only; how image reimplementations reach the paper's
    # MNIST numbers). Same for the mlp arch, whose code is a vector anyway.
    memory_query: str = "position"
    # video arch only: frame pixels per memory query along each side. 16 = the paper's net (a
    # 256x256 frame is addressed at 16x16 positions); 8 or 4 skip the spatial halving of the
    # last one or two encoder layers, so small frames keep a fine grid (64x64: 8x8 at 8, 4x4
    # at 16). Same weights; at 64x64 a CPU training step at 8 costs what it does at 16.
    grid_step: int = 16
    # Channels of a frame / image: 1, as prepared datasets store grey frames.
    in_channels: int = 1
    # mlp only: length of the input vector.
    input_dim: int = 784
    # mlp only: encoder widths; the last one is the bottleneck the memory works on.
    mlp_hidden: tuple[int, ...] = (256, 128, 64)

    def __post_init__(self) -> None:
        _check_choice("model.arch", self.arch, ARCHS)
        _check_choice("model.variant", self.variant, VARIANTS)
        _check_choice("model.addressing", self.addressing, ADDRESSING)
        _check_choice("model.memory_query", self.memory_query, QUERIES)
        if self.memory_query == "flatten" and self.arch == "video":
            raise UserError("model.memory_query=flatten is for arch image or mlp; the video "
                            "net's encoding size depends on the frame size")
        _check_int("model.grid_step", self.grid_step)
        if self.grid_step not in GRID_STEPS:
            raise UserError(f"model.grid_step must be 16, 8 or 4, got {self.grid_step}")
        if self.grid_step != 16 and self.arch != "video":
            raise UserError("model.grid_step is for arch video; the image and mlp nets have a "
                            "fixed code size")
        _check_int("model.num_slots", self.num_slots)
        if self.num_slots > MAX_SLOTS:
            raise UserError(f"model.num_slots must be <= {MAX_SLOTS:,}, got {self.num_slots}")
        _check_int("model.in_channels", self.in_channels)
        _check_int("model.input_dim", self.input_dim)
        self.shrink_threshold = _check_number("model.shrink_threshold", self.shrink_threshold)
        if self.shrink_threshold >= 1.0:
            # Softmax weights are < 1, so lambda >= 1 would zero every attention row.
            raise UserError(f"model.shrink_threshold must be < 1, got {self.shrink_threshold}")
        self.entropy_weight = _check_number("model.entropy_weight", self.entropy_weight)
        if isinstance(self.mlp_hidden, int) or not isinstance(self.mlp_hidden, (list, tuple)):
            raise UserError(
                f"model.mlp_hidden must be a list of layer widths, got {self.mlp_hidden!r}"
            )
        self.mlp_hidden = tuple(self.mlp_hidden)
        if not self.mlp_hidden:
            raise UserError("model.mlp_hidden must name at least one layer width, got []")
        for width in self.mlp_hidden:
            _check_int("model.mlp_hidden", width)

    @property
    def uses_memory(self) -> bool:
        return self.variant != "ae"

    @property
    def effective_threshold(self) -> float:
        """lambda actually used by the memory: 0 when the variant has no shrinkage."""
        return self.shrink_threshold if self.variant == "memae" else 0.0

    @property
    def effective_entropy_weight(self) -> float:
        """alpha actually used by the loss: 0 when the variant has no entropy term."""
        return self.entropy_weight if self.variant == "memae" else 0.0


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_int(name: str, value: object) -> None:
    # bool is an int subclass; "true" as a slot count is a typo, not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)
