"""Fixtures for scoring tests: an untrained (but real) checkpoint of the tiny video model.

Training is not needed to test scoring plumbing; building the checkpoint directly keeps every
test free of training cost while going through the same files a trained run writes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from memae_dist.config import load_config
from memae_dist.models import build_model
from memae_dist.train.checkpoint import TrainState, save_checkpoint

TINY_MODEL = ["model.num_slots=50", "model.shrink_threshold=0.02"]


def make_checkpoint(folder, data: str, *overrides: str, trained_on: dict | None = None) -> str:
    """Save a freshly initialised model as a checkpoint folder; returns its path.
    ``trained_on``: the training data record a trained run writes (none: an older checkpoint)."""
    cfg = load_config(None, [*TINY_MODEL, f"data.path={data}", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    # Non-trivial BatchNorm statistics, so eval mode differs from a fresh init.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder, model, torch.optim.Adam(model.parameters()), TrainState(epoch=1),
                    cfg.to_dict(), data=trained_on)
    return str(folder)


def write_scores_file(path, abnormal_from: int = 6, **meta) -> str:
    """A small scores file as 'memae-dist score' writes it: two labelled videos of 12 scored
    frames, abnormal from their scored frame ``abnormal_from`` on (12: none). ``meta``
    overrides entries of its metadata."""
    from memae_dist.evaluate.batch_score import SCHEMA, SCORES_FORMAT, SCORES_VERSION, write_scores
    from memae_dist.evaluate.protocol import regularity

    rng = np.random.default_rng(0)
    parts = []
    for name in ("01", "02"):
        scores = rng.random(12)
        labels = (np.arange(12) >= abnormal_from).astype(np.int8)
        parts.append(pa.table({"video": [name] * 12, "frame": np.arange(8, 20, dtype=np.int32),
                               "score": scores, "regularity": regularity(scores),
                               "label": labels}, schema=SCHEMA))
    write_scores(str(path), pa.concat_tables(parts),
                 {"format": SCORES_FORMAT, "format_version": SCORES_VERSION, "checkpoint": None,
                  "data": None, "split": "test", "error": "mse", **meta})
    return str(path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_data) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_epoch_0001", tiny_data)


@pytest.fixture(scope="session")
def segmented_data(tmp_path_factory, ray_local) -> str:
    """3 labelled synthetic test videos of 50 frames (16x16) cut into short segments.

    Segments of 24 frames (step 9) give each video 4 segments, so scoring spreads one video over
    several actors and every window has to come from the right segment exactly once.
    """
    from memae_dist.data.importers.synthetic import SyntheticConfig, synthetic_videos
    from memae_dist.data.writer import write_dataset

    dst = str(tmp_path_factory.mktemp("segmented") / "data")
    cfg = SyntheticConfig(seed=3, size=(16, 16), train_videos=1, test_videos=3,
                          frames_per_video=50)
    specs = [s for s in synthetic_videos(cfg) if s.split == "test"]
    write_dataset(specs, dst, (16, 16), name="segmented", source="synthetic", workers=2,
                  segment_frames=24, segment_overlap=15, progress=False)
    return dst
