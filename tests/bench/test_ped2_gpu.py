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


def without_ray(*argv: str, code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", WITHOUT_RAY, *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == code, proc.stderr[-3000:]
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


def test_what_cannot_train_or_report_is_refused_before_training(tmp_path):
    data, out = tmp_path / "data", tmp_path / "ped2_gpu.json"
    without_ray("memae_dist/cli.py", "prepare", "synthetic", "--dst", str(data),
                "--workers", "0", "--no-progress")
    run = ["bench/ped2_gpu.py", "--data", str(data), "--json", str(out), "--work",
           str(tmp_path / "work"), "--set", "model.num_slots=40"]
    # The trainer's own check: not one batch of windows. One line, nothing trained or written.
    proc = without_ray(*run, "--set", "train.batch_size=100000", code=2)
    assert proc.stderr.splitlines() == [
        f"ped2_gpu.py: error: split train of {data} has {8 * 81} clips (16-frame windows at "
        "stride 1), fewer than one batch (train.batch_size=100000): lower train.batch_size or "
        "add training data"]
    # The evaluation's: no such split to score.
    proc = without_ray(*run, "--set", "eval.split=val", code=2)
    assert proc.stderr.startswith("ped2_gpu.py: error: ") and "'val'" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and not out.exists()
    # A budget that allows no epoch evaluates nothing, and says so.
    proc = without_ray(*run, "--budget-s", "0", code=1)
    assert proc.stderr.splitlines() == [
        "ped2_gpu.py: time budget (0 s) after epoch 0: nothing trained, nothing evaluated "
        "(raise --budget-s)"]
    result = json.loads(out.read_text())
    assert result["history"] == [] and result["evals"] == [] and result["epochs_done"] == 0
