"""The model pictures of a report (triptychs, decoded memory slots) for every network."""

from __future__ import annotations

import numpy as np
import pytest

from memae_dist.evaluate import visuals
from memae_dist.models import ModelConfig, build_model

CASES = {  # arch: (model settings, window, frame size)
    "video": ({"num_slots": 12}, 16, (32, 32)),
    "image": ({"num_slots": 12, "memory_query": "flatten"}, 1, (28, 28)),
    "image-positions": ({"num_slots": 12}, 1, (28, 28)),
    "mlp": ({"num_slots": 12, "input_dim": 784}, 1, (28, 28)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pictures_of_every_net(case, tmp_path):
    settings, window, size = CASES[case]
    arch = case.split("-")[0]
    model = build_model(ModelConfig(arch=arch, **settings)).eval()
    frames = np.random.default_rng(0).integers(0, 256, (20, *size), dtype=np.uint8)

    rec = visuals.reconstruct(model, frames, 2, window, arch)
    assert rec.clip.shape == rec.recon.shape == (window, *size)
    np.testing.assert_allclose(rec.clip, frames[2:2 + window] / 127.5 - 1, atol=1e-6)
    assert rec.mass.shape == (12,) and rec.mass.sum() > 0

    scored = 2 + window // 2  # the frame a window starting at 2 is scored on
    png, mass = visuals.triptych(model, frames, scored, window, tmp_path / "t.png", "t", arch)
    assert png.stat().st_size > 0 and mass.shape == (12,)

    slots = visuals.decode_slots(model, np.array([0, 5, 11]), size, window, arch)
    assert slots.shape == (3, *size) and np.isfinite(slots).all()
    # Each slot decodes to its own picture.
    assert not np.allclose(slots[0], slots[1])

    starts = visuals.sample_starts(len(frames), window, 4)
    usage = visuals.usage_mass(model, frames, starts, window, arch)
    assert usage.shape == (12,)
    assert visuals.memory_picture(model, usage, size, window, tmp_path / "m.png", 6,
                                  arch).stat().st_size > 0
