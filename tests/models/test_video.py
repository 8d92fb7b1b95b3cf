"""The paper's 3D-conv MemAE: size, shapes and initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memae_dist.models import ModelConfig, build_model

# 2 * 27 * (1*96 + 96*128 + 128*256 + 256*256) conv weights + 1217 biases + 2432 BN
# affine parameters + 2000 * 256 memory slots. No layer depends on H or W.
VIDEO_PARAMS_N2000 = 6_492_801


@pytest.fixture(scope="module")
def video_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="video", num_slots=2000)).eval()


def test_parameter_count_matches_paper_net(video_model):
    count = sum(p.numel() for p in video_model.parameters())
    assert count == VIDEO_PARAMS_N2000
    assert count == pytest.approx(6.49e6, rel=0.005)
    assert video_model.memory.memory.shape == (2000, 256)


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_output_shape_equals_input_shape(video_model, size):
    x = torch.randn(1, 1, 16, size, size)
    with torch.no_grad():
        out = video_model(x)
    assert out.recon.shape == x.shape
    # one memory query per voxel of the (B, 256, 2, H/16, W/16) encoding
    assert out.attention.shape == (1, 2000, 2, size // 16, size // 16)


def test_non_square_frames_and_batch():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="video", num_slots=50)).eval()
    x = torch.randn(2, 1, 16, 32, 48)
    with torch.no_grad():
        out = model(x)
    assert out.recon.shape == x.shape
    assert out.attention.shape == (2, 50, 2, 2, 3)


def test_layout_strides_and_linear_output(video_model):
    convs = [m for m in video_model.encoder if isinstance(m, nn.Conv3d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
        (1, 96, (1, 2, 2)), (96, 128, (2, 2, 2)), (128, 256, (2, 2, 2)), (256, 256, (2, 2, 2)),
    ]
    deconvs = [m for m in video_model.decoder if isinstance(m, nn.ConvTranspose3d)]
    assert [(d.in_channels, d.out_channels, d.stride, d.output_padding) for d in deconvs] == [
        (256, 256, (2, 2, 2), (1, 1, 1)), (256, 128, (2, 2, 2), (1, 1, 1)),
        (128, 96, (2, 2, 2), (1, 1, 1)), (96, 1, (1, 2, 2), (0, 1, 1)),
    ]
    assert isinstance(video_model.decoder[-1], nn.ConvTranspose3d)  # no output activation
    acts = [m for m in video_model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 7 and all(a.negative_slope == 0.2 for a in acts)


def test_initialisation_statistics(video_model):
    convs = [m for m in video_model.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    weights = torch.cat([c.weight.detach().flatten() for c in convs])
    assert weights.std().item() == pytest.approx(0.02, rel=0.01)
    assert abs(weights.mean().item()) < 1e-3
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)
    norms = [m for m in video_model.modules() if isinstance(m, nn.BatchNorm3d)]
    gammas = torch.cat([n.weight.detach() for n in norms])
    assert gammas.mean().item() == pytest.approx(1.0, abs=0.005)
    assert gammas.std().item() == pytest.approx(0.02, rel=0.15)
    assert all(torch.count_nonzero(n.bias) == 0 for n in norms)
    mem = video_model.memory.memory.detach()
    assert mem.abs().max().item() <= 1 / 16  # uniform(-1/sqrt(256), 1/sqrt(256)), not N(0, 0.02)
    assert mem.std().item() == pytest.approx(1 / 16 / 3**0.5, rel=0.02)


def test_bf16_channels_last_step_tracks_fp32():
    """The CPU fast path (bf16 autocast, channels_last_3d): fp32 loss and attention, a loss
    within bf16 rounding of the fp32 one, and finite gradients for every parameter."""
    from memae_dist.models import memae_loss

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="video", num_slots=100, shrink_threshold=0.01))
    x = torch.rand(2, 1, 16, 32, 32) * 2 - 1
    want, _ = memae_loss(model(x), x, 0.0002)
    model = model.to(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x.contiguous(memory_format=torch.channels_last_3d))
        loss, parts = memae_loss(out, x, 0.0002)
    assert loss.dtype == torch.float32 and out.attention.dtype == torch.float32
    assert loss.item() == pytest.approx(want.item(), rel=0.02)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_decoder_bias_added_apart_is_the_stock_layer():
    """The training-mode path (bias added after the convolution) computes what
    ``nn.ConvTranspose3d`` computes, gradients included, and keeps its parameter names."""
    from memae_dist.models.video import ConvTranspose3d

    torch.manual_seed(0)
    ours = ConvTranspose3d(8, 4, 3, stride=2, padding=1, output_padding=1)
    stock = nn.ConvTranspose3d(8, 4, 3, stride=2, padding=1, output_padding=1)
    stock.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 3, 5, 5)
    y_ours, y_stock = ours(x), stock(x)
    torch.testing.assert_close(y_ours, y_stock)
    y_ours.square().sum().backward()
    y_stock.square().sum().backward()
    torch.testing.assert_close(ours.bias.grad, stock.bias.grad)
    torch.testing.assert_close(ours.weight.grad, stock.weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), stock.eval()(x))
    assert [n for n, _ in ours.named_parameters()] == ["weight", "bias"]


@pytest.mark.parametrize(("grid_step", "strides"), [
    (8, [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 1, 1)]),
    (4, [(1, 2, 2), (2, 2, 2), (2, 1, 1), (2, 1, 1)]),
])
def test_a_finer_grid_skips_the_last_spatial_halvings(grid_step, strides):
    """grid_step 8 / 4: the same layers and parameters as the paper's net, one memory query per
    8x8 / 4x4 pixels, and the decoder mirrors the encoder back to the input's shape."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="video", num_slots=2000, grid_step=grid_step)).eval()
    assert sum(p.numel() for p in model.parameters()) == VIDEO_PARAMS_N2000
    convs = [m for m in model.encoder if isinstance(m, nn.Conv3d)]
    assert [c.stride for c in convs] == strides
    deconvs = [m for m in model.decoder if isinstance(m, nn.ConvTranspose3d)]
    assert [d.stride for d in deconvs][:3] == [(2, s[1], s[2]) for s in strides[:0:-1]]
    x = torch.randn(2, 1, 16, 64, 48)
    with torch.no_grad():
        out = model(x)
    assert out.recon.shape == x.shape
    assert out.attention.shape == (2, 2000, 2, 64 // grid_step, 48 // grid_step)
