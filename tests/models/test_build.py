"""Config validation, variants and the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memae_dist.errors import UserError
from memae_dist.models import (
    MemAE,
    MemAEOutput,
    ModelConfig,
    build_model,
    entropy_loss,
    memae_loss,
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_slots": 0}, "model.num_slots must be >= 1, got 0"),
        ({"num_slots": 2.5}, "model.num_slots"),
        ({"num_slots": True}, "model.num_slots"),
        ({"arch": "resnet"}, "model.arch"),
        ({"variant": "vae"}, "model.variant"),
        ({"addressing": "l2"}, "model.addressing"),
        ({"shrink_threshold": -0.1}, "model.shrink_threshold must be"),
        ({"shrink_threshold": 1.0}, "model.shrink_threshold must be < 1"),
        ({"shrink_threshold": "0.01"}, "model.shrink_threshold"),
        ({"entropy_weight": -1}, "model.entropy_weight"),
        ({"entropy_weight": float("nan")}, "model.entropy_weight"),
        ({"in_channels": 0}, "model.in_channels"),
        ({"input_dim": -3}, "model.input_dim"),
        ({"mlp_hidden": []}, "model.mlp_hidden"),
        ({"mlp_hidden": [64, 0]}, "model.mlp_hidden"),
        ({"mlp_hidden": 64}, "model.mlp_hidden"),
        ({"grid_step": 2}, "model.grid_step must be 16, 8 or 4, got 2"),
        ({"grid_step": 8.0}, "model.grid_step"),
        ({"arch": "image", "grid_step": 8}, "model.grid_step is for arch video"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        ModelConfig(**kwargs)


def test_config_defaults_and_normalisation():
    cfg = ModelConfig(mlp_hidden=[32, 8], shrink_threshold=0, entropy_weight=1)
    assert cfg.mlp_hidden == (32, 8)
    assert isinstance(cfg.shrink_threshold, float) and isinstance(cfg.entropy_weight, float)
    default = ModelConfig()
    assert (default.arch, default.variant, default.num_slots) == ("video", "memae", 2000)
    assert default.effective_threshold == 0.0025
    assert default.effective_entropy_weight == 0.0002
    assert default.uses_memory


def test_variant_properties():
    nonsparse = ModelConfig(variant="memae_nonsparse")
    assert nonsparse.uses_memory
    assert nonsparse.effective_threshold == 0.0
    assert nonsparse.effective_entropy_weight == 0.0
    ae = ModelConfig(variant="ae")
    assert not ae.uses_memory
    assert ae.effective_threshold == 0.0 and ae.effective_entropy_weight == 0.0


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_variants_build_the_right_memory():
    kw = {"arch": "image", "num_slots": 100}
    memae = build_model(ModelConfig(**kw))
    nonsparse = build_model(ModelConfig(variant="memae_nonsparse", **kw))
    ae = build_model(ModelConfig(variant="ae", **kw))
    assert isinstance(memae, MemAE)
    assert memae.memory.shrink_threshold == 0.0025
    assert nonsparse.memory.shrink_threshold == 0.0
    assert ae.memory is None
    assert not any("memory" in name for name, _ in ae.named_parameters())
    assert _count(memae) - _count(ae) == 100 * 64
    out = ae(torch.randn(2, 1, 28, 28))
    assert isinstance(out, MemAEOutput) and out.attention is None


def test_nonsparse_attention_is_dense_softmax():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", variant="memae_nonsparse", input_dim=12,
                                    mlp_hidden=(6,), num_slots=9))
    att = model(torch.randn(4, 12)).attention
    assert (att > 0).all()
    torch.testing.assert_close(att.sum(dim=1), torch.ones(4))


def test_cosine_addressing_is_passed_through():
    model = build_model(ModelConfig(arch="image", num_slots=10, addressing="cosine"))
    assert model.memory.addressing == "cosine"


def test_memae_loss_matches_formula():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="image", num_slots=100))
    x = torch.randn(3, 1, 28, 28)
    out = model(x)
    loss, parts = memae_loss(out, x, 0.5)
    recon = F.mse_loss(out.recon, x)
    entropy = entropy_loss(out.attention)
    torch.testing.assert_close(parts["recon"], recon)
    torch.testing.assert_close(parts["entropy"], entropy)
    torch.testing.assert_close(loss, recon + 0.5 * entropy)
    assert loss.dim() == 0 and loss.requires_grad


def test_memae_loss_without_memory():
    model = build_model(ModelConfig(arch="mlp", variant="ae", input_dim=10, mlp_hidden=(4,)))
    x = torch.randn(5, 10)
    out = model(x)
    loss, parts = memae_loss(out, x, 0.0002)
    assert parts["entropy"].item() == 0.0 and parts["entropy"].dim() == 0
    torch.testing.assert_close(loss, F.mse_loss(out.recon, x))


def test_model_input_gives_each_net_its_shape():
    from memae_dist.models.build import model_input

    clips = torch.randint(0, 256, (3, 16, 32, 48), dtype=torch.uint8)
    x = model_input(clips, "video")
    assert x.shape == (3, 1, 16, 32, 48)
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x[:, 0], clips.float() / 127.5 - 1)
    images = clips[:, :1, :28, :28]  # windows of one frame
    assert model_input(images, "image").shape == (3, 1, 28, 28)
    flat = model_input(images, "mlp")
    assert flat.shape == (3, 784)
    torch.testing.assert_close(flat[1], images[1, 0].flatten().float() / 127.5 - 1)
    with pytest.raises(ValueError, match=r"model.arch=image takes one frame per sample, got "
                                         r"clips of 16 \(data.window must be 1\)"):
        model_input(clips, "image")


def test_model_input_mirrors_flipped_samples_only():
    from memae_dist.models.build import model_input

    images = torch.arange(2 * 28 * 28, dtype=torch.float32).remainder(256).to(torch.uint8)
    images = images.reshape(2, 1, 28, 28)
    flip = torch.tensor([True, False])
    x = model_input(images, "mlp", flip).reshape(2, 28, 28)
    plain = images[:, 0].float() / 127.5 - 1
    torch.testing.assert_close(x[0], plain[0].flip(-1))
    torch.testing.assert_close(x[1], plain[1])


@pytest.mark.parametrize("arch", ["image", "mlp"])
def test_image_and_mlp_nets_train_on_store_clips(arch):
    """One optimiser step on uint8 one-frame clips, as the training loop feeds them."""
    from memae_dist.models.build import model_input

    cfg = ModelConfig(arch=arch, num_slots=20, shrink_threshold=0.05, memory_query="flatten")
    model = build_model(cfg)
    x = model_input(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8), arch)
    out = model(x)
    assert out.recon.shape == x.shape and out.attention.shape == (4, 20)
    loss, _ = memae_loss(out, x, cfg.effective_entropy_weight)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
