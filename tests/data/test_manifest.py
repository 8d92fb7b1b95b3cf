import json
import re

import numpy as np
import pytest

from memae_dist.data.manifest import (
    Manifest,
    ShardEntry,
    VideoEntry,
    load_manifest,
    save_manifest,
)
from memae_dist.errors import UserError


def _manifest() -> Manifest:
    return Manifest(
        name="toy", source="unit-test", size=(32, 48), segment_frames=128, segment_overlap=15,
        splits={
            "train": [VideoEntry("01", 120, "train/01.parquet", None),
                      VideoEntry("02", 10, "train/02.parquet", None)],
            "test": [VideoEntry("01", 180, "test/01.parquet", [[60, 179]]),
                     VideoEntry("02", 20, "test/02.parquet", [[0, 1], [5, 5]]),
                     VideoEntry("03", 16, "test/03.parquet", [])],
        },
        shards=[ShardEntry(f"{split}/{name}.parquet", split, name, 10, "ab" * 32, 1)
                for split, name in [("train", "01"), ("train", "02"), ("test", "01"),
                                    ("test", "02"), ("test", "03")]],
    )


def test_round_trip_and_accessors(tmp_path):
    save_manifest(str(tmp_path), _manifest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temp file left
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["format"] == "memae-dist-frames" and raw["format_version"] == 1
    assert raw["splits"]["test"]["videos"][0]["abnormal"] == [[60, 179]]
    m = load_manifest(str(tmp_path))
    assert m == _manifest()
    assert m.split_names == ["train", "test"]
    assert [v.name for v in m.videos("test")] == ["01", "02", "03"]
    assert m.total_frames("train") == 130 and m.total_frames("test") == 216
    # windows of 16 at stride 1: 105 + 0 (video too short); stride 4: 27
    assert m.n_windows("train", 16, 1) == 105 and m.n_windows("train", 16, 4) == 27
    assert m.n_windows("test", 16, 1) == 165 + 5 + 1
    labels = m.frame_labels(m.videos("test")[1])
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(np.flatnonzero(labels), [0, 1, 5])
    assert m.frame_labels(m.videos("train")[0]).sum() == 0
    assert not m.videos("train")[0].labelled and m.videos("test")[2].labelled
    assert m.shard_uri("s3://b/ds", m.videos("test")[0]) == "s3://b/ds/test/01.parquet"
    assert m.shard_entry(m.videos("train")[0]).sha256 == "ab" * 32
    with pytest.raises(UserError) as err:
        m.videos("val")
    assert str(err.value) == (f"dataset {tmp_path} (toy) has no split 'val' "
                              f"(splits: train, test)")


def _write(tmp_path, data):
    (tmp_path / "manifest.json").write_text(json.dumps(data))


def test_unknown_version_and_format_name_the_file(tmp_path):
    data = _manifest().to_dict()
    _write(tmp_path, {**data, "format_version": 2})
    with pytest.raises(UserError, match=r"manifest\.json.*format_version 2"):
        load_manifest(str(tmp_path))
    _write(tmp_path, {**data, "format": "something-else"})
    with pytest.raises(UserError, match=r"manifest\.json.*not a memae-dist-frames"):
        load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_manifest(str(tmp_path))
    _write(tmp_path, {k: v for k, v in data.items() if k != "size"})
    with pytest.raises(UserError, match="malformed"):
        load_manifest(str(tmp_path))
    # JSON of the wrong kind: a list where the splits belong, a null where a video belongs.
    _write(tmp_path, {**data, "splits": [1, 2]})
    with pytest.raises(UserError, match=r"manifest\.json: malformed manifest"):
        load_manifest(str(tmp_path))
    _write(tmp_path, {**data, "splits": {"train": {"videos": [None]}}})
    with pytest.raises(UserError, match=r"manifest\.json: malformed manifest"):
        load_manifest(str(tmp_path))


def test_missing_manifest(tmp_path):
    with pytest.raises(UserError, match=r"no manifest.json.*\(not imported yet"):
        load_manifest(str(tmp_path))
    with pytest.raises(UserError, match="give the dataset's folder, not its manifest file"):
        load_manifest(str(tmp_path / "manifest.json"))


@pytest.mark.parametrize(
    "bad", ["../outside.parquet", "/etc/passwd", "train/../../x", "s3://other/x", "a\\b", ""]
)
def test_paths_may_not_escape_the_root(tmp_path, bad):
    data = _manifest().to_dict()
    data["splits"]["train"]["videos"][0]["shard"] = bad
    _write(tmp_path, data)
    with pytest.raises(UserError, match="inside the dataset"):
        load_manifest(str(tmp_path))


def test_abnormal_ranges_are_validated(tmp_path):
    data = _manifest().to_dict()
    data["splits"]["test"]["videos"][0]["abnormal"] = [[60, 180]]  # past the last frame
    _write(tmp_path, data)
    with pytest.raises(UserError, match=r"test/01.*\[60, 180\]"):
        load_manifest(str(tmp_path))


def test_s3_round_trip(s3_bucket):
    save_manifest(s3_bucket, _manifest())
    assert load_manifest(s3_bucket) == _manifest()


def test_s3_missing_bucket_is_named(s3_server):
    with pytest.raises(UserError, match="bucket 'no-such-bucket-x' does not exist"):
        load_manifest("s3://no-such-bucket-x/ds")


@pytest.mark.parametrize(("damage", "says"), [
    (lambda raw: raw["shards"][0].update(bytes=None), "malformed manifest (ValueError: expected "
                                                      "a count, got None)"),
    (lambda raw: raw["shards"][1].update(rows="3"), "expected a count, got '3'"),
    (lambda raw: raw["shards"].pop(1), "video train/02 has no shard entry for "
                                       "'train/02.parquet'"),
])
def test_shard_entries_are_typed_and_cover_every_video(tmp_path, damage, says):
    save_manifest(str(tmp_path), _manifest())
    raw = json.loads((tmp_path / "manifest.json").read_text())
    damage(raw)
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match=re.escape(says)):
        load_manifest(str(tmp_path))


def test_content_defaults_to_video_and_is_checked(tmp_path):
    """Manifests written before still images existed have no ``content``: they hold videos."""
    save_manifest(str(tmp_path), _manifest())
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["content"] == "video"
    del raw["content"]
    _write(tmp_path, raw)
    assert load_manifest(str(tmp_path)).content == "video"
    raw["content"] = "images"
    _write(tmp_path, raw)
    assert load_manifest(str(tmp_path)).content == "images"
    raw["content"] = "audio"
    _write(tmp_path, raw)
    with pytest.raises(UserError, match=r"manifest.json: content must be one of video, "
                                        r"images, got 'audio'"):
        load_manifest(str(tmp_path))


@pytest.mark.parametrize(
    ("content", "size", "model", "message"),
    [
        ("images", (28, 28), {}, "holds still images ('prepare images'); train it with "
                                 "model.arch=image or mlp and data.window=1"),
        ("video", (24, 32), {}, "has 24x32 frames; the video model needs multiples of 16"),
        ("images", (32, 32), {"arch": "image"}, "model.arch=image takes 28x28 images; "
                                                "dataset DS stores 32x32"),
        # Not "--size 28 28": video sets take multiples of 16.
        ("video", (32, 32), {"arch": "image"}, "dataset DS stores 32x32 (video frames; use "
                                               "model.arch=video, or 'prepare images --size 28 "
                                               "28')"),
        ("images", (28, 28), {"arch": "mlp", "input_dim": 100},
         "model.input_dim=100 does not fit dataset DS: its 28x28 images are 784 values each"),
    ],
)
def test_model_input_must_fit_the_dataset(content, size, model, message):
    from memae_dist.data.manifest import check_model_input
    from memae_dist.models import ModelConfig

    m = _manifest()
    m.content, m.size = content, size
    with pytest.raises(UserError) as err:
        check_model_input(m, ModelConfig(**model), "DS")
    assert message in str(err.value)


def test_fitting_models_pass():
    from memae_dist.data.manifest import check_model_input
    from memae_dist.models import ModelConfig

    m = _manifest()
    m.size = (32, 48)
    check_model_input(m, ModelConfig(), "DS")
    m.content, m.size = "images", (28, 28)
    check_model_input(m, ModelConfig(arch="image"), "DS")
    check_model_input(m, ModelConfig(arch="mlp", input_dim=784), "DS")
    m.content = "video"  # a per-frame 2D model of video frames is allowed
    check_model_input(m, ModelConfig(arch="image"), "DS")
