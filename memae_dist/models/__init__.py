"""MemAE networks (Gong et al., ICCV 2019): config, memory module, conv/MLP nets, loss."""

from memae_dist.models.build import MemAE, MemAEOutput, build_model
from memae_dist.models.config import ModelConfig
from memae_dist.models.loss import memae_loss
from memae_dist.models.memory import MemoryUnit, entropy_loss, memory_usage, slot_mass

__all__ = [
    "MemAE",
    "MemAEOutput",
    "MemoryUnit",
    "ModelConfig",
    "build_model",
    "entropy_loss",
    "memae_loss",
    "memory_usage",
    "slot_mass",
]
