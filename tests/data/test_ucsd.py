import shutil
import time

import numpy as np
import pytest
import scipy.io
from PIL import Image

from memae_dist.data.importers.ucsd import (
    import_ucsd,
    load_frames,
    load_frames_with_masks,
    mat_ranges,
    ucsd_videos,
)
from memae_dist.data.manifest import load_manifest
from memae_dist.data.shards import read_video_frames
from memae_dist.errors import UserError

N = 20  # frames copied per video
# 0-based ranges for the two small test videos; video 02 has two ranges.
RANGES = [[[5, 12]], [[0, 2], [14, 19]]]


def _gray(path):
    with Image.open(path) as img:
        return img.convert("L")


def _frames_tree(shared, root):
    """training/frames/01-02 and testing/frames/01-02 with N real JPEGs each, plus ped2.mat."""
    for part in ("training", "testing"):
        for video in ("01", "02"):
            out = root / part / "frames" / video
            out.mkdir(parents=True)
            for i in range(N):
                shutil.copy(shared / part / "frames" / video / f"{i:03d}.jpg", out / f"{i:03d}.jpg")
    gt = np.empty((1, 2), dtype=object)
    for v, ranges in enumerate(RANGES):  # [first; last] columns, 1-based, like the real file
        gt[0, v] = np.array(ranges, dtype=np.uint8).T + 1
    scipy.io.savemat(root / "ped2.mat", {"gt": gt})
    return root


def _original_tree(frames_root, root):
    """UCSDped2/Train/Train00N, Test/Test00N(+_gt masks) from the same frames, as tif/bmp."""
    base = root / "UCSDped2"
    for part, prefix in (("training", "Train"), ("testing", "Test")):
        for v in (1, 2):
            out = base / prefix / f"{prefix}{v:03d}"
            out.mkdir(parents=True)
            for i in range(N):
                src = frames_root / part / "frames" / f"{v:02d}" / f"{i:03d}.jpg"
                _gray(src).save(out / f"{i + 1:03d}.tif")
            if part == "testing":
                gt = base / prefix / f"{prefix}{v:03d}_gt"
                gt.mkdir()
                labels = np.zeros(N, bool)
                for a, b in RANGES[v - 1]:
                    labels[a : b + 1] = True
                for i in range(N):
                    mask = np.zeros((240, 360), np.uint8)
                    if labels[i]:
                        mask[100:110, 200:205] = 255
                    Image.fromarray(mask).save(gt / f"{i + 1:03d}.bmp")
    (base / "Train" / "._Train001").mkdir()  # macOS litter must be ignored
    return base


@pytest.fixture
def trees(shared_ped2, tmp_path):
    frames_root = _frames_tree(shared_ped2, tmp_path / "frames_layout")
    original = _original_tree(frames_root, tmp_path / "orig_parent")
    return frames_root, original


def _summary(specs):
    out = []
    for spec in specs:
        frames, ranges = spec.load()
        out.append((spec.split, spec.name, len(frames), np.shape(frames[0]), ranges))
    return out


def test_both_layouts_give_the_same_videos(trees):
    frames_root, original = trees
    from_frames = _summary(ucsd_videos(frames_root))
    assert from_frames == [
        ("train", "01", N, (240, 360), None), ("train", "02", N, (240, 360), None),
        ("test", "01", N, (240, 360), RANGES[0]), ("test", "02", N, (240, 360), RANGES[1]),
    ]
    # the original layout, given its parent folder
    assert _summary(ucsd_videos(original.parent)) == from_frames
    # labels from the .npy instead of the .mat
    (frames_root / "ped2.mat").unlink()
    labels = np.zeros((1, 2 * N), np.int64)
    for v, ranges in enumerate(RANGES):
        for a, b in ranges:
            labels[0, v * N + a : v * N + b + 1] = 1
    np.save(frames_root / "frame_labels_ped2.npy", labels)
    assert _summary(ucsd_videos(frames_root)) == from_frames


def test_import_is_identical_for_both_layouts(trees, tmp_path, ray_local):
    frames_root, original = trees
    a = import_ucsd(frames_root, str(tmp_path / "a"), (32, 48), progress=False)
    b = import_ucsd(original, str(tmp_path / "b"), (32, 48), progress=False)
    assert a == b  # same names, labels and byte-identical shards (same sha256)
    m = load_manifest(str(tmp_path / "a"))
    assert m.name == "ucsd-ped2" and m.total_frames("test") == 2 * N
    frames, labels = read_video_frames(m.shard_uri(str(tmp_path / "a"), m.videos("test")[1]))
    assert frames.shape == (N, 32, 48) and frames.dtype == np.uint8
    np.testing.assert_array_equal(np.flatnonzero(labels), [0, 1, 2, 14, 15, 16, 17, 18, 19])


def test_label_mismatches_name_the_label_file(trees):
    frames_root, original = trees
    gt = np.empty((1, 2), dtype=object)
    gt[0, 0], gt[0, 1] = np.array([[1], [5]]), np.array([[10], [N + 1]])  # past the end
    scipy.io.savemat(frames_root / "ped2.mat", {"gt": gt})
    with pytest.raises(UserError, match=r"ped2\.mat.*label length mismatch"):
        ucsd_videos(frames_root)
    (frames_root / "ped2.mat").unlink()
    np.save(frames_root / "frame_labels_ped2.npy", np.zeros((1, 2 * N + 1), np.int64))
    with pytest.raises(UserError, match=r"frame_labels_ped2\.npy.*41 frame labels"):
        ucsd_videos(frames_root)
    # A value that is no 0/1 label is refused, not counted as abnormal (the other importers'
    # dataset-wide label files go through the same reader).
    for value in (0.5, -1, 255, np.nan):
        np.save(frames_root / "frame_labels_ped2.npy", np.full((1, 2 * N), value))
        with pytest.raises(UserError, match=r"frame_labels_ped2\.npy: frame labels must be 0 or "
                                            r"1, got .* at frame 0"):
            ucsd_videos(frames_root)
    # A stray broken link among a test video's frames: the count names it, not only the labels.
    link = frames_root / "testing" / "frames" / "01" / "999.jpg"
    link.symlink_to(frames_root / "gone.jpg")
    np.save(frames_root / "frame_labels_ped2.npy", np.zeros((1, 2 * N), np.int64))
    with pytest.raises(UserError) as caught:
        ucsd_videos(frames_root)
    assert str(caught.value) == (
        f"{frames_root / 'frame_labels_ped2.npy'}: {2 * N} frame labels, but the test videos "
        f"have {2 * N + 1} frames, counting {link}, a broken symbolic link (its target "
        f"{frames_root / 'gone.jpg'} does not exist): restore its target or remove the link")
    link.unlink()
    (original / "Test" / "Test002_gt" / "020.bmp").unlink()
    spec = ucsd_videos(original)[-1]
    with pytest.raises(UserError, match=r"Test002_gt.*label length mismatch"):
        spec.load()


def test_missing_dataset_and_numeric_frame_order(tmp_path):
    with pytest.raises(UserError, match="no UCSD ped2 dataset"):
        ucsd_videos(tmp_path)
    with pytest.raises(UserError, match="variant"):
        ucsd_videos(tmp_path, "ped3")
    for i in (10, 2, 1):
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(tmp_path / f"{i}.png")
    frames, _ = load_frames(str(tmp_path), None)
    assert [int(f[0, 0]) for f in frames] == [1, 2, 10]


@pytest.mark.slow
def test_full_ped2_import(shared_ped2, tmp_path, ray_local):
    start = time.monotonic()
    manifest = import_ucsd(shared_ped2, str(tmp_path / "ped2"), (64, 64), progress=False)
    elapsed = time.monotonic() - start
    train, test = manifest["splits"]["train"]["videos"], manifest["splits"]["test"]["videos"]
    assert len(train) == 16 and sum(v["num_frames"] for v in train) == 2550
    assert len(test) == 12 and sum(v["num_frames"] for v in test) == 2010
    assert [v["num_frames"] for v in test] == [180, 180, 150, 180, 150, 180, 180, 180, 120, 150,
                                               180, 180]
    assert sum(b - a + 1 for v in test for a, b in v["abnormal"]) == 1648
    m = load_manifest(str(tmp_path / "ped2"))
    expected = np.load(shared_ped2 / "frame_labels_ped2.npy").reshape(-1)
    np.testing.assert_array_equal(
        np.concatenate([m.frame_labels(v) for v in m.videos("test")]), expected)
    stored = sum(s["bytes"] for s in manifest["shards"])
    print(f"\nfull Ped2 import at 64x64: {elapsed:.1f} s, {stored / 1e6:.2f} MB stored vs "
          f"{(2550 + 2010) * 64 * 64 / 1e6:.2f} MB as one uint8 copy")


def _tif_video(folder, n, start=1, ext="tif", dtype=np.uint8, scale=1):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((158, 238), (30 + 5 * i) * scale, dtype)).save(
            folder / f"{i + start:03d}.{ext}")


def test_ped1_original_layout_with_masks_and_m_file(tmp_path):
    """Ped1 ships masks for a few test videos only; the rest take their ranges from the .m file."""
    base = tmp_path / "UCSD_Anomaly_Dataset.v1p2" / "UCSDped1"
    _tif_video(base / "Train" / "Train001", 12)
    _tif_video(base / "Test" / "Test001", 14)
    _tif_video(base / "Test" / "Test002", 10)
    gt = base / "Test" / "Test002_gt"
    gt.mkdir()
    for i in range(10):
        mask = np.zeros((158, 238), np.uint8)
        mask[50:60, 70:80] = 255 if i in (2, 3, 7) else 0
        Image.fromarray(mask).save(gt / f"{i + 1:03d}.bmp")
    (base / "UCSDped1.m").write_text(
        "TestVideoFile = {};\n"
        "TestVideoFile{end+1}.gt_frame = [3:5, 10:14];\n"
        "TestVideoFile{end+1}.gt_frame = [1:10];\n"  # ignored: Test002 has masks
    )
    specs = ucsd_videos(base.parent, "ped1")
    assert [(s.split, s.name) for s in specs] == [("train", "01"), ("test", "01"), ("test", "02")]
    loaded = [spec.load() for spec in specs]
    assert [len(f) for f, _ in loaded] == [12, 14, 10]
    assert [int(np.asarray(f[4]).mean()) for f, _ in loaded] == [50, 50, 50]  # numeric order
    assert [r for _, r in loaded] == [None, [[2, 4], [9, 13]], [[2, 3], [7, 7]]]
    # The "frames" layout of the same footage (numbered from 000, ped1.mat) gives the same.
    frames = tmp_path / "ped1"
    _tif_video(frames / "training" / "frames" / "01", 12, start=0, ext="jpg")
    _tif_video(frames / "testing" / "frames" / "01", 14, start=0, ext="jpg")
    _tif_video(frames / "testing" / "frames" / "02", 10, start=0, ext="jpg")
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = np.array([[3, 10], [5, 14]]), np.array([[3, 8], [4, 8]])
    scipy.io.savemat(frames / "ped1.mat", {"gt": cell})
    again = [spec.load()[1] for spec in ucsd_videos(frames, "ped1")]
    assert again == [r for _, r in loaded]


def _gt(*cells):
    gt = np.empty((1, len(cells)), dtype=object)
    for i, cell in enumerate(cells):
        gt[0, i] = cell
    return gt


def test_malformed_gt_names_the_mat_file(tmp_path):
    path = tmp_path / "ped2.mat"
    scipy.io.savemat(path, {"gt": _gt(np.array([[3.0], [8.0]]), np.array([[1.0], [4.0]]))})
    assert mat_ranges(path, [10, 10]) == [[[2, 7]], [[0, 3]]]  # doubles, as MATLAB saves
    scipy.io.savemat(path, {"gt": _gt(np.array([[3.0], [8.0]]), "abc")})
    with pytest.raises(UserError, match=r"ped2\.mat: gt entry 2 must hold frame numbers, "
                                        r"not text 'abc'"):
        mat_ranges(path, [10, 10])
    scipy.io.savemat(path, {"gt": _gt(np.array([[3.5], [8.0]]), np.array([[1.0], [4.0]]))})
    with pytest.raises(UserError, match=r"ped2\.mat: gt entry 1 holds 3\.5, which is not a "
                                        "whole frame number"):
        mat_ranges(path, [10, 10])  # never truncated to frame 3


def test_bad_m_file_range_names_the_m_file(tmp_path):
    base = tmp_path / "UCSDped2"
    _tif_video(base / "Train" / "Train001", 4)
    _tif_video(base / "Test" / "Test001", 6)
    _tif_video(base / "Test" / "Test002", 5)
    m_file = base / "UCSDped2.m"
    m_file.write_text("TestVideoFile{end+1}.gt_frame = [2:3];\n"
                      "TestVideoFile{end+1}.gt_frame = [4:9];\n")
    specs = ucsd_videos(base)
    assert specs[1].load()[1] == [[1, 2]]
    with pytest.raises(UserError, match=r"UCSDped2\.m: range \[4, 9\] of test video 2 is "
                                        r"outside its 5 frames"):
        specs[2].load()
    m_file.write_text("TestVideoFile{end+1}.gt_frame = [2:3];\n"
                      "TestVideoFile{end+1}.gt_frame = [4:2];\n")
    with pytest.raises(UserError, match=r"UCSDped2\.m: range \[4, 2\] of test video 2 ends "
                                        "before it starts"):
        ucsd_videos(base)[2].load()


def test_16_bit_frames_and_unreadable_images(tmp_path, monkeypatch):
    """16-bit TIFF frames keep their brightness (value / 257); an image over Pillow's pixel
    limit (lowered here) is an unreadable image, like a broken link to a frame."""
    folder = tmp_path / "Train001"
    _tif_video(folder, 3, dtype=np.uint16, scale=257)  # 16-bit levels of 30, 35, 40
    frames, _ = load_frames(str(folder), None)
    assert [np.unique(f).tolist() for f in frames] == [[30], [35], [40]]
    masks = tmp_path / "Train001_gt"
    masks.mkdir()
    for i in range(3):  # 16-bit masks of 0s and 1s: a set pixel is set at any bit depth
        Image.fromarray(np.full((158, 238), i == 1, np.uint16)).save(masks / f"{i + 1:03d}.tif")
    assert load_frames_with_masks(str(folder), str(masks))[1] == [[1, 1]]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UserError, match=r"cannot read image .*001\.tif: .*decompression bomb"):
        load_frames(str(folder), None)
    monkeypatch.undo()
    (folder / "002.tif").unlink()
    (folder / "002.tif").symlink_to(tmp_path / "moved.tif")
    with pytest.raises(UserError, match=r"cannot read image .*002\.tif: broken symbolic link"):
        load_frames(str(folder), None)


def test_a_frame_of_another_size_is_named(tmp_path):
    folder = tmp_path / "Train001"
    _tif_video(folder, 3)
    Image.fromarray(np.zeros((160, 240), np.uint8)).save(folder / "002.tif")
    with pytest.raises(UserError, match=rf"image {folder / '002.tif'} is 240x160, but the other "
                                        rf"frames of {folder} are 238x158 \(width x height\)"):
        load_frames(str(folder), None)
