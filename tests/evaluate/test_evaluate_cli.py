"""``memae-dist evaluate``: the AUC it prints equals one computed independently from the Parquet."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memae_dist.cli import main
from memae_dist.data import storage
from memae_dist.evaluate.protocol import METRICS, PROTOCOLS
from tests.evaluate.conftest import write_scores_file


def pairwise_auc(labels, scores) -> float:
    """Fraction of (abnormal, normal) pairs ranked correctly, ties 1/2 (no sklearn)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def independent_metrics(parquet_path):
    """Paper AUC (per-video min-max, pooled) and raw pooled AUC straight from the file."""
    t = pq.read_table(parquet_path).to_pydict()
    videos = np.array(t["video"])
    raw, labels = np.array(t["score"]), np.array(t["label"])
    norm = np.empty_like(raw)
    per_video = {}
    for name in dict.fromkeys(t["video"]):
        sel = videos == name
        s = raw[sel]
        norm[sel] = (s - s.min()) / (s.max() - s.min())
        if 0 < labels[sel].sum() < sel.sum():
            per_video[name] = pairwise_auc(labels[sel], s)
    return pairwise_auc(labels, norm), pairwise_auc(labels, raw), per_video


def test_evaluate_auc_equals_independent_computation(segmented_data, tiny_checkpoint, tmp_path,
                                                     capsys):
    out = tmp_path / "eval"
    run = str(Path(tiny_checkpoint).parent)  # a run: its newest checkpoint is used, and named
    code = main(["evaluate", "--checkpoint", run, "--data", segmented_data,
                 "--out", str(out), "--workers", "0", "--batch-size", "8", "--protocol", "micro",
                 "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    paper, micro, per_video = independent_metrics(out / "scores.parquet")
    assert 0 < paper < 1 and paper != micro
    assert abs(metrics["auc_paper"] - paper) < 1e-12
    assert abs(metrics["auc_micro"] - micro) < 1e-12
    assert abs(metrics["auc_per_video_mean"] - np.mean(list(per_video.values()))) < 1e-12
    for v in metrics["per_video"]:
        expected = per_video.get(v["name"])
        assert (v["auc"] is None) == (expected is None)
        assert expected is None or abs(v["auc"] - expected) < 1e-12
        assert v["eer"] is None or 0 <= v["eer"] <= 1
    # --protocol picks the headline and documents itself; every number is explained.
    assert metrics["protocol"] == "micro"
    assert metrics["headline"] == {"protocol": "micro", "auc": metrics["auc_micro"],
                                   "ap": metrics["average_precision_micro"],
                                   "eer": metrics["eer_micro"]}
    assert set(metrics["definitions"]) == set(METRICS)
    for keys in PROTOCOLS.values():
        assert all(k in metrics for k in keys)
    printed = capsys.readouterr().out
    assert "protocol micro: raw errors pooled" in printed
    assert f"checkpoint: {tiny_checkpoint}\n" in printed
    assert f"AUC {metrics['auc_micro']:.4f}" in printed
    assert "auc_paper" in printed and "per video:" in printed
    # Thresholds on the raw errors a live system would use, read off this split.
    thresholds = metrics["thresholds"]
    assert [p["target_fpr"] for p in thresholds["at_fpr"]] == [0.001, 0.01, 0.05]
    assert 0 < thresholds["best_f1"]["f1"] <= 1
    assert "thresholds on the raw error ('score' column of 'memae-dist score')" in printed
    assert f"best F1 {thresholds['best_f1']['f1']:.4f}" in printed
    # In full, as events --threshold needs it: a rounded-up copy would miss that very frame.
    assert f"threshold {thresholds['best_f1']['threshold']!r}  (precision" in printed
    for name in ("frames.csv", "scores.png", "roc.png"):
        assert (out / name).stat().st_size > 0

    # The same numbers from the scores file alone, without the model.
    again = tmp_path / "again"
    assert main(["evaluate", "--scores", str(out / "scores.parquet"), "--out", str(again)]) == 0
    metrics2 = json.loads((again / "metrics.json").read_text())
    assert metrics2["headline"]["protocol"] == "paper"
    assert metrics2["headline"]["auc"] == metrics["auc_paper"]
    for key in [*METRICS, "thresholds"]:
        assert metrics2[key] == metrics[key], key


def test_evaluate_refuses_bad_input(tmp_path, tiny_checkpoint, tiny_data, capsys):
    assert main(["evaluate", "--checkpoint", tiny_checkpoint, "--out", str(tmp_path)]) == 2
    assert "--checkpoint needs --data" in capsys.readouterr().err
    assert main(["evaluate", "--scores", str(tmp_path / "none.parquet"), "--out",
                 str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    # A split without labels is refused before any scoring, so nothing is written.
    out = tmp_path / "unlabelled"
    assert main(["evaluate", "--checkpoint", tiny_checkpoint, "--data", tiny_data, "--split",
                 "train", "--workers", "0", "--no-progress", "--out", str(out)]) == 2
    assert "no labelled video in split 'train'" in capsys.readouterr().err
    assert not out.exists()
    # A file, or a prefix in a bucket that does not exist, is refused up front.
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad, why in ((str(afile), "exists and is not a folder"),
                     ("s3://bucket/eval", "S3 bucket 'bucket' does not exist")):
        assert main(["evaluate", "--scores", "any.parquet", "--out", bad]) == 2
        assert why in capsys.readouterr().err
    assert not Path("s3:").exists()  # the URI was not taken for a relative path
    # No name (the working folder), a file's name: refused, not taken for a folder.
    assert main(["evaluate", "--scores", "any.parquet", "--out",
                 str(tmp_path / "ev" / "metrics.json")]) == 2
    assert "names a file; give a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["evaluate", "--scores", "any.parquet", "--out", ""])
    assert "argument --out: must not be empty" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()
    # A scores file is scored already: flags that steer scoring are refused, not ignored.
    assert main(["evaluate", "--scores", "any.parquet", "--out", str(tmp_path / "ev"),
                 "--error", "mae", "--data", tiny_data, "--batch-size", "8"]) == 2
    assert "--data, --error, --batch-size: only with --checkpoint" in capsys.readouterr().err


def test_evaluate_into_an_unwritable_folder_says_which_file(tmp_path, capsys, monkeypatch):
    scores = write_scores_file(tmp_path / "scores.parquet")
    out = tmp_path / "eval"
    (out / "metrics.json").mkdir(parents=True)  # root-proof: no file can replace a folder
    assert main(["evaluate", "--scores", scores, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"memae-dist: error: cannot write {out / 'metrics.json'}"
                                       ": is a directory\n")
    assert not list(out.glob(".*.tmp-*"))
    # A folder no file can go into is refused before any scoring (a checkpoint's would take
    # hours), and nothing is left of the attempt.
    for argv in (["evaluate", "--scores", scores],
                 ["evaluate", "--checkpoint", "nowhere", "--data", "none"],
                 ["report", "--scores", scores]):
        assert main([*argv, "--out", "/proc/memae-dist/eval"]) == 2
        assert capsys.readouterr().err == ("memae-dist: error: --out /proc/memae-dist/eval: "
                                           "cannot write there: no such file or directory\n")
    assert main(["score", "--checkpoint", "nowhere", "--data", "none", "--out",
                 "/proc/memae-dist/s.parquet"]) == 2
    assert capsys.readouterr().err == ("memae-dist: error: --out /proc/memae-dist/s.parquet: "
                                       "cannot write there: no such file or directory\n")
    missing = tmp_path / "a" / "b"
    assert main(["evaluate", "--scores", str(tmp_path / "none.parquet"), "--out",
                 str(missing)]) == 2
    assert "none.parquet" in capsys.readouterr().err and not (tmp_path / "a").exists()
    # The same file into a writable folder: the failures above were the folder's alone.
    assert main(["evaluate", "--scores", scores, "--out", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["scores"] == scores
    # Given relative, recorded absolute: metrics.json is read from other folders than this.
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--scores", os.path.relpath(scores), "--out", "rel"]) == 0
    assert json.loads((tmp_path / "rel" / "metrics.json").read_text())["scores"] == scores


def test_a_split_of_normal_frames_only_gives_false_positive_thresholds(tmp_path, capsys):
    # Held-out normal footage: no AUC, but the budgets a deployment calibrates on.
    scores = write_scores_file(tmp_path / "scores.parquet", abnormal_from=12, split="val")
    assert main(["evaluate", "--scores", scores, "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "AUC -   AP -   EER -" in out
    assert ("(no scored frame of split 'val' is abnormal: AUC, AP and EER need anomalies; the "
            "false-positive thresholds below need normal frames only)") in out
    assert "false positives <= 5.0%: threshold" in out and "recall -)" in out
    # 24 normal frames cannot measure a budget of 0.1%: the line says so, not "no threshold".
    assert ("  false positives <= 0.1%: none (this split has 24 normal frames: a budget under one "
            "of them needs at least 1000)") in out.splitlines()
    assert "best F1: - (no abnormal frame in this split" in out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["auc_paper"] is None and metrics["thresholds"]["best_f1"] is None
    raw = pq.read_table(scores).column("score").to_numpy()
    reached = [p for p in metrics["thresholds"]["at_fpr"] if p["threshold"] is not None]
    assert reached  # the 5% budget, at least, is within 24 normal frames' reach
    for point in reached:
        assert (raw >= point["threshold"]).mean() <= point["target_fpr"]


def test_videos_too_short_to_score_are_named_in_the_metrics(tmp_path, capsys):
    # Before: only a warning at scoring time said a labelled test video was left out of every
    # number; metrics.json and the printed table showed no trace of it.
    videos = [{"name": n, "num_frames": 27, "abnormal": [[14, 26]]} for n in ("01", "02")]
    videos.append({"name": "03", "num_frames": 9, "abnormal": [[0, 8]]})
    scores = write_scores_file(tmp_path / "scores.parquet", window=16, videos=videos)
    assert main(["evaluate", "--scores", scores, "--out", str(tmp_path / "ev")]) == 0
    assert ("  not scored, shorter than the model's window (in no number above): 03"
            in capsys.readouterr().out.splitlines())
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["unscored_videos"] == ["03"]
    assert [v["name"] for v in metrics["per_video"]] == ["01", "02"]


def test_a_home_folder_out_is_the_same_folder_as_for_every_other_flag(tmp_path, monkeypatch):
    """The shell leaves "--out=~/ev" as it is; the scores went to $HOME/ev and the rest to a
    folder named "~" under the working one, with metrics.json pointing at a missing file."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    scores = write_scores_file(tmp_path / "scores.parquet")
    assert main(["evaluate", "--scores", scores, "--out=~/ev"]) == 0
    assert (tmp_path / "home" / "ev" / "metrics.json").is_file()
    assert list((tmp_path / "work").iterdir()) == []


def test_a_reused_folder_keeps_no_scores_of_another_evaluation(tmp_path):
    out = tmp_path / "ev"
    first = write_scores_file(tmp_path / "a.parquet")
    assert main(["evaluate", "--scores", first, "--out", str(out)]) == 0
    (out / "scores.parquet").write_bytes(Path(first).read_bytes())  # as --checkpoint leaves it
    other = write_scores_file(tmp_path / "b.parquet", abnormal_from=3)
    assert main(["evaluate", "--scores", other, "--out", str(out)]) == 0
    assert not (out / "scores.parquet").exists()  # not these metrics' scores
    # Its own scores file, evaluated again in place, stays.
    (out / "scores.parquet").write_bytes(Path(other).read_bytes())
    assert main(["evaluate", "--scores", str(out / "scores.parquet"), "--out", str(out)]) == 0
    assert (out / "scores.parquet").exists()


def test_evaluate_and_report_write_into_an_s3_prefix(s3_bucket, tmp_path, capsys):
    # As a Ray job, a local --out would land in the job's throw-away working directory.
    scores = write_scores_file(tmp_path / "scores.parquet")
    out = f"{s3_bucket}/eval"
    storage.write_bytes_atomic(f"{out}/scores.parquet", b"an earlier evaluation's")
    storage.write_bytes_atomic(f"{out}/notes.txt", b"not an evaluation's file")
    assert main(["evaluate", "--scores", scores, "--out", out]) == 0
    assert f"metrics: {out}/metrics.json" in capsys.readouterr().out
    metrics = json.loads(storage.read_bytes(f"{out}/metrics.json"))
    assert metrics["scores"] == scores and metrics["auc_micro"] is not None
    # The stale scores file (not what these metrics came from) is gone; the user's file stays.
    assert storage.listdir(out) == ["frames.csv", "metrics.json", "notes.txt", "roc.png",
                                    "scores.png"]
    # Evaluating a scores file kept in the prefix itself leaves that file in place.
    kept = f"{out}/scores.parquet"
    storage.write_bytes_atomic(kept, Path(scores).read_bytes())
    assert main(["evaluate", "--scores", kept, "--out", out]) == 0
    assert json.loads(storage.read_bytes(f"{out}/metrics.json"))["scores"] == kept
    assert storage.read_bytes(kept) == Path(scores).read_bytes()
    # A report: its figures under the prefix, an earlier report's extra figure removed.
    rep = f"{s3_bucket}/report"
    storage.write_bytes_atomic(f"{rep}/videos/gone.png", b"an earlier report's")
    capsys.readouterr()
    assert main(["report", "--scores", scores, "--out", rep]) == 0
    assert f"report: {rep}/index.html" in capsys.readouterr().out
    assert storage.listdir(f"{rep}/videos") == ["01.png", "02.png"]
    assert "videos/01.png" in storage.read_bytes(f"{rep}/index.html").decode()
    # A failed evaluation (no labelled video) uploads nothing: the previous result stays whole.
    table = pq.read_table(scores)
    unlabelled = tmp_path / "unlabelled.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label",
                                    pa.nulls(table.num_rows, pa.int8())), unlabelled)
    before = storage.read_bytes(f"{out}/metrics.json")
    assert main(["evaluate", "--scores", str(unlabelled), "--out", out]) == 2
    assert "no labelled video" in capsys.readouterr().err
    assert storage.read_bytes(f"{out}/metrics.json") == before
    assert storage.listdir(out) == ["frames.csv", "metrics.json", "notes.txt", "roc.png",
                                    "scores.parquet", "scores.png"]


def test_a_still_image_set_is_printed_by_groups_of_images(tmp_path, capsys):
    scores = write_scores_file(tmp_path / "scores.parquet", content="images")
    assert main(["evaluate", "--scores", scores, "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("protocol micro:")  # pooled: no per-group normalisation
    assert "per group:\n  group         images abnormal" in printed and "per video" not in printed
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["content"] == "images"


def test_ctrl_c_during_the_upload_takes_effect_once_the_prefix_is_whole(s3_bucket, tmp_path,
                                                                        monkeypatch):
    # A stop between the index's removal and its upload would leave a prefix with no index and
    # two results' figures: the upload finishes first, then the interruption is raised.
    import os
    import signal

    from memae_dist.commands import outdir

    real, uploaded = storage.write_bytes_atomic, []

    def upload_after_ctrl_c(uri, data, cfg=None):
        if not uploaded:
            os.kill(os.getpid(), signal.SIGINT)
        uploaded.append(uri.rsplit("/", 1)[1])
        real(uri, data, cfg)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(storage, "write_bytes_atomic", upload_after_ctrl_c)
    out = f"{s3_bucket}/published"
    try:
        with pytest.raises(KeyboardInterrupt):
            with outdir.output_folder(out, None, commit="index.html", owned=("*.txt",
                                                                              "index.html")) as d:
                for name in ("a.txt", "b.txt", "index.html"):
                    (d / name).write_text(name)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert uploaded == ["a.txt", "b.txt", "index.html"]
    assert storage.listdir(out) == ["a.txt", "b.txt", "index.html"]


def test_a_stopped_command_publishes_only_when_its_partial_folder_is_a_record(s3_bucket):
    from memae_dist.commands import outdir

    out, owned = f"{s3_bucket}/stopped", ("*.txt", "best.json")
    # evaluate and report: a stopped run publishes nothing.
    with pytest.raises(KeyboardInterrupt):
        with outdir.output_folder(out, None, commit="best.json", owned=owned) as d:
            (d / "part.txt").write_text("half")
            raise KeyboardInterrupt
    assert not storage.file_sizes(out, missing_ok=True)
    # A sweep: its table is the record of what ran, published on Ctrl-C or SIGTERM too; a
    # rerun starts from what was published.
    with pytest.raises(KeyboardInterrupt):
        with outdir.output_folder(out, None, commit="best.json", owned=owned,
                                  publish_interrupted=True) as d:
            (d / "table.txt").write_text("1 trial")
            raise KeyboardInterrupt
    assert storage.listdir(out) == ["table.txt"]
    with outdir.output_folder(out, None, commit="best.json", owned=owned, resume=True) as d:
        assert (d / "table.txt").read_text() == "1 trial"
        (d / "table.txt").write_text("3 trials")
        (d / "best.json").write_text("{}")
    assert storage.listdir(out) == ["best.json", "table.txt"]
    # An error is not a stop: nothing is published.
    with pytest.raises(RuntimeError):
        with outdir.output_folder(out, None, commit="best.json", owned=owned, resume=True,
                                  publish_interrupted=True) as d:
            (d / "table.txt").write_text("broken")
            raise RuntimeError
    assert storage.read_bytes(f"{out}/table.txt") == b"3 trials"


def test_a_stopped_or_failed_command_leaves_no_local_folder_it_made(tmp_path):
    from memae_dist.commands import outdir

    out, owned = tmp_path / "new" / "eval", ("*.txt", "metrics.json")
    for stop in (KeyboardInterrupt, RuntimeError):
        with pytest.raises(stop):
            with outdir.output_folder(str(out), None, commit="metrics.json", owned=owned) as d:
                d.mkdir(parents=True)
                (d / "part.txt").write_text("half")
                raise stop
        assert not (tmp_path / "new").exists()  # nor the parent it made on the way
    # A folder that was there keeps what it had; the run's commit file is what is missing.
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("kept")
    with pytest.raises(KeyboardInterrupt):
        with outdir.output_folder(str(out), None, commit="metrics.json", owned=owned) as d:
            (d / "part.txt").write_text("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt", "part.txt"]
    # A sweep's table is its record: kept on a stop.
    sweep = tmp_path / "sweep"
    with pytest.raises(KeyboardInterrupt):
        with outdir.output_folder(str(sweep), None, commit="metrics.json", owned=owned,
                                  publish_interrupted=True) as d:
            d.mkdir()
            (d / "table.txt").write_text("1 trial")
            raise KeyboardInterrupt
    assert (sweep / "table.txt").read_text() == "1 trial"


def test_a_refused_or_cut_off_evaluation_never_mixes_two_results(tmp_path, capsys, monkeypatch):
    from memae_dist.evaluate import run as evaluate_run
    from memae_dist.evaluate.batch_score import read_scores, write_scores

    out = tmp_path / "eval"
    assert main(["evaluate", "--scores", write_scores_file(tmp_path / "a.parquet"),
                 "--out", str(out)]) == 0
    (out / "scores.parquet").write_bytes((tmp_path / "a.parquet").read_bytes())  # as scored
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # Refused (no labelled video): the folder is left exactly as it was.
    table, meta = read_scores(str(tmp_path / "a.parquet"))
    unlabelled = table.set_column(table.schema.get_field_index("label"), "label",
                                  pa.nulls(len(table), pa.int8()))
    write_scores(str(tmp_path / "u.parquet"), unlabelled, meta)
    assert main(["evaluate", "--scores", str(tmp_path / "u.parquet"), "--out", str(out)]) == 2
    assert "no labelled video" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # Cut off while drawing (Ctrl-C): the previous metrics.json is gone, none half-new.
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_run, "plot_roc", stopped)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run.evaluate_scores(write_scores_file(tmp_path / "b.parquet", abnormal_from=3),
                                     out)
    assert not (out / "metrics.json").exists()
