"""MemAE assembly: encoder -> (memory) -> decoder, chosen from a ``ModelConfig``."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from memae_dist.models import image, video
from memae_dist.models.config import ModelConfig
from memae_dist.models.memory import MemoryUnit
from memae_dist.models.mlp import mlp_decoder, mlp_encoder


class MemAEOutput(NamedTuple):
    recon: Tensor  # same shape as the input
    attention: Tensor | None  # (B, N, *spatial of the encoding); None without memory


class MemAE(nn.Module):
    """Autoencoder whose code is replaced by a sparse combination of memory slots.

    With ``memory=None`` this is the plain autoencoder baseline.
    """

    def __init__(self, encoder: nn.Module, memory: MemoryUnit | None, decoder: nn.Module,
                 flatten_query: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.memory = memory
        self.decoder = decoder
        self.flatten_query = flatten_query

    def forward(self, x: Tensor) -> MemAEOutput:
        z = self.encoder(x)  # (B, C, *spatial)
        attention = None
        if self.memory is not None:
            if self.flatten_query:
                z_hat, attention = self.memory(z.flatten(1))  # (B, C*prod(spatial)), (B, N)
                z = z_hat.view_as(z)
            else:
                z, attention = self.memory(z)  # attention (B, N, *spatial)
        return MemAEOutput(self.decoder(z), attention)


def build_model(cfg: ModelConfig) -> MemAE:
    """Fresh, initialised network for ``cfg`` (variant memae_nonsparse gets lambda = 0)."""
    if cfg.arch == "video":
        encoder = video.video_encoder(cfg.in_channels, cfg.grid_step)
        decoder = video.video_decoder(cfg.in_channels, cfg.grid_step)
        features = video.FEATURES
    elif cfg.arch == "image":
        encoder = image.image_encoder(cfg.in_channels)
        decoder = image.image_decoder(cfg.in_channels)
        features = image.FEATURES
        if cfg.memory_query == "flatten":
            features *= image.CODE_SIZE**2  # one query: the whole (64, 4, 4) code
    else:
        encoder = mlp_encoder(cfg.input_dim, cfg.mlp_hidden)
        decoder = mlp_decoder(cfg.input_dim, cfg.mlp_hidden)
        features = cfg.mlp_hidden[-1]
    memory = None
    if cfg.uses_memory:
        memory = MemoryUnit(cfg.num_slots, features, cfg.effective_threshold, cfg.addressing)
    return MemAE(encoder, memory, decoder, flatten_query=cfg.memory_query == "flatten")


def model_input(clip: Tensor, arch: str, flip: Tensor | None = None) -> Tensor:
    """uint8 clips ``(B, L, H, W)`` from the frame store -> the network's float input in [-1, 1].

    ``flip`` (``(B,)`` bool) mirrors those clips left to right. Shapes: ``arrange``.
    """
    x = clip.float().div_(127.5).sub_(1.0)  # (B, L, H, W)
    if flip is not None and bool(flip.any()):
        x[flip] = x[flip].flip(-1)
    return arrange(x, arch)


def arrange(x: Tensor, arch: str) -> Tensor:
    """Clips ``(B, L, H, W)`` in the layout an ``arch`` net takes.

    ``video``: ``(B, 1, L, H, W)``; ``image``: ``(B, 1, H, W)`` and ``mlp``: ``(B, H*W)``, both
    from clips of one frame (``data.window=1``).
    """
    if arch == "video":
        return x.unsqueeze(1)  # (B, 1, L, H, W)
    if x.shape[1] != 1:
        raise ValueError(f"model.arch={arch} takes one frame per sample, got clips of "
                         f"{x.shape[1]} (data.window must be 1)")
    return x if arch == "image" else x.flatten(1)  # (B, 1, H, W) or (B, H*W)
