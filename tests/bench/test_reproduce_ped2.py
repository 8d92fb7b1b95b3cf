"""The Ped2 reproduction: where the paper protocol loses AUC, and the lite profile's precision."""

import importlib.util
import json
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from memae_dist.evaluate.protocol import VideoScores, evaluate_videos
from tests.evaluate.conftest import make_checkpoint

SCRIPT = Path(__file__).parents[2] / "bench" / "reproduce_ped2.py"


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_ped2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_all_abnormal_video_loses_auc_across_videos_only(reproduce):
    # Video a ranks perfectly (normalised 0, .25, .5 | .75, 1); video b is abnormal throughout,
    # so its normalisation puts abnormal frames at 0 and .5, level with or under a's normal ones.
    videos = [VideoScores("a", np.arange(5), [1.0, 2, 3, 4, 5], [0, 0, 0, 1, 1]),
              VideoScores("b", np.arange(3), [1.0, 2, 3], [1, 1, 1])]
    lost = reproduce.pairs_lost(evaluate_videos(videos))
    # 15 (abnormal, normal) pairs: b's 0 under a's .25 and .5, tied with a's 0; b's .5 tied.
    assert lost == pytest.approx({"auc_lost_within_videos": 0.0, "auc_lost_across_videos": 3 / 15})
    assert evaluate_videos(videos)["auc_paper"] == pytest.approx(1 - 3 / 15)


def test_the_two_parts_add_up_to_the_paper_protocols_shortfall(reproduce):
    rng = np.random.default_rng(0)
    videos = []
    for i, n in enumerate([40, 25, 60]):
        labels = (np.arange(n) > n // 3).astype(np.uint8)
        videos.append(VideoScores(f"{i:02d}", np.arange(n), rng.random(n) + 0.5 * labels, labels))
    lost = reproduce.pairs_lost(evaluate_videos(videos))
    assert lost["auc_lost_within_videos"] > 0 and lost["auc_lost_across_videos"] > 0
    assert sum(lost.values()) == pytest.approx(1 - evaluate_videos(videos)["auc_paper"])


def test_lite_trains_in_bf16_only_where_the_cpu_has_amx_and_the_command_is_silent(reproduce):
    from memae_dist.train.precision import cpu_has_native

    native = ["train.precision=bf16"] if cpu_has_native("bf16") else []
    assert reproduce.machine_overrides("lite", ["train.epochs=2"]) == native
    assert reproduce.machine_overrides("lite", ["train.precision=fp32"]) == []
    assert reproduce.machine_overrides("paper", []) == []


def lite_checkpoint(run: Path, data, *overrides: str) -> None:
    """A finished run's checkpoint trained with the lite recipe's settings."""
    make_checkpoint(run / "checkpoint_epoch_0001", data, "model.num_slots=500",
                    "model.shrink_threshold=0.002", "train.epochs=40", "train.lr=0.0003",
                    "train.batch_size=4", "data.stride=2", *overrides)


def test_a_finished_run_with_other_settings_is_not_reported_as_this_plans(reproduce, tmp_path,
                                                                          tiny_data):
    run = tmp_path / "memae_s0"
    lite_checkpoint(run, tiny_data)
    lite = reproduce.PROFILES["lite"]
    reproduce.check_reusable(Namespace(set=[]), lite, run, "memae", 0)  # the recipe's settings
    with pytest.raises(SystemExit, match=r"train.epochs 40 \(wanted 10\)"):
        reproduce.check_reusable(Namespace(set=["train.epochs=10"]), lite, run, "memae", 0)
    with pytest.raises(SystemExit, match=r"model.num_slots 500 \(wanted 2000\)"):
        reproduce.check_reusable(Namespace(set=["model.num_slots=2000"]), lite, run, "memae", 0)
    with pytest.raises(SystemExit, match="has no checkpoint"):
        reproduce.check_reusable(Namespace(set=[]), lite, tmp_path / "gone", "memae", 0)


def finished_run(work: Path, data, variant: str, history: list[dict]) -> None:
    """A run of the lite plan in ``work`` whose training and both evaluations are done."""
    name = f"{variant}_s0"
    run = work / "runs" / name
    lite_checkpoint(run, data, f"model.variant={variant}")
    (run / "history.json").write_text(json.dumps(history))
    metrics = {"auc_paper": 0.9, "per_video": [
        {"name": "01", "n_frames": 10, "n_abnormal": 4, "auc": 1.0}]}
    for folder in (name, f"{name}_mae"):
        (work / "eval" / folder).mkdir(parents=True)
        (work / "eval" / folder / "metrics.json").write_text(json.dumps(metrics))


def test_a_resumed_runs_training_time_counts_every_epoch(reproduce, tmp_path, tiny_data):
    """A run resumed by a later invocation reports that invocation's wall time and, beside
    it, the time of all its epochs."""
    work = tmp_path / "work"
    history = [{"epoch": e, "epoch_s": 60.0, "clips_per_s": 19.0, "loss": 0.001}
               for e in range(1, 41)]
    finished_run(work, tiny_data, "memae", history)
    # This invocation trained the last 20 of the 40 epochs.
    (work / "eval" / "memae_s0" / "walls.json").write_text(
        json.dumps({"train_wall_s": 1250.0, "eval_wall_s": 60.0}))
    row = reproduce.train_and_evaluate(Namespace(work=work, set=[]), reproduce.PROFILES["lite"],
                                       str(tiny_data), "memae", 0)
    assert (row["epochs"], row["train_wall_s"], row["train_epochs_s"]) == (40, 1250.0, 2400.0)


def test_the_ae_reports_no_attention_entropy(reproduce, tmp_path, tiny_data):
    """The AE's history carries the entropy loss term, always zero; a row must not read it
    as an attention that picks one slot."""
    history = [{"epoch": e, "epoch_s": 60.0, "clips_per_s": 19.0, "loss": 0.001,
                "entropy": 0.0} for e in range(1, 41)]
    rows = {}
    for variant in ("ae", "memae"):
        work = tmp_path / variant
        finished_run(work, tiny_data, variant, history)
        rows[variant] = reproduce.train_and_evaluate(
            Namespace(work=work, set=[]), reproduce.PROFILES["lite"], str(tiny_data), variant, 0)
    assert rows["ae"]["per_query_entropy"] is None
    assert rows["memae"]["per_query_entropy"] == 0.0


def results_file(path: Path, *runs: tuple[str, int, float, float]) -> Path:
    """A results file of this script with (variant, seed, MSE auc_paper, MAE auc_paper) runs."""
    rows = [{"variant": v, "seed": s, "auc_paper": mse, "auc_paper_mae": mae}
            for v, s, mse, mae in runs]
    path.write_text(json.dumps({"runs": rows}))
    return path


def test_the_official_reading_scores_the_ae_by_mse_and_the_memories_by_mae(reproduce, tmp_path):
    first = results_file(tmp_path / "a.json", ("memae", 0, 0.84, 0.92), ("ae", 0, 0.86, 0.90))
    # The AE's seed 0 again (a run copied into two plans) counts once.
    second = results_file(tmp_path / "b.json", ("ae", 0, 0.86, 0.90), ("ae", 1, 0.84, 0.88),
                          ("memae_nonsparse", 0, 0.81, 0.86), ("memae", 1, 0.86, 0.86))
    table = reproduce.tabulate([first, second])
    assert [(r["variant"], r["seed"]) for r in table["runs"]] == [
        ("memae", 0), ("ae", 0), ("ae", 1), ("memae_nonsparse", 0), ("memae", 1)]
    official = table["summary_official"]
    assert official["ae"]["mean"] == pytest.approx(0.85)  # the MSE's 0.86 and 0.84
    assert official["memae"]["mean"] == pytest.approx(0.89)  # the MAE's 0.92 and 0.86
    assert official["memae"]["spread"] == pytest.approx(0.06)
    assert official["memae_nonsparse"]["mean"] == pytest.approx(0.86)
    assert table["summary_mae"]["ae"]["mean"] == pytest.approx(0.89)
    assert table["summary"]["memae"]["mean"] == pytest.approx(0.85)


def test_tabulating_a_file_that_is_not_a_results_file_names_it(reproduce, tmp_path):
    stray = tmp_path / "metrics.json"
    stray.write_text(json.dumps({"auc_paper": 0.9}))
    with pytest.raises(SystemExit, match="metrics.json is not a results file"):
        reproduce.tabulate([stray])


# A step that reports when it starts and how it was stopped, in place of a training run.
STEP = """
import pathlib, signal, sys, time
def stop(signum, frame):  # as the CLI handles SIGTERM
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, stop)
marks = pathlib.Path(sys.argv[1])
try:
    (marks / "started").touch()
    time.sleep(60)
except KeyboardInterrupt:
    (marks / "stopped cleanly").touch()
    sys.exit(130)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_is_passed_on_to_the_running_step(tmp_path, sig):
    """Started in its own session, the script alone gets SIGTERM (or SIGINT): the step it runs
    must be asked to stop cleanly, not left running or killed."""
    (tmp_path / "step.py").write_text(STEP)
    driver = (f"import importlib.util, sys, pathlib\n"
              f"spec = importlib.util.spec_from_file_location('r', {str(SCRIPT)!r})\n"
              f"r = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)\n"
              f"r.forward_stops()\n"
              f"r.run([sys.executable, {str(tmp_path / 'step.py')!r}, {str(tmp_path)!r}],"
              f" pathlib.Path({str(tmp_path / 'log')!r}))\n")
    proc = subprocess.Popen([sys.executable, "-c", driver], stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=SCRIPT.parents[1])
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "started").exists(), proc.stderr.read() if proc.poll() is not None else ""
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert (tmp_path / "stopped cleanly").exists()
    assert "interrupted:" in stderr and "the same command continues" in stderr
    assert "Traceback" not in stderr
