"""The paper's MNIST conv net and the tabular MLP net."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memae_dist.errors import UserError
from memae_dist.models import ModelConfig, build_model, memae_loss


def _image_model(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="image", num_slots=100, shrink_threshold=0.0025, **kw))


def test_image_shapes_restore_28x28():
    model = _image_model()
    x = torch.randn(4, 1, 28, 28)
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.attention.shape == (4, 100, 4, 4)  # one query per pixel of the 4x4x64 code
    assert model.memory.memory.shape == (100, 64)


def test_image_layout_matches_paper():
    model = _image_model()
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 16, (1, 1), (2, 2)), (16, 32, (3, 3), (2, 2)), (32, 64, (3, 3), (2, 2)),
    ]
    deconvs = [m for m in model.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.in_channels, d.out_channels, d.stride) for d in deconvs] == [
        (64, 64, (2, 2)), (64, 32, (2, 2)), (32, 1, (2, 2)),
    ]
    assert isinstance(model.decoder[-1], nn.ConvTranspose2d)  # linear output
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5


def test_image_multichannel():
    model = _image_model(in_channels=3)
    x = torch.randn(2, 3, 28, 28)
    assert model(x).recon.shape == x.shape


def test_gradient_reaches_memory_and_encoder():
    model = _image_model()
    x = torch.randn(8, 1, 28, 28)
    loss, parts = memae_loss(model(x), x, 0.0002)
    loss.backward()
    assert model.memory.memory.grad.abs().sum() > 0
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert parts["entropy"].item() > 0


def test_mlp_shapes_and_layout():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", input_dim=120, mlp_hidden=[60, 30, 10],
                                    num_slots=50))
    x = torch.randn(6, 120)
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.attention.shape == (6, 50)
    widths = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [(120, 60), (60, 30), (30, 10), (10, 30), (30, 60), (60, 120)]
    assert isinstance(model.encoder[-1], nn.Linear) and isinstance(model.decoder[-1], nn.Linear)
    assert model.memory.memory.shape == (50, 10)


def test_mlp_gradient_and_single_layer():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", input_dim=20, mlp_hidden=(5,), num_slots=8,
                                    shrink_threshold=0.05))
    x = torch.randn(16, 20)
    loss, _ = memae_loss(model(x), x, 0.0002)
    loss.backward()
    assert model.memory.memory.grad.abs().sum() > 0
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert len(model.encoder) == 1 and len(model.decoder) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace is deprecated
@pytest.mark.parametrize("arch", ["image", "mlp"])
def test_trace_whole_model(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, num_slots=30)).eval()
    x = torch.randn(2, 1, 28, 28) if arch == "image" else torch.randn(2, 784)
    traced = torch.jit.trace(model, x)
    x2 = torch.randn(5, *x.shape[1:])
    for got, want in zip(traced(x2), model(x2), strict=True):
        torch.testing.assert_close(got, want)


def test_flatten_query_addresses_memory_once_per_image():
    # No shrinkage here: at initialisation every weight is about 1/N, which lambda = 2/N zeroes.
    cfg = ModelConfig(arch="image", variant="memae_nonsparse", num_slots=100,
                      memory_query="flatten")
    model = build_model(cfg)
    assert model.memory.memory.shape == (100, 64 * 4 * 4)  # a slot is a whole image code
    x = torch.randn(5, 1, 28, 28)
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.attention.shape == (5, 100)  # one attention row per image
    torch.testing.assert_close(out.attention.sum(1), torch.ones(5))


def test_flatten_query_is_refused_for_the_video_net():
    with pytest.raises(UserError, match="model.memory_query=flatten"):
        ModelConfig(arch="video", memory_query="flatten")
