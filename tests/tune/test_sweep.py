"""Sweeps end to end on a tiny synthetic set: ASHA, exported config, divergence, resumption."""

import contextlib
import copy
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray import tune

from memae_dist.cli import Terminated, _terminated, main
from memae_dist.config import load_config
from memae_dist.data.lock import LOCK_FILE, RunLock
from memae_dist.data.manifest import load_manifest
from memae_dist.errors import UserError
from memae_dist.tune.record import check_same_sweep
from memae_dist.tune.space import load_space, parse_space
from memae_dist.tune.sweep import (
    SweepOptions,
    check_search,
    make_search,
    plan_concurrency,
    run_sweep,
)

# Tiny trials: 16x16 clips, 9 steps of 8 clips per epoch, 2 epochs, one worker of half a CPU.
BASE = {
    "model": {"num_slots": 40, "shrink_threshold": 0.05},
    "data": {"shuffle_buffer": 16},
    "train": {"batch_size": 8, "epochs": 2, "workers": 1, "cpus_per_worker": 0.5,
              "tensorboard": False},
}


def copy_data(tiny_data: str, tmp_path: Path) -> str:
    """The carve rewrites the manifest: work on a copy, not the session's shared set."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    return str(dst)


def live_placement_groups() -> list[str]:
    """Groups still holding resources: trials stopped by Tune must not leave any behind."""
    from ray.util import placement_group_table

    return [k for k, v in placement_group_table().items() if v["state"] != "REMOVED"]


def read_rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_sweep_name_is_one_folder_under_the_storage():
    for bad in ("..", "a/b", " s"):
        with pytest.raises(UserError, match="--name must be one folder name"):
            SweepOptions(name=bad)


def test_plan_concurrency_counts_train_workers_tune_cannot_see():
    # 8 CPUs, 1 kept for Ray Data; trials of 2 workers x 1 CPU (+ the trial driver) -> 3.
    assert plan_concurrency({"CPU": 8}, 2, 1.0, 0.0, total=10, requested=None) == 3
    assert plan_concurrency({"CPU": 8}, 2, 1.0, 0.0, total=2, requested=None) == 2
    assert plan_concurrency({"CPU": 8}, 2, 1.0, 0.0, total=10, requested=1) == 1
    assert plan_concurrency({"CPU": 8}, 2, 1.0, 0.0, total=10, requested=9) == 3
    # GPUs bound it too: 4 GPUs, trials of 2 workers x 1 GPU -> 2.
    assert plan_concurrency({"CPU": 64, "GPU": 4}, 2, 1.0, 1.0, total=10, requested=None) == 2
    with pytest.raises(UserError, match="one trial needs 4 worker"):
        plan_concurrency({"CPU": 4}, 4, 1.0, 0.0, total=2, requested=None)


def test_search_algorithms_respect_the_concurrency_limit():
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    spaces = Path(__file__).parents[2] / "tune_spaces"
    video, smoke = load_space(spaces / "memae_video.yaml"), load_space(spaces / "smoke.yaml")
    random = make_search(SweepOptions(), smoke, 3)
    assert isinstance(random, BasicVariantGenerator) and random.max_concurrent == 3
    optuna = make_search(SweepOptions(search="optuna"), video, 3)
    assert isinstance(optuna, ConcurrencyLimiter) and optuna.max_concurrent == 3
    check_search(SweepOptions(search="optuna"), video)
    with pytest.raises(UserError, match="params.train.lr uses grid"):
        check_search(SweepOptions(search="optuna"), smoke)


def test_resuming_with_another_space_or_config_is_refused(tmp_path):
    cfg = load_config(None, [f"run.storage={tmp_path}"])
    sweep = str(tmp_path / "sweeps" / "s")
    check_same_sweep(sweep, cfg, {"space": {"k": [1, 3]}, "samples": 2})
    check_same_sweep(sweep, cfg, {"space": {"k": [1, 3]}, "samples": 2})  # same: resumes
    with pytest.raises(UserError, match=r"already exists with a different samples \(samples=2, "
                                        r"now 3\)"):
        check_same_sweep(sweep, cfg, {"space": {"k": [1, 3]}, "samples": 3})
    with pytest.raises(UserError, match=r"different space \(space\.k=\[1, 3\], now \[1, 4\]\)"):
        check_same_sweep(sweep, cfg, {"space": {"k": [1, 4]}, "samples": 2})


def test_smoke_sweep_stops_weak_trials_and_exports_a_trainable_config(tiny_data, tmp_path,
                                                                       capsys):
    data = copy_data(tiny_data, tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**BASE, "run": {"storage": str(tmp_path / "runs")}}))
    out = tmp_path / "out"
    rc = main(["tune", "--space", "smoke", "--config", str(base), "--data", data,
               "--val-from-test", "1", "--max-concurrent", "2", "--storage",
               str(tmp_path / "sweeps"), "--name", "smoke", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert not (tmp_path / "sweeps" / "smoke" / LOCK_FILE).exists()  # released at the end
    # The val split is a labelled test video; the final test uses only the others.
    manifest = load_manifest(data)
    assert [v.name for v in manifest.videos("val")] == ["01"]
    assert [v.name for v in manifest.videos("test")] == ["02"]

    rows = read_rows(out / "trials.csv")
    assert len(rows) == 4
    statuses = [r["status"] for r in rows]
    assert set(statuses) <= {"COMPLETED", "STOPPED_EARLY"} and "COMPLETED" in statuses
    assert "STOPPED_EARLY" in statuses  # ASHA stopped a weak trial after its first epoch
    assert live_placement_groups() == []  # and its workers' resources were given back
    for r in rows:
        n, k = int(r["model.num_slots"]), float(r["k"])
        assert n in (20, 40) and 1 <= k <= 3
        assert float(r["model.shrink_threshold"]) == pytest.approx(k / n)
        assert float(r["train.lr"]) in (1e-3, 1e-6)
        assert int(r["epochs"]) == (2 if r["status"] == "COMPLETED" else 1)
        assert float(r["objective"]) == pytest.approx(float(r["metric.val_recon"]))
        assert r["trial_id"] in printed  # the table is printed too
    assert (out / "objective_vs_params.png").stat().st_size > 1000

    best = json.loads((out / "best.json").read_text())
    assert best["objective"]["metric"] == "val_recon" and best["objective"]["mode"] == "min"
    assert best["value"] == min(float(r["objective"]) for r in rows)
    assert best["params"]["train.lr"] == 1e-3  # the learning rate that learns wins
    assert Path(best["checkpoint"], "state.pt").exists()
    # Scored once on the untouched test video, with the best checkpoint only.
    assert best["test"]["split"] == "test" and best["test"]["checkpoint"] == best["checkpoint"]
    assert (out / "test" / "metrics.json").exists()
    assert f"best checkpoint: {best['checkpoint']}" in printed

    # best.yaml is a plain config that `train` accepts and trains.
    cfg = load_config(out / "best.yaml")
    assert cfg.model.num_slots == best["params"]["model.num_slots"]
    assert cfg.model.shrink_threshold == pytest.approx(best["params"]["model.shrink_threshold"])
    assert cfg.data.val_split == "val" and cfg.data.path == data
    assert main(["train", "--config", str(out / "best.yaml"), "--epochs", "1"]) == 0
    assert (tmp_path / "runs" / "smoke-best" / "checkpoint_epoch_0001" / "state.pt").exists()


def test_second_sweep_with_the_same_name_is_refused_while_one_runs(tiny_data, tmp_path,
                                                                    capsys):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    sweep = tmp_path / "sweeps" / "smoke"
    with RunLock(str(sweep), None, 120, what="sweep"):  # this process is the live one
        rc = main(["tune", "--space", "smoke", "--config", str(base), "--data",
                   copy_data(tiny_data, tmp_path), "--val-from-test", "1", "--storage",
                   str(tmp_path / "sweeps"),
                   "--name", "smoke", "--out", str(tmp_path / "out")])
        assert sorted(os.listdir(sweep)) == [LOCK_FILE]  # no trial was started
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"memae-dist: error: sweep {sweep} is in use by another process")
    assert f"pid {os.getpid()}" in err[-1]


class InterruptOnce(tune.Callback):
    """Ctrl-C (a real SIGINT to this process, or ``sig``) after the first epoch any trial
    reports."""

    def __init__(self, marker: str, sig: int = signal.SIGINT):
        self.marker, self.sig = marker, sig

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("epoch") == 1 and not os.path.exists(self.marker):
            Path(self.marker).write_text(trial.trial_id)
            os.kill(os.getpid(), self.sig)


def test_diverging_trial_is_marked_and_an_interrupted_sweep_resumes(tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path)
    cfg = load_config(None, [f"data.path={data}", f"run.storage={tmp_path / 'runs'}"],
                      base=copy.deepcopy(BASE))
    # Two trials in order: a sane learning rate, then one that sends the loss to NaN.
    space = parse_space({"name": "nan", "samples": 1,
                         "params": {"train.lr": {"grid": [1e-3, 1e30]}}}, "nan.yaml")
    marker = str(tmp_path / "interrupted")

    def sweep():
        return run_sweep(space, cfg, SweepOptions(
            storage=str(tmp_path / "sweeps"), name="nan", out=tmp_path / "out",
            max_concurrent=1, scheduler="fifo", val_from_test="1",
            callbacks=[InterruptOnce(marker)]))

    first = sweep()
    assert first.interrupted and first.best is None
    assert [r.status for r in first.rows][0] == "INTERRUPTED"
    assert not (tmp_path / "out" / "best.yaml").exists()
    assert live_placement_groups() == []
    sane_id = Path(marker).read_text()
    history = tmp_path / "sweeps" / "nan" / "runs" / sane_id / "history.json"
    epoch1 = json.loads(history.read_text())[0]
    assert epoch1["epoch"] == 1

    second = sweep()  # the same call again: resumes
    assert not second.interrupted
    by_lr = {r.params["train.lr"]: r for r in second.rows}
    assert len(second.rows) == 2
    sane, wild = by_lr[1e-3], by_lr[1e30]
    assert sane.trial_id == sane_id and sane.status == "COMPLETED" and sane.epochs == 2
    assert wild.status == "DIVERGED" and "non-finite" in wild.error
    # No epoch was trained twice: the rerun continued the run from its last checkpoint (or,
    # when the run finished while the sweep was shutting down, just reported its last epoch).
    rows = json.loads(history.read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    # The checkpoint's write time is added to its row once the write returns, which a stop
    # can overtake: epoch 1's row may gain it on the rerun; its training figures may not change.
    assert {k: v for k, v in rows[0].items() if k != "checkpoint_s"} == \
        {k: v for k, v in epoch1.items() if k != "checkpoint_s"}
    assert rows[1]["run_starts"] in (1, 2)
    assert second.objective.metric == "val_auc" and second.best.trial_id == sane_id
    assert second.checkpoint and Path(second.checkpoint, "state.pt").exists()
    table = read_rows(tmp_path / "out" / "trials.csv")
    assert {r["status"] for r in table} == {"COMPLETED", "DIVERGED"}


# One trial of one epoch: what the tests of paths and outputs need, and no more.
ONE = {"name": "one", "samples": 1, "params": {"model.num_slots": {"choice": [20]}}}
# Sampled values inside (1, 3) give lambda = 5, the corners a valid one: the space passes the
# up-front corner check and every trial then fails on its config.
FAILING = {"name": "fails", "samples": 1, "params": {"k": {"uniform": [1, 3]}},
           "derived": {"model.shrink_threshold": "5 if 1 < k < 3 else 0.01"}}


class TerminateAfterFirstTrial(tune.Callback):
    """SIGTERM to this process once the first trial has finished, as `kill` or `ray job stop`
    would send it."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_terminated_sweep_keeps_what_finished_and_resumes_the_rest(tiny_data, tmp_path):
    """SIGTERM takes Tune's orderly stop, as Ctrl-C does: the partial table and the resume see
    the trial that finished before it (they once read a state saved before that trial ended,
    and the rerun trained it again)."""
    cfg = load_config(None, [f"data.path={copy_data(tiny_data, tmp_path)}",
                             f"run.storage={tmp_path / 'runs'}"], base=copy.deepcopy(BASE))
    space = parse_space({"name": "two", "samples": 1,
                         "params": {"model.num_slots": {"grid": [20, 30]}}}, "two.yaml")
    marker = str(tmp_path / "terminated")

    def sweep():
        return run_sweep(space, cfg, SweepOptions(
            storage=str(tmp_path / "sweeps"), name="term", out=tmp_path / "out",
            scheduler="fifo", max_concurrent=1, val_from_test="1",
            callbacks=[TerminateAfterFirstTrial(marker)]))

    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        with pytest.raises(Terminated):
            sweep()
    finally:
        signal.signal(signal.SIGTERM, previous)
    first = Path(marker).read_text()
    rows = {r["trial_id"]: r for r in read_rows(tmp_path / "out" / "trials.csv")}
    assert (rows[first]["status"], rows[first]["epochs"]) == ("COMPLETED", "2")
    assert not (tmp_path / "out" / "best.yaml").exists()

    second = sweep()  # the same call again: resumes
    assert not second.interrupted
    assert {r.trial_id: r.status for r in second.rows} == \
        {r.trial_id: "COMPLETED" for r in second.rows}
    history = tmp_path / "sweeps" / "term" / "runs" / first / "history.json"
    assert [(r["epoch"], r["run_starts"]) for r in json.loads(history.read_text())] == \
        [(1, 1), (2, 1)]  # not trained again


def test_a_sigterm_to_the_whole_process_group_ends_the_sweep_at_once(tiny_data, tmp_path):
    """`timeout`, systemd and CI cancels signal the process group: the local Ray stops with the
    driver, so the way out must not call it (it used to wait 60 s, then abort with exit 1 and
    the sweep's lock still held)."""
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    log = (tmp_path / "tune.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "memae_dist.cli", "tune", "--space", "smoke", "--config",
         str(base), "--data", copy_data(tiny_data, tmp_path), "--val-from-test", "1",
         "--storage", str(tmp_path / "sweeps"), "--name", "pg", "--out", str(tmp_path / "out"),
         "--no-test"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    deadline = time.monotonic() + 300
    while "Trial status" not in (text := (tmp_path / "tune.log").read_text(errors="replace")):
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no trial started (exit code {proc.poll()}); the log ends:\n"
                        + text[-3000:])
        time.sleep(1)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert time.monotonic() - t0 < 30
    text = (tmp_path / "tune.log").read_text(errors="replace")
    assert "memae-dist: terminated; rerun the same command to resume" in text
    assert "Failed to connect to GCS" not in text
    assert not (tmp_path / "sweeps" / "pg" / LOCK_FILE).exists()


def last_err_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_relative_paths_a_damaged_score_and_a_sweep_started_over(tiny_data, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # every path below is relative to it, as in the README
    shutil.copytree(tiny_data, "data")
    Path("base.yaml").write_text(yaml.safe_dump(BASE))
    Path("one.yaml").write_text(yaml.safe_dump(ONE))
    Path("fails.yaml").write_text(yaml.safe_dump(FAILING))
    flags = ["--config", "base.yaml", "--data", "data", "--scheduler", "fifo", "--set",
             "train.epochs=1", "--storage", "sweeps", "--out", "out"]
    one = ["tune", "--space", "one.yaml", "--val-from-test", "1", "--name", "rel", *flags]
    out, sweep = tmp_path / "out", tmp_path / "sweeps" / "rel"

    # Trials run in Tune's trial folders: they get the dataset and storage as absolute paths.
    assert main(one) == 0, capsys.readouterr().err
    assert [r["status"] for r in read_rows(out / "trials.csv")] == ["COMPLETED"]
    assert load_config(out / "best.yaml").data.path == str(tmp_path / "data")
    best = json.loads((out / "best.json").read_text())
    assert best["sweep"] == str(sweep) and best["checkpoint"].startswith(str(sweep / "runs"))

    # A damaged test score is not trusted: the rerun scores the test split again.
    metrics = out / "test" / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])
    assert main(one) == 0, capsys.readouterr().err
    assert json.loads(metrics.read_text())["checkpoint"] == best["checkpoint"]

    # Another sweep is refused that --out before it starts, so the two never mix.
    other = ["tune", "--space", "one.yaml", "--name", "other", *flags]
    assert main(other) == 2
    assert last_err_line(capsys) == (f"memae-dist: error: --out out: holds the results of "
                                     f"sweep {sweep}; pick another --out (or remove that "
                                     "folder) so the two sweeps' results do not mix")
    assert not (tmp_path / "sweeps" / "other").exists()

    # Started over under the same name, every trial fails: the line says why, and the first
    # sweep's best config and test score are gone from --out.
    shutil.rmtree(sweep)
    assert main(["tune", "--space", "fails.yaml", "--name", "rel", *flags]) == 1
    err = last_err_line(capsys)
    assert err.startswith("memae-dist: no trial finished with a finite objective: every trial "
                          "failed; trial ")
    assert err.endswith("model.shrink_threshold must be < 1, got 5.0"), err
    assert [r["status"] for r in read_rows(out / "trials.csv")] == ["ERROR"]
    assert sorted(os.listdir(out)) == ["objective_vs_params.png", "trials.csv"]


def test_out_is_checked_before_any_trial(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    sweeps = tmp_path / "sweeps"

    def tune(out: Path, *extra: str) -> str:
        assert main(["tune", "--space", "smoke", "--config", str(base), "--data",
                     str(tmp_path / "data"), "--val-from-test", "1", "--storage", str(sweeps),
                     "--name", "s", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and not sweeps.exists(), err
        return err[0]

    # A search that cannot sample the space: refused before the sweep records its settings,
    # which would then refuse the corrected command as another sweep.
    assert tune(tmp_path / "out" / "sub", "--search", "optuna").endswith(
        "params.train.lr uses grid, which --search optuna cannot sample; use choice")
    assert not (tmp_path / "out").exists()  # nor an empty --out folder left behind
    afile = tmp_path / "afile"
    afile.write_text("")
    assert tune(afile) == f"memae-dist: error: --out {afile}: exists and is not a folder"
    long = tmp_path / ("x" * 300)
    assert tune(long) == f"memae-dist: error: --out {long}: cannot write there: File name too long"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "trials.csv").write_text("a,b\n1,2\n")
    assert tune(foreign) == (f"memae-dist: error: --out {foreign}: trials.csv there is not a "
                             "sweep's result (unreadable, or written by something else); pick "
                             "another --out")
    (foreign / "best.json").write_text(json.dumps({"sweep": "s3://bucket/sweeps/s"}))
    assert tune(foreign) == (f"memae-dist: error: --out {foreign}: holds the results of sweep "
                             "s3://bucket/sweeps/s; pick another --out (or remove that folder) "
                             "so the two sweeps' results do not mix")


def test_a_damaged_sweep_file_is_one_line_naming_it(tiny_data, tmp_path, capsys):
    base, space = tmp_path / "base.yaml", tmp_path / "one.yaml"
    base.write_text(yaml.safe_dump(BASE))
    space.write_text(yaml.safe_dump(ONE))
    sweep_file = tmp_path / "sweeps" / "one" / "sweep.json"
    sweep_file.parent.mkdir(parents=True)
    cfg = load_config(None, [])
    check_same_sweep(str(sweep_file.parent), cfg, {"space": {"k": [1, 3]}, "samples": 2})
    for damaged in (sweep_file.read_bytes()[:10], b"\xff\xfe", b"[1, 2]"):
        sweep_file.write_bytes(damaged)
        assert main(["tune", "--space", str(space), "--config", str(base), "--data", tiny_data,
                     "--storage", str(tmp_path / "sweeps"), "--out", str(tmp_path / "out")]) == 2
        assert last_err_line(capsys) == (
            f"memae-dist: error: {sweep_file}: damaged sweep file (not the JSON this sweep "
            "wrote); restore it, or remove the sweep folder or pick another --name to start "
            "over")
        assert sorted(os.listdir(sweep_file.parent)) == ["sweep.json"]  # no trial started


def test_a_result_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    from memae_dist.tune import results as res

    blocked = tmp_path / "out"
    blocked.write_text("")  # a file where the results' folder must go
    row = res.TrialRow("t1", res.COMPLETED, 1, 0.5, 1, {"model.num_slots": 20})
    with pytest.raises(UserError) as info:
        res.write_csv([row], blocked / "trials.csv")
    assert str(info.value) == (f"cannot write {blocked / 'trials.csv'}: File exists (the sweep "
                               "is kept: rerun the same command to write its results again)")
    with pytest.raises(UserError, match=f"cannot write {blocked / 'best.json'}: "):
        res.write_summary(blocked, {"sweep": "s"})
    assert blocked.read_text() == ""


def test_a_sweep_publishes_its_results_into_an_s3_prefix(tiny_data, tmp_path, s3_bucket,
                                                         monkeypatch, capsys):
    # As a Ray job, a local --out lands in the job's throw-away working directory on the head.
    from memae_dist.data import storage

    monkeypatch.chdir(tmp_path)
    Path("base.yaml").write_text(yaml.safe_dump(BASE))
    Path("one.yaml").write_text(yaml.safe_dump(ONE))
    out = f"{s3_bucket}/sweeps/one"
    storage.write_bytes_atomic(f"{out}/best.yaml", b"an earlier sweep's, of the same name")
    storage.write_bytes_atomic(f"{out}/notes.txt", b"not a sweep's file")
    flags = ["--space", "one.yaml", "--config", "base.yaml", "--data", copy_data(tiny_data,
             tmp_path), "--val-from-test", "1", "--scheduler", "fifo", "--set",
             "train.epochs=1", "--storage", "sweeps", "--out", out]
    assert main(["tune", "--name", "one", *flags]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"table: {out}/trials.csv" in printed and f"-> {out}/best.yaml" in printed
    assert storage.listdir(out) == ["best.json", "best.yaml", "notes.txt",
                                    "objective_vs_params.png", "test", "trials.csv"]
    best = json.loads(storage.read_bytes(f"{out}/best.json"))
    assert best["sweep"] == str(tmp_path / "sweeps" / "one")
    # The test score names its file where it was published, not the staging folder.
    assert best["test"]["scores"] == f"{out}/test/scores.parquet"
    scores = storage.read_bytes(f"{out}/test/scores.parquet")
    # The rerun of the finished sweep continues from the published results: the same test
    # score is reused (scoring again would write another file: its timing differs).
    assert main(["tune", "--name", "one", *flags]) == 0, capsys.readouterr().err
    assert storage.read_bytes(f"{out}/test/scores.parquet") == scores
    assert json.loads(storage.read_bytes(f"{out}/best.json")) == best
    assert yaml.safe_load(storage.read_bytes(f"{out}/best.yaml"))["model"]["num_slots"] == 20
    assert "COMPLETED" in storage.read_bytes(f"{out}/trials.csv").decode()
    assert sorted(os.listdir(tmp_path)) == ["base.yaml", "data", "one.yaml", "sweeps"]
    # Another sweep is refused that prefix before it starts, as a local --out is.
    assert main(["tune", "--name", "other", *flags]) == 2
    assert last_err_line(capsys) == (
        f"memae-dist: error: --out {out}: holds the results of sweep {best['sweep']}; pick "
        "another --out (or remove that folder) so the two sweeps' results do not mix")
    assert not (tmp_path / "sweeps" / "other").exists()


def test_a_dataset_no_trial_could_train_on_is_refused_before_the_first(tiny_data, tmp_path,
                                                                        capsys):
    # Before: every trial failed alike inside Tune, each with exit 1, and the sweep went on.
    space, base = tmp_path / "batch.yaml", tmp_path / "base.yaml"
    space.write_text(yaml.safe_dump({"name": "batch", "samples": 1,
                                     "params": {"train.batch_size": {"choice": [8, 128]}}}))
    base.write_text(yaml.safe_dump(BASE))
    data = copy_data(tiny_data, tmp_path)
    manifest = (tmp_path / "data" / "manifest.json").read_bytes()
    assert main(["tune", "--space", str(space), "--config", str(base), "--data", data,
                 "--val-from-test", "1", "--storage", str(tmp_path / "sweeps"), "--out",
                 str(tmp_path / "out")]) == 2
    assert last_err_line(capsys) == (
        f"memae-dist: error: {space}: at train.batch_size=128: split train of {data} has "
        "75 clips (16-frame windows at stride 1), fewer than one batch (train.batch_size=128): "
        "lower train.batch_size or add training data")
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "out").exists()
    # Nor was the validation split carved: the corrected command chooses it afresh.
    assert (tmp_path / "data" / "manifest.json").read_bytes() == manifest
