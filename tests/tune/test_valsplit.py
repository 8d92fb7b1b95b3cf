"""Carving labelled test videos into a validation split: manifest only, idempotent, guarded."""

import json

import pytest

from memae_dist.config import load_config
from memae_dist.data.manifest import load_manifest
from memae_dist.errors import UserError
from memae_dist.tune.objective import resolve_objective
from memae_dist.tune.space import ObjectiveSpec
from memae_dist.tune.valsplit import carve_val_from_test, parse_selection


def video(split: str, name: str, abnormal):
    return {"name": name, "num_frames": 40, "shard": f"{split}/{name}.parquet",
            "abnormal": abnormal}


def write_dataset(root, test_videos):
    root.mkdir()
    manifest = {
        "format": "memae-dist-frames", "format_version": 1, "name": "toy", "source": "toy",
        "size": [16, 16], "segment_frames": 128, "segment_overlap": 15,
        "splits": {"train": {"videos": [video("train", "01", None)]},
                   "test": {"videos": test_videos}},
        "shards": [{"path": v["shard"], "split": v["shard"].split("/")[0], "video": v["name"],
                    "bytes": 1, "sha256": "0" * 64, "rows": 1}
                   for v in [video("train", "01", None), *test_videos]],
        "skipped": [],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root)


def test_first_k_labelled_test_videos_move_to_val_without_copying(tmp_path):
    data = write_dataset(tmp_path / "d", [video("test", "01", None),
                                          video("test", "02", [[5, 20]]),
                                          video("test", "03", [[0, 9]]),
                                          video("test", "04", [])])
    assert carve_val_from_test(data, parse_selection("1")) == ["02"]
    m = load_manifest(data)
    assert [v.name for v in m.videos("val")] == ["02"]
    assert [v.name for v in m.videos("test")] == ["01", "03", "04"]
    assert m.videos("val")[0].shard == "test/02.parquet"  # same shard, no copy
    assert m.videos("val")[0].abnormal == [[5, 20]]
    # Rerunning the same carve is a no-op; another selection would mix val and test.
    assert carve_val_from_test(data, 1) == ["02"]
    assert [v.name for v in load_manifest(data).videos("test")] == ["01", "03", "04"]
    with pytest.raises(UserError, match="already carved"):
        carve_val_from_test(data, ["03"])
    # The objective picks val_auc on the labelled split and refuses the test split itself.
    cfg = load_config(None, [f"data.path={data}", "data.val_split=val"])
    objective = resolve_objective(ObjectiveSpec(), cfg)
    assert (objective.metric, objective.mode) == ("val_auc", "max")
    leak = load_config(None, [f"data.path={data}", "data.val_split=test"])
    with pytest.raises(UserError, match="leak"):
        resolve_objective(ObjectiveSpec(), leak)
    proxy = resolve_objective(ObjectiveSpec(metric="val_recon"), cfg)
    assert (proxy.metric, proxy.mode, proxy.collapse_penalty) == ("val_recon", "min", 1.0)
    assert proxy.annotate({"val_recon": 0.2, "loss": 0.3, "memory_collapse": True})[
        "objective"] == pytest.approx(0.4)
    fallback = resolve_objective(ObjectiveSpec(), load_config(None, [f"data.path={data}"]))
    assert (fallback.metric, fallback.mode) == ("recon", "min")


def test_bad_selections_are_refused(tmp_path):
    data = write_dataset(tmp_path / "d", [video("test", "01", [[0, 5]]),
                                          video("test", "02", []),
                                          video("test", "03", None)])
    with pytest.raises(UserError, match="at least one must stay"):
        carve_val_from_test(data, 3)
    with pytest.raises(UserError, match="no video '09'"):
        carve_val_from_test(data, ["09"])
    with pytest.raises(UserError, match="both normal and abnormal"):
        carve_val_from_test(data, ["02"])
    with pytest.raises(UserError, match="no labels"):
        carve_val_from_test(data, ["01", "03"])
    # The test split needs both classes too: left with 02 (all normal), it would score no AUC.
    with pytest.raises(UserError, match=r"the labelled 'test' videos left \(02\) need both "
                                        "normal and abnormal frames for the final test AUC"):
        carve_val_from_test(data, ["01"])
    # Carving into the split it comes from, or into one the dataset has: each says what to do.
    with pytest.raises(UserError, match=r"^data.val_split=test with --val-from-test: .* leave "
                                        r"data.val_split unset \(the carved split is then "
                                        r"'val'\)$"):
        carve_val_from_test(data, 1, split="test")
    with_train = write_dataset(tmp_path / "t", [video("train", "01", None),
                                                video("test", "02", [[0, 5]]),
                                                video("test", "03", [[0, 5]])])
    with pytest.raises(UserError, match=r"already has a 'train' split that was not carved from "
                                        "'test': drop --val-from-test to validate on it as it is"):
        carve_val_from_test(with_train, 1, split="train")
    with pytest.raises(UserError, match="count >= 1"):
        parse_selection("0")
    with pytest.raises(UserError, match="--val-from-test 01,02,01: names 01 more than once"):
        parse_selection("01,02,01")
    # Ped2's videos are "01".."12": those are names, as is any number followed by a comma.
    assert parse_selection("06") == ["06"] and parse_selection("6,") == ["6"]
    assert parse_selection("6") == 6 and parse_selection(" 12 ") == 12
    assert "val" not in load_manifest(data).splits  # nothing was written
    few = write_dataset(tmp_path / "few", [video("test", "01", [[0, 5]]),
                                           video("test", "02", None), video("test", "03", None)])
    with pytest.raises(UserError, match="only 1 labelled"):
        carve_val_from_test(few, 2)
