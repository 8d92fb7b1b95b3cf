"""The BatchNorm recomputation probe: averaged weights, recomputed statistics, an evaluation."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from memae_dist.train.checkpoint import STATE_FILE
from tests.evaluate.conftest import make_checkpoint

SCRIPT = Path(__file__).parents[2] / "bench" / "bn_recompute.py"


def state(folder) -> dict:
    return torch.load(Path(folder) / STATE_FILE, weights_only=True)


def test_averaged_checkpoints_get_statistics_of_their_own_and_an_evaluation(tiny_data, tmp_path):
    first = make_checkpoint(tmp_path / "e1", tiny_data, "train.batch_size=2")
    second = make_checkpoint(tmp_path / "e2", tiny_data, "train.batch_size=2")
    payload = state(second)
    payload["model"]["memory.memory"] += 1.0  # the two differ by 1 in one weight
    torch.save(payload, Path(second) / STATE_FILE)
    out, results = tmp_path / "avg", tmp_path / "rows.json"
    subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", first, second, "--data",
                    tiny_data, "--out", str(out), "--batches", "3", "--json", str(results)],
                   check=True, capture_output=True)
    got, before = state(out)["model"], state(first)["model"]
    torch.testing.assert_close(got["memory.memory"], before["memory.memory"] + 0.5)
    norms = [k[: -len(".running_mean")] for k in got if k.endswith(".running_mean")]
    assert norms
    for name in norms:  # the 3 newest batches of 2 clips, not the checkpoint's statistics
        assert int(got[f"{name}.num_batches_tracked"]) == 3
        assert not torch.equal(got[f"{name}.running_mean"], before[f"{name}.running_mean"])
    [row] = json.loads(results.read_text())
    assert row["batches"] == 3 and 0.0 <= row["auc_paper"] <= 1.0
    assert row["checkpoints"] == [first, second] and row["per_video"]
    assert not out.with_name("avg.tmp").exists()
