"""The ShanghaiTech importer: training .avi videos, testing frame folders + test_frame_mask."""

import numpy as np
import pytest

from memae_dist.cli import main
from memae_dist.data.importers.shanghaitech import shanghaitech_videos
from memae_dist.data.manifest import load_manifest
from memae_dist.data.shards import read_video_frames
from memae_dist.errors import UserError
from tests.data.videos import frame_indices, write_frames, write_video

SIZE = (32, 32)
MASKS = {"01_0014": [0] * 5 + [1] * 8 + [0] * 7, "02_0128": [0] * 22}


@pytest.fixture
def shanghai(tmp_path):
    root = tmp_path / "shanghaitech"
    (root / "training" / "videos").mkdir(parents=True)
    write_video(root / "training" / "videos" / "01_001.avi", 26, "mpeg4")
    write_video(root / "training" / "videos" / "02_001.avi", 19, "mpeg4")
    (root / "testing" / "test_frame_mask").mkdir(parents=True)
    for name, mask in MASKS.items():
        write_frames(root / "testing" / "frames" / name, len(mask), "jpg")
        np.save(root / "testing" / "test_frame_mask" / f"{name}.npy", np.array(mask, np.int64))
    return root


def _summary(specs):
    out = []
    for spec in specs:
        frames, ranges = spec.load()
        assert frame_indices(frames) == list(range(len(frames))), spec.key
        out.append((spec.split, spec.name, len(frames), ranges))
    return out


EXPECTED = [("train", "01_001", 26, None), ("train", "02_001", 19, None),
            ("test", "01_0014", 20, [[5, 12]]), ("test", "02_0128", 22, [])]


def test_masks_and_concatenated_labels_agree(shanghai, tmp_path):
    assert _summary(shanghaitech_videos(tmp_path, SIZE)) == EXPECTED  # found one folder down
    (shanghai / "testing" / "test_frame_mask").rename(shanghai / "masks_off")
    np.save(shanghai / "frame_labels_shanghai.npy",
            np.concatenate([MASKS["01_0014"], MASKS["02_0128"]])[None])
    assert _summary(shanghaitech_videos(shanghai, SIZE)) == EXPECTED


def test_training_frames_layout_and_errors(shanghai):
    videos = shanghai / "training" / "videos"
    videos.rename(shanghai / "videos_off")
    write_frames(shanghai / "training" / "frames" / "01_001", 26, "jpg")
    assert _summary(shanghaitech_videos(shanghai, SIZE))[0] == EXPECTED[0]
    masks = shanghai / "testing" / "test_frame_mask"
    np.save(masks / "02_0128.npy", np.zeros(21, np.int64))
    with pytest.raises(UserError, match=r"02_0128\.npy: 21 frame labels, but .*02_0128 has 22"):
        shanghaitech_videos(shanghai, SIZE)
    np.save(masks / "02_0128.npy", np.zeros(22, np.int64))
    link = shanghai / "testing" / "frames" / "02_0128" / "zz_extra.jpg"
    link.symlink_to(shanghai / "gone.jpg")  # counted as a frame: named with the mismatch
    with pytest.raises(UserError, match=r"has 23 frames \(label length mismatch\), counting "
                                        r".*zz_extra\.jpg, a broken symbolic link"):
        shanghaitech_videos(shanghai, SIZE)
    link.unlink()
    (masks / "02_0128.npy").unlink()
    with pytest.raises(UserError, match="no frame labels for test video 02_0128"):
        shanghaitech_videos(shanghai, SIZE)
    masks.rename(shanghai / "masks_off")
    with pytest.raises(UserError, match="no ShanghaiTech test labels"):
        shanghaitech_videos(shanghai, SIZE)
    with pytest.raises(UserError, match="no ShanghaiTech dataset"):
        shanghaitech_videos(shanghai / "testing", SIZE)


def test_prepare_shanghaitech(shanghai, tmp_path, ray_local, capsys):
    dst = str(tmp_path / "store")
    assert main(["prepare", "shanghaitech", "--src", str(shanghai), "--dst", dst,
                 "--size", "32", "32", "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train: 2 videos, 45 frames, 0 abnormal" in out
    assert "test: 2 videos, 42 frames, 8 abnormal" in out
    m = load_manifest(dst)
    assert m.name == "shanghaitech"
    assert [v.abnormal for v in m.videos("test")] == [[[5, 12]], []]
    frames, _ = read_video_frames(m.shard_uri(dst, m.videos("train")[0]))
    assert frame_indices(frames) == list(range(26))
