"""The Avenue importer: .avi videos with mask-volume, .npy or .mat labels; the frames layout."""

import numpy as np
import pytest
import scipy.io

from memae_dist.cli import main
from memae_dist.data.importers.avenue import avenue_videos, read_mask_volume
from memae_dist.data.manifest import load_manifest
from memae_dist.data.shards import read_video_frames
from memae_dist.errors import UserError
from tests.data.videos import frame_indices, write_frames, write_video

SIZE = (32, 32)
TRAIN = [24, 18]  # frames of training videos 01, 02
TEST = [30, 21]  # frames of testing videos 01, 02
RANGES = [[[4, 9], [25, 29]], []]  # 0-based ground truth of the test videos


def _mask_volume(path, n, ranges):
    """A ``volLabel`` cell like the release's: one (H, W) mask per frame, set where abnormal."""
    cell = np.empty((1, n), dtype=object)
    for i in range(n):
        mask = np.zeros((36, 64), np.uint8)
        if any(a <= i <= b for a, b in ranges):
            mask[10:14, 20:30] = 1
        cell[0, i] = mask
    scipy.io.savemat(path, {"volLabel": cell})


@pytest.fixture
def avenue(tmp_path):
    root = tmp_path / "Avenue Dataset"
    for part, counts in (("training_videos", TRAIN), ("testing_videos", TEST)):
        (root / part).mkdir(parents=True)
        for i, n in enumerate(counts):
            write_video(root / part / f"{i + 1:02d}.avi", n, "mpeg4", height=36, width=64)
    masks = root / "ground_truth_demo" / "testing_label_mask"
    masks.mkdir(parents=True)
    for i, (n, ranges) in enumerate(zip(TEST, RANGES)):
        _mask_volume(masks / f"{i + 1}_label.mat", n, ranges)
    return tmp_path  # the parent: the importer looks one folder down


def _summary(specs):
    out = []
    for spec in specs:
        frames, ranges = spec.load()
        assert frame_indices(frames) == list(range(len(frames))), spec.key
        out.append((spec.split, spec.name, frames.shape, ranges))
    return out


def test_label_sources_agree(avenue):
    expected = [("train", "01", (24, 32, 32), None), ("train", "02", (18, 32, 32), None),
                ("test", "01", (30, 32, 32), RANGES[0]), ("test", "02", (21, 32, 32), [])]
    assert _summary(avenue_videos(avenue, SIZE)) == expected
    root = avenue / "Avenue Dataset"
    assert read_mask_volume(root / "ground_truth_demo/testing_label_mask/2_label.mat").sum() == 0
    # Without the masks: all test frame labels in one .npy ...
    (root / "ground_truth_demo" / "testing_label_mask").rename(root / "masks_off")
    labels = np.zeros((1, sum(TEST)), np.int64)
    for a, b in RANGES[0]:
        labels[0, a : b + 1] = 1
    np.save(root / "frame_labels_avenue.npy", labels)
    assert _summary(avenue_videos(avenue, SIZE)) == expected
    # ... or 1-based [first; last] columns in avenue.mat, like the MNAD release.
    (root / "frame_labels_avenue.npy").unlink()
    gt = np.empty((1, 2), dtype=object)
    gt[0, 0] = np.array(RANGES[0]).T + 1
    gt[0, 1] = np.zeros((2, 0))
    scipy.io.savemat(root / "avenue.mat", {"gt": gt})
    assert _summary(avenue_videos(avenue, SIZE)) == expected


def test_frames_layout(tmp_path):
    root = tmp_path / "avenue"
    write_frames(root / "training" / "frames" / "01", 17, "jpg", pattern="{:04d}")
    write_frames(root / "testing" / "frames" / "01", 19, "jpg", pattern="{:04d}")
    np.save(root / "frame_labels_avenue.npy", np.r_[np.zeros(10), np.ones(9)].astype(np.int64))
    assert _summary(avenue_videos(root, SIZE)) == [
        ("train", "01", (17, 32, 32), None), ("test", "01", (19, 32, 32), [[10, 18]])]


def test_label_problems_name_the_file(avenue):
    root = avenue / "Avenue Dataset"
    masks = root / "ground_truth_demo" / "testing_label_mask"
    _mask_volume(masks / "2_label.mat", TEST[1] - 1, [])  # one mask short
    spec = avenue_videos(avenue, SIZE)[-1]
    with pytest.raises(UserError, match=r"2_label\.mat: 20 frame labels, but .*02\.avi has 21"):
        spec.load()
    (masks / "2_label.mat").unlink()
    with pytest.raises(UserError, match=r"no mask volume for test video\(s\) 02"):
        avenue_videos(avenue, SIZE)
    masks.rename(root / "elsewhere")
    with pytest.raises(UserError, match="no Avenue test labels"):
        avenue_videos(avenue, SIZE)
    np.save(root / "frame_labels_avenue.npy", np.zeros(sum(TEST) + 3))
    with pytest.raises(UserError, match=r"frame_labels_avenue\.npy: 54 frame labels"):
        avenue_videos(avenue, SIZE)
    with pytest.raises(UserError, match="no Avenue dataset"):
        avenue_videos(root / "training_videos", SIZE)


def test_prepare_avenue(avenue, tmp_path, ray_local, capsys):
    dst = str(tmp_path / "store")
    assert main(["prepare", "avenue", "--src", str(avenue), "--dst", dst, "--size", "32", "32",
                 "--no-progress"]) == 0
    assert "test: 2 videos, 51 frames, 11 abnormal" in capsys.readouterr().out
    m = load_manifest(dst)
    assert m.name == "avenue" and [v.num_frames for v in m.videos("train")] == TRAIN
    frames, labels = read_video_frames(m.shard_uri(dst, m.videos("test")[0]))
    assert frame_indices(frames) == list(range(30))
    assert np.flatnonzero(labels).tolist() == [4, 5, 6, 7, 8, 9, 25, 26, 27, 28, 29]


def _labels_npy(root, ranges2):
    """frame_labels_avenue.npy for both test videos (02 with ``ranges2``), instead of masks."""
    masks = root / "ground_truth_demo" / "testing_label_mask"
    if masks.is_dir():
        masks.rename(root / "masks_off")
    labels = np.zeros(sum(TEST), np.int64)
    for a, b in [*RANGES[0], *([TEST[0] + a, TEST[0] + b] for a, b in ranges2)]:
        labels[a : b + 1] = 1
    np.save(root / "frame_labels_avenue.npy", labels)


def test_skip_bad_skips_unreadable_videos_with_label_files(avenue):
    root = avenue / "Avenue Dataset"
    _labels_npy(root, [[3, 5]])
    (root / "testing_videos" / "01.avi").write_bytes(b"junk, not a video")
    with pytest.raises(UserError, match=r"cannot open video .*testing_videos/01\.avi"):
        avenue_videos(avenue, SIZE)
    # The one unreadable video's length is what the others leave of the labels: 02 keeps its.
    specs = avenue_videos(avenue, SIZE, skip_bad=True)
    assert [s.key for s in specs] == ["train/01", "train/02", "test/01", "test/02"]
    with pytest.raises(UserError, match=r"cannot open video .*testing_videos/01\.avi"):
        specs[2].load()
    assert specs[3].load()[1] == [[3, 5]]
    # avenue.mat holds each video's ranges on their own.
    (root / "frame_labels_avenue.npy").unlink()
    gt = np.empty((1, 2), dtype=object)
    gt[0, 0], gt[0, 1] = np.array(RANGES[0]).T + 1, np.array([[4], [6]])
    scipy.io.savemat(root / "avenue.mat", {"gt": gt})
    assert avenue_videos(avenue, SIZE, skip_bad=True)[3].load()[1] == [[3, 5]]
    # With two lengths unknown, the labels of a .npy cannot be placed: say so.
    (root / "avenue.mat").unlink()
    _labels_npy(root, [])
    (root / "testing_videos" / "02.avi").write_bytes(b"junk too")
    with pytest.raises(UserError, match=r"frame_labels_avenue\.npy: test videos 01, 02 cannot "
                                        r"be read.*--skip-bad cannot skip them"):
        avenue_videos(avenue, SIZE, skip_bad=True)


def test_prepare_skip_bad_with_label_file(avenue, tmp_path, ray_local, capsys):
    root = avenue / "Avenue Dataset"
    _labels_npy(root, [])
    (root / "testing_videos" / "02.avi").write_bytes(b"junk, not a video")
    dst = str(tmp_path / "store")
    argv = ["prepare", "avenue", "--src", str(avenue), "--dst", dst, "--size", "32", "32",
            "--no-progress"]
    assert main(argv) == 2
    assert "cannot open video" in capsys.readouterr().err
    assert main([*argv, "--skip-bad"]) == 0
    assert "skipped test/02: cannot open video" in capsys.readouterr().out
    m = load_manifest(dst)
    assert [s["video"] for s in m.skipped] == ["02"]
    frames, labels = read_video_frames(m.shard_uri(dst, m.videos("test")[0]))
    assert frame_indices(frames) == list(range(30))
    assert np.flatnonzero(labels).tolist() == [4, 5, 6, 7, 8, 9, 25, 26, 27, 28, 29]
