"""Per-epoch validation measures windows the way the run's checkpoints will be scored."""

import numpy as np
import pytest

from memae_dist.evaluate.batch_score import ScoreConfig, score_dataset
from memae_dist.train.trainer import fit
from tests.train.test_trainer import tiny_config


@pytest.mark.parametrize("error", ["mse", "mae"])
def test_val_recon_is_the_mean_window_error_that_scoring_gives(tiny_data, tmp_path, error):
    cfg = tiny_config(tiny_data, tmp_path, "train.workers=0", "train.epochs=1",
                      "train.max_steps_per_epoch=2", "run.name=val", "data.val_split=test",
                      "data.stride=1", f"eval.error={error}")
    result = fit(cfg)
    row = result.history[0]
    # Scoring the epoch's checkpoint without naming an error uses the recipe's eval.error; at
    # stride 1 each scored frame is one window's error, so their mean is val_recon.
    scored = score_dataset(result.checkpoint_uri, tiny_data, None,
                           ScoreConfig(workers=0, progress=False))
    assert scored.meta["error"] == error
    scores = scored.table.column("score").to_numpy()
    assert scores.size == row["val_windows"] == 50
    np.testing.assert_allclose(scores.mean(), row["val_recon"], rtol=1e-5)
