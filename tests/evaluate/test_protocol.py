"""Frame-level MemAE evaluation protocol on hand-made scores with hand-computed answers."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memae_dist.evaluate.protocol import (
    FRAME_COLUMNS,
    METRICS,
    PROTOCOLS,
    VideoScores,
    abnormality,
    equal_error_rate,
    evaluate_videos,
    frame_scores_from_windows,
    frame_table,
    headline,
    labels_from_ranges,
    regularity,
    video_scores_from_windows,
    window_error,
    window_frame_index,
)


def _video(name, scores, labels, first_frame=8):
    scores = np.asarray(scores, dtype=float)
    return VideoScores(name, np.arange(first_frame, first_frame + scores.size), scores, labels)


def _pairwise_auc(labels, scores):
    """Independent AUC: fraction of (abnormal, normal) pairs ordered correctly, ties count 1/2."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    good = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return good / (len(pos) * len(neg))


# --- window -> frame alignment -------------------------------------------------------------

def test_window_frame_index_is_ninth_frame():
    assert window_frame_index(0) == 8
    assert window_frame_index(14) == 22
    np.testing.assert_array_equal(window_frame_index(np.array([0, 5])), [8, 13])
    with pytest.raises(ValueError, match="target_offset"):
        window_frame_index(0, window_length=16, target_offset=16)


def test_30_frame_video_scores_frames_8_to_22():
    # 30 frames, stride-1 windows of 16: starts 0..14 (15 windows) -> frames 8..22;
    # frames 0..7 (8 frames) and 23..29 (7 frames) get no score.
    starts = np.arange(15)
    frames, scores = frame_scores_from_windows(30, starts, starts * 0.1)
    np.testing.assert_array_equal(frames, np.arange(8, 23))
    np.testing.assert_allclose(scores, starts * 0.1)
    assert frames.dtype == np.int64 and scores.dtype == np.float64


def test_anomaly_only_in_dropped_frames_does_not_count():
    # Abnormal frames 0..7 and 23..29 are exactly the unscored ones: nothing abnormal remains,
    # so every AUC is undefined (None) and n_abnormal is 0.
    v = video_scores_from_windows("a", 30, np.arange(15), np.linspace(0, 1, 15),
                                  [[0, 7], [23, 29]])
    assert v.labels.sum() == 0 and v.frames.tolist() == list(range(8, 23))
    m = evaluate_videos([v])
    assert m["n_abnormal"] == 0 and m["n_frames_scored"] == 15
    assert m["auc_paper"] is None and m["auc_micro"] is None and m["eer"] is None
    assert m["average_precision"] is None and m["auc_per_video_mean"] is None
    # Moving the range one frame inside (22..29) makes exactly frame 22 count.
    v = video_scores_from_windows("a", 30, np.arange(15), np.linspace(0, 1, 15), [[22, 29]])
    assert v.labels.tolist() == [0] * 14 + [1]
    assert evaluate_videos([v])["auc_paper"] == 1.0


def test_window_starts_sorted_and_validated():
    frames, scores = frame_scores_from_windows(20, [2, 0, 1], [0.2, 0.0, 0.1])
    assert frames.tolist() == [8, 9, 10] and scores.tolist() == [0.0, 0.1, 0.2]
    for bad in ([-1], [5]):  # 20 frames: valid starts are 0..4
        with pytest.raises(ValueError, match="out of range"):
            frame_scores_from_windows(20, bad, [0.0])
    with pytest.raises(ValueError, match="more than once"):
        frame_scores_from_windows(20, [1, 1], [0.0, 0.0])
    with pytest.raises(ValueError, match="window scores"):
        frame_scores_from_windows(20, [0, 1], [0.0])


def test_labels_from_ranges():
    assert labels_from_ranges(5, None).tolist() == [0] * 5
    assert labels_from_ranges(5, []).tolist() == [0] * 5
    lab = labels_from_ranges(8, [[1, 2], [5, 5]])
    assert lab.dtype == np.uint8 and lab.tolist() == [0, 1, 1, 0, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="outside"):
        labels_from_ranges(8, [[6, 8]])


# --- normalisation ---------------------------------------------------------------------------

def test_regularity_min_max():
    # e = [2, 4, 6]: s = (e - 2) / 4 = [0, .5, 1]; regularity = 1 - s.
    np.testing.assert_allclose(abnormality([2, 4, 6]), [0, 0.5, 1])
    np.testing.assert_allclose(regularity([2, 4, 6]), [1, 0.5, 0])
    # max == min: no ranking information -> abnormality 0, regularity 1 (documented guard).
    np.testing.assert_array_equal(abnormality([3.0, 3.0]), [0, 0])
    np.testing.assert_array_equal(regularity([3.0, 3.0]), [1, 1])


# --- AUC on hand examples ------------------------------------------------------------------

def test_perfect_and_reversed_separation():
    assert evaluate_videos([_video("v", [1, 2, 3, 4], [0, 0, 1, 1])])["auc_paper"] == 1.0
    assert evaluate_videos([_video("v", [4, 3, 2, 1], [0, 0, 1, 1])])["auc_paper"] == 0.0


def test_known_fraction_of_ordered_pairs():
    # normals {0.1, 0.4}, abnormals {0.35, 0.8}: pairs (0.35>0.1 yes, 0.35>0.4 no,
    # 0.8>0.1 yes, 0.8>0.4 yes) -> 3/4. Min-max is monotone, so paper == micro here.
    m = evaluate_videos([_video("v", [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])])
    assert m["auc_paper"] == pytest.approx(0.75) and m["auc_micro"] == pytest.approx(0.75)
    # A tie counts 1/2: normals {0.2, 0.5}, abnormals {0.5, 0.9} -> (1 + .5 + 1 + 1) / 4.
    m = evaluate_videos([_video("v", [0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1])])
    assert m["auc_paper"] == pytest.approx(0.875)


def test_pooled_normalised_differs_from_raw():
    # A: [1, 2, 3, 4], B: [10, 20, 30, 40], labels [0, 0, 1, 1] in both.
    # Raw pooled: abnormals {3, 4, 30, 40} vs normals {1, 2, 10, 20}: 3 and 4 beat only 1, 2
    # (2 + 2 pairs), 30 and 40 beat all four (4 + 4) -> 12/16 = 0.75.
    # Normalised per video both become [0, 1/3, 2/3, 1]: abnormals {2/3, 1} beat every normal
    # {0, 1/3} -> 16/16 = 1.0.
    m = evaluate_videos([_video("A", [1, 2, 3, 4], [0, 0, 1, 1]),
                         _video("B", [10, 20, 30, 40], [0, 0, 1, 1])])
    assert m["auc_micro"] == pytest.approx(0.75)
    assert m["auc_paper"] == pytest.approx(1.0)
    assert m["n_videos"] == 2 and m["n_frames_scored"] == 8 and m["n_abnormal"] == 4


def test_per_video_mean_skips_single_class_videos():
    # A: AUC 1.0; B: 3/4 (as above); C all normal and D all abnormal: undefined, skipped.
    # Mean = (1.0 + 0.75) / 2 = 0.875.
    m = evaluate_videos([_video("A", [1, 2, 3, 4], [0, 0, 1, 1]),
                         _video("B", [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]),
                         _video("C", [5, 1, 3], [0, 0, 0]),
                         _video("D", [5, 1, 3], [1, 1, 1])])
    assert m["auc_per_video_mean"] == pytest.approx(0.875)
    per = {p["name"]: p for p in m["per_video"]}
    assert per["C"]["auc"] is None and per["C"]["ap"] is None and per["C"]["n_abnormal"] == 0
    # D's AP would be 1.0 whatever its scores: undefined too, and kept out of the AP mean.
    assert per["D"]["auc"] is None and per["D"]["ap"] is None and per["D"]["n_frames"] == 3
    assert m["ap_per_video_mean"] == pytest.approx((1.0 + per["B"]["ap"]) / 2)
    assert per["B"]["auc"] == pytest.approx(0.75)


def test_average_precision_hand_example():
    # Ranking by score (desc): 0.8 abn, 0.4 norm, 0.35 abn, 0.1 norm.
    # Precision at each hit: 1/1, 2/3 -> AP = (1 + 2/3) / 2 = 5/6.
    m = evaluate_videos([_video("v", [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])])
    assert m["average_precision"] == pytest.approx(5 / 6)


def test_eer_hand_examples():
    # normals {.1, .2, .3, .6}, abnormals {.4, .7, .8, .9}. Threshold .6 (score >= .6 flagged):
    # FP = {.6} -> FPR 1/4; missed = {.4} -> FNR 1/4. Equal -> EER 0.25.
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    assert equal_error_rate(labels, [.1, .2, .3, .6, .4, .7, .8, .9]) == pytest.approx(0.25)
    # normals {.1, .2, .3}, abnormals {.25, .4}. At threshold .3: FPR 1/3, FNR 1/2; at .25:
    # FPR 1/3, FNR 0. FNR crosses FPR on that vertical segment -> EER 1/3.
    assert equal_error_rate([0, 0, 0, 1, 1], [.1, .2, .3, .25, .4]) == pytest.approx(1 / 3)
    assert equal_error_rate([0, 0], [.1, .2]) is None
    # Via evaluate_videos (one video: min-max is monotone, so the same ROC).
    m = evaluate_videos([_video("v", [.1, .2, .3, .6, .4, .7, .8, .9], labels)])
    assert m["eer"] == pytest.approx(0.25)


def test_ap_and_eer_per_video_and_pooled_three_ways():
    # A: raw [1, 2, 3, 4] labels [0, 0, 1, 1] -> perfectly ranked: AP 1, EER 0.
    # B: raw [10, 40, 30, 20] labels [0, 0, 1, 1]: ranking 40 n, 30 a, 20 a, 10 n ->
    #    AP = (1/2 + 2/3) / 2 = 7/12; EER 0.5 (at threshold 30: FPR 1/2, FNR 1/2).
    # C: all normal -> no AP, no EER; left out of the per-video means.
    m = evaluate_videos([_video("A", [1, 2, 3, 4], [0, 0, 1, 1]),
                         _video("B", [10, 40, 30, 20], [0, 0, 1, 1]),
                         _video("C", [5, 6, 7], [0, 0, 0])])
    per = {p["name"]: p for p in m["per_video"]}
    assert per["A"]["ap"] == 1.0 and per["A"]["eer"] == 0.0
    assert per["B"]["ap"] == pytest.approx(7 / 12) and per["B"]["eer"] == pytest.approx(0.5)
    assert per["C"]["ap"] is None and per["C"]["eer"] is None
    assert m["ap_per_video_mean"] == pytest.approx((1 + 7 / 12) / 2)
    assert m["eer_per_video_mean"] == pytest.approx(0.25)
    # Pooled raw: B's scores dominate, so the micro numbers differ from the normalised ones.
    lab = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0])
    raw = np.array([1, 2, 3, 4, 10, 40, 30, 20, 5, 6, 7], float)
    from sklearn.metrics import average_precision_score

    assert m["average_precision_micro"] == pytest.approx(average_precision_score(lab, raw))
    assert m["eer_micro"] == pytest.approx(equal_error_rate(lab, raw))
    assert m["average_precision_micro"] != m["average_precision"]
    # --protocol picks one of the three families as the headline.
    assert headline(m, "per-video") == {"protocol": "per-video", "auc": m["auc_per_video_mean"],
                                        "ap": m["ap_per_video_mean"],
                                        "eer": m["eer_per_video_mean"]}
    assert headline(m)["auc"] == m["auc_paper"]
    with pytest.raises(ValueError, match="protocol"):
        headline(m, "best")
    assert set(PROTOCOLS) == {"paper", "micro", "per-video"}
    assert all(k in METRICS for keys in PROTOCOLS.values() for k in keys)


def test_auc_paper_matches_pairwise_definition_on_random_data():
    rng = np.random.default_rng(0)
    videos = []
    for i in range(5):
        n = int(rng.integers(20, 60))
        labels = (rng.random(n) < 0.3).astype(np.uint8)
        # Scores on very different scales, rounded so ties occur.
        scores = np.round(rng.random(n) * 10 ** i + labels * 0.5 * 10 ** i, 1)
        videos.append(_video(f"v{i}", scores, labels))
    m = evaluate_videos(videos)
    lab = np.concatenate([v.labels for v in videos])
    norm = np.concatenate([(v.scores - v.scores.min()) / np.ptp(v.scores) for v in videos])
    raw = np.concatenate([v.scores for v in videos])
    assert m["auc_paper"] == pytest.approx(_pairwise_auc(lab, norm), abs=1e-12)
    assert m["auc_micro"] == pytest.approx(_pairwise_auc(lab, raw), abs=1e-12)
    both = [v for v in videos if 0 < v.labels.sum() < v.labels.size]
    means = [_pairwise_auc(v.labels, v.scores) for v in both]
    assert m["auc_per_video_mean"] == pytest.approx(np.mean(means), abs=1e-12)


def test_video_scores_validates_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        VideoScores("x", [8, 9], [0.1], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        VideoScores("x", [8], [float("nan")], [0])
    with pytest.raises(ValueError, match="at least one"):
        evaluate_videos([])


# --- window error ----------------------------------------------------------------------------

def test_window_error_numpy():
    clip = np.zeros((2, 1, 2, 2, 2))  # (B, C, T, H, W)
    recon = np.zeros_like(clip)
    recon[0] = 2.0
    recon[1, 0, 0, 0, 0] = -4.0  # one of 8 voxels
    np.testing.assert_allclose(window_error(recon, clip), [4.0, 16 / 8])
    np.testing.assert_allclose(window_error(recon, clip, kind="mae"), [2.0, 4 / 8])
    with pytest.raises(ValueError, match="kind"):
        window_error(recon, clip, kind="l2")
    with pytest.raises(ValueError, match="shape"):
        window_error(recon[:, :, :1], clip)


def test_window_error_torch():
    import torch
    clip = torch.zeros(3, 1, 16, 4, 4)
    recon = torch.full_like(clip, 0.5)
    err = window_error(recon, clip)
    assert isinstance(err, torch.Tensor) and err.shape == (3,)
    torch.testing.assert_close(err, torch.full((3,), 0.25))
    torch.testing.assert_close(window_error(recon, clip, "mae"), torch.full((3,), 0.5))


def test_evaluate_modules_import_neither_torch_nor_ray():
    # Checked in a clean interpreter: this test process may already have imported torch.
    code = ("import sys, memae_dist.evaluate.protocol, memae_dist.evaluate.plots, "
            "memae_dist.evaluate.definitions; "
            "sys.exit(int('torch' in sys.modules or 'ray' in sys.modules))")
    repo = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=repo).returncode == 0


# --- writing results -----------------------------------------------------------------------

def _strict_json(path):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_write_metrics_json_and_csv(tmp_path):
    from memae_dist.evaluate.protocol import write_metrics

    videos = [_video("A", [1, 2, 3, 4], [0, 0, 1, 1]), _video("C", [5, 5], [0, 0])]
    metrics = evaluate_videos(videos)
    metrics["extra_nan"] = float("nan")
    metrics["extra_np"] = np.float32(np.inf)
    mpath, fpath = write_metrics(tmp_path / "out", metrics, frame_table(videos))
    data = _strict_json(mpath)
    for key in ("auc_paper", "auc_micro", "auc_per_video_mean", "n_frames_scored", "n_videos",
                "n_abnormal", "average_precision", "eer", "per_video"):
        assert key in data
    assert data["extra_nan"] is None and data["extra_np"] is None
    assert data["auc_paper"] == 1.0 and data["per_video"][1]["auc"] is None
    with fpath.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == FRAME_COLUMNS and len(rows) == 6
    assert rows[0] == {"video": "A", "frame": "8", "score": "1.0", "regularity": "1.0",
                       "label": "0"}
    assert rows[5]["video"] == "C" and float(rows[5]["regularity"]) == 1.0  # constant video
    assert sorted(p.name for p in mpath.parent.iterdir()) == ["frames.csv", "metrics.json"]


def test_write_metrics_accepts_pyarrow_table(tmp_path):
    import pyarrow as pa

    from memae_dist.evaluate.protocol import write_metrics

    rows = frame_table([_video("A", [1.0, 3.0], [0, 1])])
    _, fpath = write_metrics(tmp_path, {"auc_paper": math.nan}, pa.Table.from_pylist(rows))
    assert _strict_json(tmp_path / "metrics.json") == {"auc_paper": None}
    assert fpath.read_text().splitlines()[1:] == ["A,8,1.0,1.0,0", "A,9,3.0,0.0,1"]
    with pytest.raises(ValueError, match="lacks column"):
        write_metrics(tmp_path, {}, [{"video": "A"}])


def test_other_windows_score_their_middle_frame():
    """The paper's 9th of 16 generalises to L // 2; a still image (L = 1) scores itself."""
    from memae_dist.evaluate.protocol import target_offset_for

    assert [target_offset_for(n) for n in (16, 8, 1)] == [8, 4, 0]
    frames, _ = frame_scores_from_windows(20, np.arange(13), np.zeros(13), window_length=8)
    np.testing.assert_array_equal(frames, np.arange(4, 17))
    frames, scores = frame_scores_from_windows(3, [2, 0, 1], [0.3, 0.1, 0.2], window_length=1)
    np.testing.assert_array_equal(frames, [0, 1, 2])
    np.testing.assert_array_equal(scores, [0.1, 0.2, 0.3])
