"""Inference rewrites keep the model's outputs."""

import torch
from torch import nn

from memae_dist.models import build_model
from memae_dist.models.config import ModelConfig
from memae_dist.models.fuse import fold_batchnorm, for_inference


def _trained_looking(cfg: ModelConfig) -> nn.Module:
    """A model whose BatchNorms hold non-trivial statistics, as after training."""
    torch.manual_seed(0)
    model = build_model(cfg)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@torch.no_grad()
def test_folding_keeps_video_outputs_and_removes_every_batchnorm():
    model = _trained_looking(ModelConfig(arch="video", num_slots=50))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules())  # the original is kept
    x = torch.rand(3, 1, 16, 32, 32) * 2 - 1
    want = model(x)
    got = folded(x)
    torch.testing.assert_close(got.recon, want.recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.attention, want.attention, rtol=1e-5, atol=1e-6)
    fast = for_inference(model, torch.device("cpu"))
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fast(x_cl).recon, want.recon, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_folding_keeps_image_outputs():
    model = _trained_looking(ModelConfig(arch="image", num_slots=20))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(folded(x).recon, model(x).recon, rtol=1e-5, atol=1e-5)
