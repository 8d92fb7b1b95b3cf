"""MemAE networks (Gong et al., ICCV 2019): config, memory module, conv/MLP nets, loss.

Names are imported on first use: reading a config (``ModelConfig``) must not pay for importing
torch, so the CLI can refuse a bad setting in well under a second.
"""

from importlib import import_module

_HOMES = {
    "MemAE": "build",
    "MemAEOutput": "build",
    "build_model": "build",
    "ModelConfig": "config",
    "memae_loss": "loss",
    "MemoryUnit": "memory",
    "entropy_loss": "memory",
    "memory_usage": "memory",
    "slot_mass": "memory",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'memae_dist.models' has no attribute {name!r}")
    return getattr(import_module(f"memae_dist.models.{_HOMES[name]}"), name)
