"""Evaluation figures: non-empty, valid PNG files written atomically."""

import numpy as np
import pytest
from PIL import Image as PIL_Image

from memae_dist.evaluate.plots import (
    _abnormal_runs,
    plot_group,
    plot_roc,
    plot_score_curves,
    plot_score_histograms,
)
from memae_dist.evaluate.protocol import VideoScores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _videos(n):
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        frames = np.arange(8, 48)
        labels = np.zeros(40, dtype=np.uint8)
        labels[10 + i:20 + i] = 1
        out.append(VideoScores(f"{i:02d}", frames, rng.random(40) + labels, labels))
    return out


def _check_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    with PIL_Image.open(path) as img:
        return img.size


def _title(path) -> str:
    with PIL_Image.open(path) as img:
        return img.text["Title"]


def test_abnormal_runs_merge_consecutive_frames():
    frames = np.array([8, 9, 10, 11, 12, 13])
    assert _abnormal_runs(frames, np.array([1, 1, 0, 1, 0, 1])) == [(8, 9), (11, 11), (13, 13)]
    assert _abnormal_runs(frames, np.zeros(6)) == []


def test_plot_score_curves_writes_png(tmp_path):
    path = plot_score_curves(_videos(5), tmp_path / "figs" / "curves.png")
    w5, h5 = _check_png(path)
    # 5 videos -> 4 columns x 2 rows; 2 videos -> 2 x 1: the grid follows the count.
    w2, h2 = _check_png(plot_score_curves(_videos(2), tmp_path / "two.png"))
    assert w5 > w2 and h5 > h2
    # max_videos caps the grid: 20 videos limited to 2 draw the same size as 2 videos.
    assert _check_png(plot_score_curves(_videos(20), tmp_path / "cap.png", max_videos=2)) == (
        w2, h2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap.png", "figs", "two.png"]
    with pytest.raises(ValueError, match="max_videos"):
        plot_score_curves(_videos(1), tmp_path / "x.png", max_videos=0)


def test_plot_roc_writes_png(tmp_path):
    _check_png(plot_roc(_videos(3), tmp_path / "roc.png"))
    # One class only: still a figure (with a note), no crash.
    normal = [VideoScores("n", [8, 9, 10], [0.1, 0.3, 0.2], [0, 0, 0])]
    _check_png(plot_roc(normal, tmp_path / "roc_one_class.png"))


def test_a_figure_says_what_it_shows_in_its_title_text(tmp_path):
    assert _title(plot_score_curves(_videos(5), tmp_path / "c.png", max_videos=3)) == (
        "regularity of 3 of 5 videos")
    assert _title(plot_roc(_videos(3), tmp_path / "roc.png")) == (
        "frame-level ROC (3 videos, 120 frames)")


def test_still_images_get_error_histograms_and_the_raw_roc(tmp_path):
    # Images in a group have no order: a curve along them would draw the storage order.
    path = plot_score_histograms(_videos(5), tmp_path / "hist.png")
    w5, h5 = _check_png(path)
    assert _title(path) == "error histograms of 5 of 5 groups"
    w2, h2 = _check_png(plot_score_histograms(_videos(20), tmp_path / "cap.png", max_groups=2))
    assert w5 > w2 and h5 > h2
    with pytest.raises(ValueError, match="max_groups"):
        plot_score_histograms(_videos(1), tmp_path / "x.png", max_groups=0)
    roc = plot_roc(_videos(3), tmp_path / "roc.png", images=True)
    assert _title(roc) == "image-level ROC (3 groups, 120 images)"
    # Normal-only and unlabelled groups still draw (one class, or grey).
    normal = VideoScores("n", [0, 1, 2], [0.1, 0.3, 0.2], [0, 0, 0])
    _check_png(plot_group(normal, tmp_path / "n.png"))
    assert _title(plot_group(normal, tmp_path / "u.png", labelled=False)) == (
        "error histogram of group n (unlabelled)")
