"""Training objective of MemAE (paper Eq. 10): reconstruction MSE + alpha * attention entropy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from memae_dist.models.build import MemAEOutput
from memae_dist.models.memory import entropy_loss


def memae_loss(
    out: MemAEOutput, x: Tensor, entropy_weight: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(loss, {"recon": mse, "entropy": mean attention entropy})``, all scalar tensors.

    The entropy is computed (for logging) even when ``entropy_weight`` is 0; it is a zero tensor
    when the model has no memory. Pass ``ModelConfig.effective_entropy_weight``.
    """
    # fp32 even after a bf16/fp16 forward pass: the loss is a mean over millions of voxels.
    recon = F.mse_loss(out.recon.float(), x.float())
    if out.attention is None:
        entropy = recon.new_zeros(())
    else:
        entropy = entropy_loss(out.attention)
    return recon + entropy_weight * entropy, {"recon": recon, "entropy": entropy}
