"""``memae-dist events``: runs of flagged frames, joined, filtered and checked against labels."""

import csv
import io

import numpy as np
import pyarrow as pa
import pytest

from memae_dist.cli import main
from memae_dist.evaluate.batch_score import (
    SCHEMA,
    SCORES_FORMAT,
    SCORES_VERSION,
    read_scores,
    write_scores,
)
from memae_dist.evaluate.events import find_events
from memae_dist.evaluate.protocol import VideoScores, regularity

#         frame: 8    9    10   11   12   13   14   15   16   17   18   19
SCORES = np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.1, 0.1, 0.1, 0.6, 0.1, 0.95, 0.1])
LABELS = np.array([0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1])


def _video(name="01", labels=LABELS):
    return VideoScores(name, np.arange(8, 20), SCORES, labels)


def test_runs_are_joined_across_short_gaps_and_short_ones_dropped():
    plain = find_events(_video(), 0.5)
    assert [(e.first_frame, e.last_frame) for e in plain] == [(9, 10), (12, 12), (16, 16),
                                                              (18, 18)]
    assert [(e.peak_frame, e.peak_score) for e in plain][0] == (9, 0.9)
    joined = find_events(_video(), 0.5, max_gap=1)  # frames 11 and 17 bridge the gaps
    assert [(e.first_frame, e.last_frame, e.frames) for e in joined] == [(9, 12, 4),
                                                                         (16, 18, 3)]
    assert [e.abnormal_frames for e in joined] == [None] * 2  # no labels asked for
    long = find_events(_video(), 0.5, min_frames=2, labelled=True)
    assert [(e.first_frame, e.last_frame, e.abnormal_frames) for e in long] == [(9, 10, 2)]
    assert find_events(_video(), 1.0) == []


def _scores_file(path):
    """Video 01 labelled as above, video 02 unlabelled (null labels), same scores."""
    parts = []
    for name, labels in (("01", LABELS), ("02", [None] * 12)):
        parts.append(pa.table({"video": [name] * 12, "frame": np.arange(8, 20, dtype=np.int32),
                               "score": SCORES, "regularity": regularity(SCORES),
                               "label": pa.array(labels, pa.int8())}, schema=SCHEMA))
    write_scores(str(path), pa.concat_tables(parts),
                 {"format": SCORES_FORMAT, "format_version": SCORES_VERSION, "checkpoint": None,
                  "data": None, "split": "test", "error": "mse"})
    return str(path)


def test_cli_prints_and_writes_events_with_label_checks(tmp_path, capsys):
    scores = _scores_file(tmp_path / "scores.parquet")
    out = tmp_path / "alarms" / "events.csv"
    assert main(["events", "--scores", scores, "--threshold", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 event(s) at score >= 0.5 (mse window error) in 2 of 2 video(s)" in printed
    # Labelled video 01: anomalies 9-12 and 18-19, both hit; event 16 has no abnormal frame.
    assert "labelled anomalies detected: 2 of 2; false alarms (no abnormal frame): 1" in printed
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    spans = [("9", "10"), ("12", "12"), ("16", "16"), ("18", "18")]
    assert [(r["video"], r["first_frame"], r["last_frame"], r["abnormal_frames"])
            for r in rows] == [("01", *s, n) for s, n in zip(spans, "2101")] + [
                ("02", *s, "") for s in spans]
    assert float(rows[0]["peak_score"]) == 0.9
    # A threshold above every score: no event, still a valid (header-only) file.
    assert main(["events", "--scores", scores, "--threshold", "2", "--out", str(out)]) == 0
    assert "0 event(s)" in capsys.readouterr().out
    assert out.read_text().startswith("video,first_frame,last_frame")
    assert len(out.read_text().splitlines()) == 1


def test_cli_refuses_bad_input_before_writing(tmp_path, capsys):
    scores = _scores_file(tmp_path / "scores.parquet")
    (tmp_path / "folder").mkdir()
    for extra, why in ((["--threshold", "nan"], "must be a finite number >= 0, got nan"),
                       (["--threshold", "0.5", "--min-frames", "0"], "must be >= 1, got 0")):
        with pytest.raises(SystemExit) as usage:  # the parser's one line, exit 2
            main(["events", "--scores", scores, *extra])
        assert usage.value.code == 2 and why in capsys.readouterr().err
    assert main(["events", "--scores", scores, "--threshold", "0.5", "--out",
                 str(tmp_path / "folder")]) == 2
    assert "is a folder; give the file's name" in capsys.readouterr().err
    assert main(["events", "--scores", str(tmp_path / "none.parquet"), "--threshold", "1"]) == 2
    assert "none.parquet" in capsys.readouterr().err
    assert main(["events", "--scores", scores, "--threshold", "0.5", "--out",
                 str(tmp_path / "events.parquet")]) == 2  # a CSV under another format's name
    assert "events are written as CSV; name the file *.csv" in capsys.readouterr().err
    assert not (tmp_path / "events.parquet").exists()
    # The input itself (however spelled), no name, a folder-to-be: each refused, not written.
    for out, why in ((scores, "is the input file"),
                     (str(tmp_path / "folder" / ".." / "scores.parquet"), "is the input file"),
                     (str(tmp_path / "new") + "/", "names a folder; give the file's name")):
        assert main(["events", "--scores", scores, "--threshold", "0.5", "--out", out]) == 2
        assert why in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["events", "--scores", scores, "--threshold", "0.5", "--out", ""])
    assert "argument --out: must not be empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "scores.parquet"]
    assert read_scores(scores)[0].num_rows == 24


def test_a_scores_file_without_rows_is_refused(tmp_path, capsys):
    table = read_scores(_scores_file(tmp_path / "scores.parquet"))[0]
    empty = _rewritten(tmp_path / "empty.parquet", table.slice(0, 0))
    for verb in (["events", "--threshold", "0.5"], ["evaluate", "--out", str(tmp_path / "ev")]):
        assert main([verb[0], "--scores", empty, *verb[1:]]) == 2
        assert f"{empty} holds no scores (0 rows)" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def test_a_gap_is_measured_in_frames_not_rows():
    # Frames 11-49 are not in the scores (cut out by another tool): 10 and 50 are not neighbours.
    video = VideoScores("01", np.array([8, 9, 10, 50, 51]), np.array([0.1, 0.1, 0.9, 0.9, 0.1]),
                        np.zeros(5))
    assert [(e.first_frame, e.last_frame) for e in find_events(video, 0.5)] == [(10, 10),
                                                                              (50, 50)]
    assert len(find_events(video, 0.5, max_gap=39)) == 1


def _rewritten(path, table, **meta):
    write_scores(str(path), table, {"format": SCORES_FORMAT, "format_version": SCORES_VERSION,
                                    "checkpoint": None, "data": None, "split": "test",
                                    "error": "mse", **meta})
    return str(path)


def test_rows_in_another_order_give_the_same_events(tmp_path, capsys):
    scores = _scores_file(tmp_path / "scores.parquet")
    assert main(["events", "--scores", scores, "--threshold", "0.5"]) == 0
    in_order = capsys.readouterr().out
    table = read_scores(scores)[0]
    order = np.random.default_rng(0).permutation(table.num_rows)
    order[[0, int(np.argmax(order < 12))]] = order[[int(np.argmax(order < 12)), 0]]
    # Rows mixed across videos and frames; video 01 still seen first, so listed first.
    shuffled = _rewritten(tmp_path / "shuffled.parquet", table.take(order))
    assert main(["events", "--scores", shuffled, "--threshold", "0.5"]) == 0
    assert capsys.readouterr().out == in_order
    assert read_scores(shuffled)[0].equals(table)


def test_frames_twice_a_broken_score_and_still_images_are_refused(tmp_path, capsys):
    table = read_scores(_scores_file(tmp_path / "scores.parquet"))[0]
    twice = _rewritten(tmp_path / "twice.parquet", pa.concat_tables([table, table.slice(3, 1)]))
    broken = table.set_column(2, "score", pa.array(np.r_[SCORES, [np.nan] + [0.1] * 11]))
    nan = _rewritten(tmp_path / "nan.parquet", broken)
    images = _rewritten(tmp_path / "images.parquet", table, content="images")
    for path, why in ((twice, "video '01' has frame 11 twice"),
                      (nan, "video '02' has a non-finite score (nan) at frame 8"),
                      (images, "holds scores of still images")):
        assert main(["events", "--scores", path, "--threshold", "0.5"]) == 2
        err = capsys.readouterr().err
        assert why in err and path in err and len(err.strip().splitlines()) == 1
