"""The paper profile's Ray-less run (``bench/ped2_gpu.py``) works where Ray cannot be imported."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from memae_dist.evaluate.score import load_model

ROOT = Path(__file__).parents[2]
# A node with PyTorch but no Ray: any import of it fails.
WITHOUT_RAY = ("import runpy, sys; sys.modules['ray'] = None; script = sys.argv.pop(1); "
               "sys.argv[0] = script; runpy.run_path(script, run_name='__main__')")


def without_ray(*argv: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", WITHOUT_RAY, *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_trains_the_recipe_through_the_product_step_and_evaluates_without_ray(tmp_path):
    data, work, out = tmp_path / "data", tmp_path / "work", tmp_path / "ped2_gpu.json"
    without_ray("memae_dist/cli.py", "prepare", "synthetic", "--dst", str(data),
                "--workers", "0", "--no-progress")
    proc = without_ray("bench/ped2_gpu.py", "--data", str(data), "--json", str(out),
                       "--work", str(work), "--eval-every", "1",
                       "--set", "train.epochs=2", "--set", "train.max_steps_per_epoch=2",
                       "--set", "model.num_slots=40")
    result = json.loads(out.read_text())
    assert result["epochs_done"] == 2 and "stopped" not in result
    assert [h["step"] for h in result["history"]] == [2, 4]
    assert all(h["slots_used"] > 0 and h["loss"] > 0 for h in result["history"])
    # Every window of the training split (8 videos of 96 frames, windows of 16, stride 1).
    assert result["train_windows"] == 8 * (96 - 15)
    assert result["recipe"]["train"]["batch_size"] == 14 and "storage" not in result["recipe"]
    assert [e["epoch"] for e in result["evals"]] == [1, 2]
    assert all(0 <= e[k] <= 1 for e in result["evals"] for k in ("auc_paper_mae",
                                                                  "auc_paper_mse"))
    assert "2 epochs in" in proc.stdout
    # The checkpoints are the trainer's: the evaluation read them back as a user's would.
    ckpt = work / "run" / "checkpoint_epoch_0002"
    assert load_model(str(ckpt)).model.memory.memory.shape == (40, 256)
    metrics = json.loads((work / "eval_002_mae" / "metrics.json").read_text())
    assert metrics["auc_paper"] == result["evals"][-1]["auc_paper_mae"]
    assert torch.load(ckpt / "state.pt", weights_only=False)["step"] == 4


def test_a_spent_time_budget_still_evaluates_what_was_trained(tmp_path):
    data, out = tmp_path / "data", tmp_path / "ped2_gpu.json"
    without_ray("memae_dist/cli.py", "prepare", "synthetic", "--dst", str(data),
                "--workers", "0", "--no-progress")
    without_ray("bench/ped2_gpu.py", "--data", str(data), "--json", str(out),
                "--work", str(tmp_path / "work"), "--budget-s", "0",
                "--set", "model.num_slots=40")
    result = json.loads(out.read_text())
    assert result["stopped"] == "time budget (0 s) after epoch 0"
    assert result["epochs_done"] == 0 and result["history"] == []
    assert [e["epoch"] for e in result["evals"]] == [0]
