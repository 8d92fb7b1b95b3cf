"""MemoryUnit, entropy loss and usage statistics against an independent float64 numpy reference."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from memae_dist.models import MemoryUnit, entropy_loss, memory_usage, slot_mass


def _queries(z: np.ndarray) -> np.ndarray:
    """(B, C, *spatial) -> (B*L, C), batch-major then row-major positions."""
    b, c = z.shape[:2]
    return np.moveaxis(z.reshape(b, c, -1), 1, 2).reshape(-1, c)


def reference(z: np.ndarray, mem: np.ndarray, lam: float, cosine: bool):
    """Paper Eqs. 4-7 written out directly in numpy float64."""
    b, c = z.shape[:2]
    spatial = z.shape[2:]
    q = _queries(z)
    if cosine:
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        mn = mem / np.maximum(np.linalg.norm(mem, axis=1, keepdims=True), 1e-12)
        logits = qn @ mn.T
    else:
        logits = q @ mem.T
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    w = e / e.sum(axis=1, keepdims=True)
    if lam > 0:
        w = np.maximum(w - lam, 0.0) * w / (np.abs(w - lam) + 1e-12)
        w = w / np.maximum(np.abs(w).sum(axis=1, keepdims=True), 1e-12)
    z_hat = w @ mem
    n = mem.shape[0]
    z_hat = np.moveaxis(z_hat.reshape(b, -1, c), 2, 1).reshape(z.shape)
    att = np.moveaxis(w.reshape(b, -1, n), 2, 1).reshape((b, n, *spatial))
    return z_hat, att


def reference_entropy(att: np.ndarray) -> float:
    rows = _queries(att)
    return float(np.mean(-(rows * np.log(rows + 1e-12)).sum(axis=1)))


def _assert_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    got = actual.detach().numpy()
    assert got.shape == expected.shape
    rel = np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-300)
    assert rel < 1e-6
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)


CASES = [
    # (z shape, N, lambda, addressing); lambda near 1/N so shrinkage really drops slots
    ((2, 8, 3, 4, 5), 20, 0.05, "dot"),
    ((2, 8, 3, 4, 5), 20, 0.0, "dot"),
    ((3, 6, 7, 5), 12, 0.08, "cosine"),
    ((3, 6, 7, 5), 12, 0.0, "cosine"),
    ((5, 10), 16, 0.06, "dot"),
    ((4, 6, 9), 8, 0.1, "dot"),
]


@pytest.mark.parametrize(("shape", "num_slots", "lam", "addressing"), CASES)
def test_memory_unit_matches_numpy_reference(shape, num_slots, lam, addressing):
    torch.manual_seed(0)
    unit = MemoryUnit(num_slots, shape[1], lam, addressing).double()
    # cosine logits live in [-1, 1]; widen them so the softmax is far from uniform
    scale = 3.0 if addressing == "dot" else 1.0
    z = torch.randn(shape, dtype=torch.float64) * scale
    z_hat, att = unit(z)
    mem = unit.memory.detach().numpy()
    ref_z_hat, ref_att = reference(z.numpy(), mem, lam, addressing == "cosine")
    _assert_close(z_hat, ref_z_hat)
    _assert_close(att, ref_att)
    assert att.shape == (shape[0], num_slots, *shape[2:])
    rows = _queries(att.detach().numpy())
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-12)
    if lam > 0:
        assert (rows == 0).any(), "shrinkage should have removed some slots"
        assert rows[rows > 0].min() > lam  # renormalising only grows survivors
    _assert_entropy(att)


def _assert_entropy(att: torch.Tensor) -> None:
    got = entropy_loss(att)
    assert got.dim() == 0
    expected = reference_entropy(att.detach().numpy())
    assert abs(got.item() - expected) <= 1e-6 * abs(expected)


def test_addressing_stays_fp32_under_bf16_autocast():
    """bf16 features in, fp32 attention out, equal to the fp32 addressing of the same features."""
    torch.manual_seed(0)
    unit = MemoryUnit(50, 16, 1 / 50)
    z = (torch.randn(2, 16, 3, 4) * 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_hat, att = unit(z)
    assert att.dtype == torch.float32 and z_hat.dtype == torch.float32
    want_z_hat, want_att = unit(z.float())
    torch.testing.assert_close(att, want_att, rtol=0, atol=0)
    torch.testing.assert_close(z_hat, want_z_hat, rtol=0, atol=0)
    rows = _queries(att.detach().numpy())
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-6)


def test_entropy_loss_on_sparse_attention():
    rng = np.random.default_rng(1)
    w = rng.random((2, 7, 3, 4)) ** 4
    w[w < 0.2] = 0.0
    w[0, :, 0, 0] = 0.0  # an all-zero row contributes 0, not NaN
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    _assert_entropy(torch.from_numpy(w))
    one_hot = torch.zeros(4, 5)
    one_hot[:, 2] = 1.0
    assert entropy_loss(one_hot).item() == pytest.approx(0.0, abs=1e-9)
    uniform = torch.full((3, 5, 2), 0.2, dtype=torch.float64)
    assert entropy_loss(uniform).item() == pytest.approx(math.log(5), rel=1e-9)


def test_memory_init_is_uniform_in_bound():
    torch.manual_seed(0)
    unit = MemoryUnit(2000, 256, 0.0025)
    bound = 1 / math.sqrt(256)
    mem = unit.memory.detach()
    assert mem.shape == (2000, 256)
    assert mem.abs().max() <= bound
    assert mem.abs().max() > 0.99 * bound
    assert mem.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    assert abs(mem.mean().item()) < 0.01 * bound


def test_gradient_reaches_memory_and_queries():
    torch.manual_seed(0)
    unit = MemoryUnit(20, 8, 0.05)
    z = (torch.randn(2, 8, 3, 3) * 3).requires_grad_()
    z_hat, att = unit(z)
    (z_hat.square().mean() + 0.1 * entropy_loss(att)).backward()
    assert unit.memory.grad is not None and unit.memory.grad.abs().sum() > 0
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_threshold_above_every_weight_gives_zero_rows_not_nan():
    unit = MemoryUnit(10, 4, 0.9)
    z_hat, att = unit(torch.randn(2, 4, 3))
    assert torch.equal(att, torch.zeros_like(att))
    assert torch.equal(z_hat, torch.zeros_like(z_hat))
    stats = memory_usage(att)
    assert stats["zero_rows_frac"] == 1.0
    assert stats["slots_used"] == 0.0
    assert stats["entropy"] == pytest.approx(0.0, abs=1e-9)


def test_memory_usage_and_slot_mass():
    att = torch.zeros(2, 4, 3)  # (B, N, L): 6 queries over 4 slots
    att[0, 0, 0] = 1.0
    att[0, :2, 1] = 0.5
    att[1, 0, 0] = 1.0
    att[1, 0, 1] = 1.0  # (0, :, 2), (1, :, 2) stay all-zero; slots 2 and 3 never used
    stats = memory_usage(att)
    assert stats == pytest.approx({
        "slots_used": 2.0,
        "slots_used_frac": 0.5,
        "entropy": math.log(2) / 6,
        "zero_rows_frac": 2 / 6,
        "num_queries": 6.0,
    })
    assert all(isinstance(v, float) for v in stats.values())
    assert memory_usage(att, eps=0.6)["slots_used"] == 1.0  # slot 1 only holds 0.5
    mass = slot_mass(att)
    assert mass.dtype == torch.float64 and not mass.requires_grad
    assert mass.tolist() == [3.5, 0.5, 0.0, 0.0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jit.trace / legacy ONNX exporter
def test_trace_and_onnx_follow_new_shapes():
    torch.manual_seed(0)
    unit = MemoryUnit(10, 4, 0.05).eval()
    traced = torch.jit.trace(unit, torch.randn(2, 4, 3, 5))
    z = torch.randn(3, 4, 6, 2) * 3
    for got, want in zip(traced(z), unit(z), strict=True):
        torch.testing.assert_close(got, want)

    import onnxruntime as ort  # the export extra, which `make test` installs
    buf = io.BytesIO()
    torch.onnx.export(
        unit, (torch.randn(2, 4, 3, 5),), buf, dynamo=False, input_names=["z"],
        output_names=["z_hat", "attention"], dynamic_axes={"z": {0: "b", 2: "h", 3: "w"}},
    )
    session = ort.InferenceSession(buf.getvalue())
    outputs = session.run(None, {"z": z.numpy()})
    for got, want in zip(outputs, unit(z), strict=True):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6)
