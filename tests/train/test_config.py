"""TrainConfig: validation of the scaling, precision and checkpoint settings; precision helpers."""

from __future__ import annotations

import pytest
import torch

from memae_dist.config import load_config
from memae_dist.errors import UserError
from memae_dist.train.config import TrainConfig
from memae_dist.train.precision import Precision, memory_format


@pytest.mark.parametrize(("override", "message"), [
    ("train.placement=RANDOM", "train.placement must be one of PACK, SPREAD"),
    ("train.memory_format=nhwc", "train.memory_format"),
    ("train.checkpoint_mode=best", "train.checkpoint_mode"),
    ("train.precision=fp8", "train.precision"),
    ("train.max_failures=-2", "train.max_failures must be >= -1"),
    ("train.on_nonfinite=ignore", "train.on_nonfinite"),
    ("train.lr_schedule=linear", "train.lr_schedule must be one of constant, cosine"),
    ("train.precise_bn_batches=-1", "train.precise_bn_batches must be >= 0, got -1"),
])
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_global_batch_is_kept_and_best_mode_follows_the_metric():
    assert TrainConfig(batch_size=16, workers=4, grad_accum=2).micro_batch_size == 2
    assert TrainConfig(batch_size=16, workers=1).micro_batch_size == 16
    assert TrainConfig(checkpoint_metric="val_auc").best_mode == "max"
    assert TrainConfig(checkpoint_metric="val_recon").best_mode == "min"
    assert TrainConfig(checkpoint_metric="val_recon", checkpoint_mode="max").best_mode == "max"
    with pytest.raises(UserError, match=r"train.checkpoint_metric must be one of loss, recon, "
                                        r"entropy, val_recon, val_auc or '' \(none\), got 'foo'"):
        TrainConfig(checkpoint_metric="foo")  # before: accepted, and no best ever kept


def test_cosine_schedule_starts_at_lr_and_decays_per_epoch():
    assert [TrainConfig(lr=1e-3, epochs=4).epoch_lr(e) for e in range(4)] == [1e-3] * 4
    cosine = TrainConfig(lr=1e-3, epochs=4, lr_schedule="cosine")
    lrs = [cosine.epoch_lr(e) for e in range(4)]
    assert lrs[0] == 1e-3 and lrs[2] == pytest.approx(5e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[-1] > 0


def test_precision_modes_on_cpu():
    cpu = torch.device("cpu")
    assert Precision(TrainConfig(), cpu).mode == "fp32"  # auto: no autocast on CPU
    bf16 = Precision(TrainConfig(precision="bf16"), cpu)
    conv = torch.nn.Conv3d(1, 2, 3)
    with bf16.autocast():
        assert conv(torch.randn(1, 1, 4, 4, 4)).dtype == torch.bfloat16
    assert bf16.state_dict() == {}  # bf16 needs no loss scaling
    fp16 = Precision(TrainConfig(precision="fp16"), cpu)
    assert fp16.scaler.is_enabled() and "scale" in fp16.state_dict()
    assert memory_format(TrainConfig(), "video", cpu) == torch.contiguous_format
    assert memory_format(TrainConfig(memory_format="channels_last"), "video",
                         cpu) == torch.channels_last_3d
    assert memory_format(TrainConfig(), "video", torch.device("cuda")) == torch.channels_last_3d
    # bf16 on a CPU: oneDNN's bf16 kernels are fastest channels-last
    assert memory_format(TrainConfig(precision="bf16"), "video", cpu) == torch.channels_last_3d
    assert memory_format(TrainConfig(precision="bf16", memory_format="contiguous"), "video",
                         cpu) == torch.contiguous_format


def test_bf16_on_a_cpu_without_amx_warns(monkeypatch, caplog):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with caplog.at_level("WARNING", logger="memae_dist.train"):
        Precision(TrainConfig(precision="bf16"), cpu)
    assert "train.precision=bf16" in caplog.text and "no faster than fp32" in caplog.text
    caplog.clear()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    with caplog.at_level("WARNING", logger="memae_dist.train"):
        Precision(TrainConfig(precision="bf16"), cpu)
        Precision(TrainConfig(precision="fp32"), cpu)
    assert caplog.text == ""


def test_a_step_the_fp16_scaler_drops_is_told_apart():
    cpu = torch.device("cpu")
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    precision = Precision(TrainConfig(precision="fp16"), cpu)
    before = layer.weight.detach().clone()
    # A gradient that overflows once scaled (x 65536): the scaler drops the step.
    precision.backward(layer(torch.full((1, 2), 1e36)).sum())
    assert not precision.step(optimizer) and torch.equal(layer.weight, before)
    assert precision.state_dict()["scale"] == 32768.0
    optimizer.zero_grad()
    precision.backward(layer(torch.ones(1, 2)).sum())
    assert precision.step(optimizer) and not torch.equal(layer.weight, before)
