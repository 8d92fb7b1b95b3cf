"""The ``images`` importer: MVTec / anomalib "folder" trees of still images -> image groups."""

import os

import numpy as np
import pytest
from PIL import Image

from memae_dist.cli import main
from memae_dist.data.importers import images
from memae_dist.data.importers.images import image_groups, import_images, load_images
from memae_dist.data.manifest import load_manifest
from memae_dist.data.shards import read_video_frames
from memae_dist.errors import UserError
from tests.data.videos import sideways_jpeg

SIZE = (28, 28)


def write_image(path, level: int, mode: str = "L", fmt: str | None = None):
    """A 30x40 image: flat grey ``level`` (also its top-left pixel in grey) with a white patch;
    RGB ones get other levels in green and blue, so the grey conversion matters."""
    a = np.full((30, 40), level, np.uint8)
    a[5:12, 8:20] = 255
    img = Image.fromarray(a)
    if mode == "RGB":
        img = Image.merge("RGB", (img, img, img))
        a = np.asarray(img).copy()
        a[20:, :, 1] //= 2
        a[20:, :, 2] = 255 - a[20:, :, 2]
        img = Image.fromarray(a)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def expected(path) -> np.ndarray:
    """The documented conversion: Pillow grey, then a bilinear resize to 28x28."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize(SIZE[::-1], Image.Resampling.BILINEAR))


@pytest.fixture
def mvtec(tmp_path):
    """train/good (natural order matters), test/good, test/crack (RGB PNG, JPEG, grey)."""
    src = tmp_path / "mvtec"
    for n in (1, 2, 10, 3, 11):
        write_image(src / "train" / "good" / f"img{n}.png", 10 * n)
    write_image(src / "test" / "good" / "001.png", 50)
    write_image(src / "test" / "good" / "002.png", 60, "RGB")
    write_image(src / "test" / "crack" / "img10.png", 70, "RGB")
    write_image(src / "test" / "crack" / "img2.jpg", 80, "RGB")
    write_image(src / "test" / "crack" / "img1.png", 90)
    write_image(src / "ground_truth" / "crack" / "img1_mask.png", 255)  # not a split: ignored
    write_image(src / "train" / "good" / ".img0.png", 0)  # hidden: ignored
    (src / "train" / "good" / "notes.txt").write_text("not an image")
    (src / "readme.txt").write_text("MVTec-like")
    return src


def _mtimes(root) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns
            for p in sorted(root.rglob("*.parquet"))}


def _frames(dst, split: str):
    m = load_manifest(dst)
    return {v.name: read_video_frames(m.shard_uri(dst, v)) for v in m.videos(split)}


def test_mvtec_tree_groups_labels_pixels_and_rerun(mvtec, tmp_path, ray_local, monkeypatch):
    monkeypatch.setattr(images, "IMAGES_PER_GROUP", 3)  # 1024 in use; cut the same way
    dst = str(tmp_path / "store")
    manifest = import_images(mvtec, dst, workers=2, progress=False)
    m = load_manifest(dst)
    assert m.to_dict() == manifest
    assert (m.content, m.source, m.name, m.size) == ("images", "images", "mvtec", SIZE)
    assert (m.segment_frames, m.segment_overlap, m.skipped) == (256, 0, [])
    groups = {s: [(v.name, v.num_frames, v.abnormal) for v in m.videos(s)] for s in m.splits}
    assert groups == {"train": [("good-0000", 3, None), ("good-0001", 2, None)],
                      "test": [("crack-0000", 3, [[0, 2]]), ("good-0000", 2, [])]}
    train = _frames(dst, "train")
    # Frame i of group k is image k*3 + i in natural order: img1 img2 img3 | img10 img11.
    assert train["good-0000"][0][:, 0, 0].tolist() == [10, 20, 30]
    assert train["good-0001"][0][:, 0, 0].tolist() == [100, 110]
    np.testing.assert_array_equal(train["good-0001"][0][0],
                                  expected(mvtec / "train" / "good" / "img10.png"))
    test = _frames(dst, "test")
    crack, labels = test["crack-0000"]
    for i, name in enumerate(("img1.png", "img2.jpg", "img10.png")):
        np.testing.assert_array_equal(crack[i], expected(mvtec / "test" / "crack" / name))
    assert labels.tolist() == [1, 1, 1] and test["good-0000"][1].tolist() == [0, 0]

    # A rerun reuses every group; a changed image redoes its own group only.
    before = _mtimes(tmp_path / "store")
    assert len(before) == 4
    assert import_images(mvtec, dst, workers=2, progress=False) == manifest
    assert _mtimes(tmp_path / "store") == before
    changed = write_image(mvtec / "train" / "good" / "img11.png", 200)
    os.utime(changed, ns=(10**18, 10**18))  # a distinct mtime, however coarse the clock
    import_images(mvtec, dst, workers=2, progress=False)
    after = _mtimes(tmp_path / "store")
    assert [k for k in before if after[k] != before[k]] == ["train/good-0001.parquet"]
    assert _frames(dst, "train")["good-0001"][0][:, 0, 0].tolist() == [100, 200]


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored sideways with an EXIF orientation is read as viewers show it: turned a
    quarter clockwise, the stored top-left corner lands at the top-right."""
    path = sideways_jpeg(tmp_path / "photo.jpg")
    pixels = images.read_image(path, SIZE)
    rows, cols = np.nonzero(pixels > 200)
    assert rows.max() < 12 and cols.min() > 14


def test_aliases_loose_train_images_and_class_names(tmp_path):
    src = tmp_path / "digits"
    write_image(src / "training" / "a10.png", 1)
    write_image(src / "training" / "a2.png", 2)
    write_image(src / "training" / "extra" / "b.pgm", 3, fmt="PPM")
    write_image(src / "testing" / "Normal" / "x.bmp", 4)
    write_image(src / "testing" / "7" / "y.gif", 5)
    write_image(src / "testing" / "broken large" / "z.tif", 6, "RGB")
    (src / "testing" / "empty").mkdir()  # no images: no group
    write_image(src / "validation" / "GOOD" / "v.webp", 7, fmt="WEBP")
    specs = image_groups(src, SIZE)
    assert [(s.split, s.name) for s in specs] == [
        ("train", "train-0000"), ("train", "extra-0000"), ("test", "7-0000"),
        ("test", "broken_large-0000"), ("test", "Normal-0000"), ("val", "GOOD-0000")]
    loaded = [s.load() for s in specs]
    assert [ranges for _, ranges, _ in loaded] == [None, None, [[0, 0]], [[0, 0]], [], []]
    assert all(dropped == [] for _, _, dropped in loaded)
    frames = loaded[0][0]
    assert frames.shape == (2, *SIZE) and frames.dtype == np.uint8
    assert frames[:, 0, 0].tolist() == [2, 1]  # a2 before a10


@pytest.mark.parametrize(("files", "message"), [
    ((), r"no train/ folder in .*src \(expected train/"),
    (("test/good/a.png",), "no train/ folder"),
    (("train/notes/",), "no training images under"),
    (("train/a.png", "test/b.png"), r"test/b\.png: images directly in .*test have no label"),
    (("train/a.png", "val/good/c.png", "val/d.png"), r"val/d\.png: images directly in"),
    (("train/a.png", "loose.png"), r"loose\.png: images outside the split folders have no"),
    (("train/a.png", "training/b.png"), "two folders for the train split"),
    (("train/a.png", "test/crack/deep/b.png"), r"test/crack/deep: a class folder holds images"),
    (("train/a.png", "test/a b/x.png", "test/a_b/y.png"), "several classes map to .*'a_b'"),
    (("train/x.png", "train/train/y.png"), "several classes map to the name 'train'"),
])
def test_layout_errors_name_the_path(tmp_path, files, message):
    src = tmp_path / "src"
    src.mkdir()
    for rel in files:
        if rel.endswith("/"):
            (src / rel).mkdir(parents=True)
        else:
            write_image(src / rel, 100)
    with pytest.raises(UserError, match=message):
        image_groups(src, SIZE)


def test_missing_source_is_named(tmp_path):
    with pytest.raises(UserError, match=r"image folder not found: .*nowhere"):
        image_groups(tmp_path / "nowhere", SIZE)


def _bad_images(src):
    """test/scratch: two good images around a truncated PNG, a text file and a broken link."""
    scratch = src / "test" / "scratch"
    write_image(scratch / "img1.png", 40)
    raw = write_image(scratch / "img2.png", 50).read_bytes()
    (scratch / "img2.png").write_bytes(raw[: len(raw) // 2])
    (scratch / "img3.png").write_text("not an image")
    os.symlink(src / "moved" / "img4.png", scratch / "img4.png")
    write_image(scratch / "img5.png", 60)


def test_unreadable_images_stop_the_import_or_are_skipped_one_by_one(mvtec, tmp_path,
                                                                     ray_local, capsys):
    _bad_images(mvtec)
    dst = tmp_path / "store"
    argv = ["prepare", "images", "--src", str(mvtec), "--dst", str(dst), "--workers", "2",
            "--no-progress"]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "cannot read image" in errors[0]
    assert f"{mvtec}/test/scratch/img2.png" in errors[0]
    assert not (dst / "manifest.json").exists()

    assert main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "train: 1 groups, 5 images, 0 abnormal" in out  # 28x28 without --size
    assert "test: 3 groups, 7 images, 5 abnormal" in out
    for name in ("img2.png", "img3.png", "img4.png: broken symbolic link"):
        assert (f"left out of group test/scratch-0000: cannot read image "
                f"{mvtec}/test/scratch/{name}") in out
    m = load_manifest(str(dst))
    assert m.size == SIZE and len(m.skipped) == 3
    assert {(s["split"], s["video"]) for s in m.skipped} == {("test", "scratch-0000")}
    # The readable images in natural order; the skipped ones are left out of the numbering.
    frames, labels = _frames(str(dst), "test")["scratch-0000"]
    assert frames[:, 0, 0].tolist() == [40, 60] and labels.tolist() == [1, 1]

    # A rerun reuses the group and lists the skipped images again; without --skip-bad the
    # group is read again and the first bad image is an error again.
    shard = dst / "test" / "scratch-0000.parquet"
    mtime = shard.stat().st_mtime_ns
    assert main([*argv, "--skip-bad"]) == 0
    assert capsys.readouterr().out.count("left out of group test/scratch-0000") == 3
    assert shard.stat().st_mtime_ns == mtime
    assert main(["data", "info", str(dst)]) == 0
    info = capsys.readouterr().out
    assert "skipped at import: 3 image(s) in test/scratch-0000\n" in info + "\n"
    assert "groups" in info and "video" not in info
    assert main(argv) == 2
    assert "img2.png" in capsys.readouterr().err


def test_a_group_of_only_bad_images_is_listed_once_per_image(tmp_path, ray_local, capsys):
    src = tmp_path / "src"
    write_image(src / "train" / "good" / "a.png", 10)
    (src / "train" / "lost").mkdir(parents=True)
    (src / "train" / "lost" / "b.png").write_text("not an image")
    argv = ["prepare", "images", "--src", str(src), "--dst", str(tmp_path / "store"),
            "--no-progress", "--skip-bad"]
    assert main(argv) == 0
    skipped = [line for line in capsys.readouterr().out.splitlines() if "left out" in line]
    assert skipped == [f"  left out of group train/lost-0000: cannot read image "
                       f"{src}/train/lost/b.png: cannot identify image file "
                       f"'{src}/train/lost/b.png'"]
    (src / "train" / "good" / "a.png").write_text("not an image either")
    assert main(argv) == 2
    assert "every image was skipped, so no dataset was written" in capsys.readouterr().err


def test_decompression_bomb_and_all_bad_group(tmp_path, monkeypatch):
    a = write_image(tmp_path / "a.png", 10)  # 40x30 = 1200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over twice the limit: an error
    frames, ranges, dropped = load_images((str(a),), SIZE, True)
    assert frames.shape == (0, *SIZE) and ranges == []
    assert len(dropped) == 1 and "cannot read image" in dropped[0]
    assert "a.png" in dropped[0] and "decompression bomb" in dropped[0]


def test_cli_refuses_folder_flags_and_takes_any_size(mvtec, tmp_path, ray_local, capsys):
    dst = str(tmp_path / "store")
    base = ["prepare", "images", "--src", str(mvtec), "--dst", dst, "--no-progress"]
    assert main([*base, "--labels", "x.json"]) == 2
    assert "--labels is for 'prepare folder'" in capsys.readouterr().err
    assert main([*base, "--split", "test"]) == 2
    assert "--split is for 'prepare folder'" in capsys.readouterr().err
    assert main([*base, "--size", "20", "20", "--workers", "1"]) == 0  # not a multiple of 16
    assert load_manifest(dst).size == (20, 20)


def test_s3_destination(mvtec, s3_bucket, ray_local):
    manifest = import_images(mvtec, s3_bucket, workers=2, progress=False)
    m = load_manifest(s3_bucket)
    assert m.to_dict() == manifest and m.content == "images"
    frames, labels = read_video_frames(m.shard_uri(s3_bucket, m.videos("test")[0]))
    np.testing.assert_array_equal(frames[0], expected(mvtec / "test" / "crack" / "img1.png"))
    assert labels.tolist() == [1, 1, 1]
