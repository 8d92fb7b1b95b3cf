"""Search-space files: parsing, the lambda = k/N convention, and one-line errors for bad files."""

from pathlib import Path

import pytest
import yaml

from memae_dist.config import ExperimentConfig
from memae_dist.errors import UserError
from memae_dist.tune.space import load_space, parse_space

SPACES = Path(__file__).parents[2] / "tune_spaces"
BASE = ExperimentConfig().to_dict()


def test_shipped_spaces_load_and_derive_lambda_from_k_and_n():
    shipped = sorted(SPACES.glob("*.yaml"))  # every space, a new one included
    assert {p.stem for p in shipped} >= {"memae_video", "memae_image", "smoke"}
    for path in shipped:
        space = load_space(path)
        space.check_against(BASE)
        assert dict(space.derived) == {"model.shrink_threshold": "k / model.num_slots"}
    video = load_space(SPACES / "memae_video.yaml")
    by_name = {p.name: p for p in video.params}
    assert by_name["model.num_slots"].values == (500, 1000, 2000, 3000)
    assert by_name["k"].kind == "uniform" and by_name["k"].values == (1.0, 3.0)
    assert by_name["model.entropy_weight"].values == (1e-5, 1e-2)
    assert by_name["model.entropy_weight"].log_scale
    sample = {"model.num_slots": 2000, "k": 2.5, "model.entropy_weight": 3e-4, "train.lr": 1e-4}
    tree = video.apply(BASE, sample)
    assert tree["model"]["shrink_threshold"] == pytest.approx(2.5 / 2000)
    assert tree["model"]["num_slots"] == 2000 and tree["train"]["lr"] == 1e-4
    assert "k" not in tree  # a free variable, not a config key
    assert BASE["model"]["num_slots"] == 2000 and BASE["train"]["lr"] == 1e-4  # base untouched
    smoke = load_space(SPACES / "smoke.yaml")
    assert smoke.grid_size == 2 and smoke.samples == 2


def test_tune_domains_match_the_file():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = parse_space({
        "params": {"model.num_slots": {"int": [10, 20]}, "train.lr": {"loguniform": ["1e-4", 1e-2]},
                   "model.addressing": {"choice": ["dot", "cosine"]},
                   "train.batch_size": {"grid": [8, 16]}},
    }, "inline.yaml")
    domains = space.tune_space()
    assert isinstance(domains["model.num_slots"], Integer)
    assert domains["model.num_slots"].upper == 21  # inclusive in the file, exclusive in Tune
    assert isinstance(domains["train.lr"], Float) and domains["train.lr"].lower == 1e-4
    assert isinstance(domains["model.addressing"], Categorical)
    assert domains["train.batch_size"] == {"grid_search": [8, 16]}
    assert space.grid_size == 2


def test_conditional_expressions():
    space = parse_space({
        "params": {"model.variant": {"choice": ["memae", "ae"]}, "k": {"uniform": [1, 3]}},
        "derived": {"model.shrink_threshold": "k / model.num_slots if model.variant == 'memae' "
                                              "else 0.0",
                    "model.entropy_weight": "max(1e-4, model.shrink_threshold)"},
    }, "cond.yaml")
    a = space.assignments({"model.variant": "memae", "k": 2.0}, BASE)
    assert a["model.shrink_threshold"] == pytest.approx(2.0 / BASE["model"]["num_slots"])
    assert a["model.entropy_weight"] == pytest.approx(max(1e-4, 2.0 / 2000))
    b = space.assignments({"model.variant": "ae", "k": 2.0}, BASE)
    assert b["model.shrink_threshold"] == 0.0 and b["model.entropy_weight"] == 1e-4


def good() -> dict:
    return yaml.safe_load((SPACES / "memae_video.yaml").read_text())


def refuse(tmp_path, data, *fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_bad_space_files_are_refused_with_one_line_naming_the_key(tmp_path):
    data = good()
    data["params"]["k"] = {"normal": [2, 0.5]}
    refuse(tmp_path, data, "params.k", "unknown distribution 'normal'")

    data = good()
    data["params"]["k"]["uniform"] = [0.5, 3]
    refuse(tmp_path, data, "params.k", "outside its bounds [1, 3]")

    data = good()
    data["params"]["model.num_slots"] = {"choice": [500, 1000], "bounds": [600, 4000]}
    refuse(tmp_path, data, "params.model.num_slots", "value 500 is outside its bounds")

    data = good()
    del data["params"]
    refuse(tmp_path, data, "missing key 'params'")

    data = good()
    data["params"]["k"] = {"bounds": [1, 3]}
    refuse(tmp_path, data, "params.k", "missing key", "no distribution")

    data = good()
    data["params"]["model.num_slot"] = data["params"].pop("model.num_slots")
    refuse(tmp_path, data, "params.model.num_slot", "unknown config key 'model.num_slot'")

    data = good()
    data["derived"]["model.shrink_threshold"] = "kk / model.num_slots"
    refuse(tmp_path, data, "derived.model.shrink_threshold", "unknown name 'kk'")

    data = good()
    data["derived"]["model.shrink_threshold"] = "__import__('os').system('true')"
    refuse(tmp_path, data, "derived.model.shrink_threshold", "only numbers")

    data = good()
    data["derived"] = {}
    refuse(tmp_path, data, "params.k", "no derived expression uses it")

    data = good()
    data["objective"]["metric"] = "test_auc"
    refuse(tmp_path, data, "objective.metric")

    data = good()
    data["params"]["data.path"] = {"choice": ["a", "b"]}
    refuse(tmp_path, data, "params.data.path", "set by the sweep")

    # Trials compare on one validation split and one epoch budget: a swept split could be the
    # test split, a swept budget is cut short by ASHA's rungs.
    for key, values in (("data.val_split", ["val", "test"]), ("eval.split", ["val", "test"]),
                        ("train.epochs", [3, 6])):
        data = good()
        data["params"][key] = {"choice": values}
        refuse(tmp_path, data, f"params.{key}", "cannot be swept: every trial must share it",
               f"--set {key}=")
    data = good()
    data["params"]["train.checkpoint_metric"] = {"choice": ["loss", "val_recon"]}
    refuse(tmp_path, data, "params.train.checkpoint_metric", "set by the sweep")

    data = good()
    data["sampels"] = 3
    refuse(tmp_path, data, "unknown key 'sampels'")

    data = good()
    data["params"]["model.entropy_weight"] = {"loguniform": [0, 1e-2]}
    refuse(tmp_path, data, "params.model.entropy_weight", "0 < low < high")

    refuse(tmp_path, [data], "the top level of a tune space file must be a mapping, got list")
    with pytest.raises(UserError, match="tune space file not found: .*none.yaml"):
        load_space(tmp_path / "none.yaml")


def test_a_space_reaching_an_invalid_config_is_refused_before_any_trial():
    space = parse_space({"params": {"k": {"uniform": [1, 3]},
                                    "model.num_slots": {"choice": [2, 2000]}},
                         "derived": {"model.shrink_threshold": "k / model.num_slots"}}, "s.yaml")
    with pytest.raises(UserError, match=r"s.yaml: .*model.shrink_threshold must be < 1"):
        space.check_against(BASE)


def test_every_corner_is_checked_however_many_there_are():
    # The bad value last in a long list: the check once stopped after 512 combinations.
    space = parse_space({"params": {"model.num_slots": {"choice": [*range(1, 600), 0]}}},
                        "many.yaml")
    with pytest.raises(UserError, match=r"many.yaml: .*model.num_slots must be >= 1, got 0"):
        space.check_against(BASE)
    # Past 4,096 combinations each corner is still built once, cycled against the others.
    eight = [1, 2, 3, 4, 5, 6, 7, 8]
    params = {"train.lr": {"choice": [v * 1e-4 for v in eight]},
              "model.entropy_weight": {"choice": [v * 1e-4 for v in eight]},
              "model.shrink_threshold": {"choice": [v * 1e-3 for v in eight]},
              "data.stride": {"choice": eight}}
    params["model.num_slots"] = {"choice": [*range(1, 20), 0]}
    with pytest.raises(UserError, match=r"model.num_slots must be >= 1, got 0"):
        parse_space({"params": params}, "wide.yaml").check_against(BASE)


def test_cli_refuses_a_bad_space_file_with_one_line(tmp_path, capsys):
    from memae_dist.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  k: {gaussian: [0, 1]}\n")
    assert main(["tune", "--space", str(bad), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"memae-dist: error: {bad}: params.k: unknown "
                                                "distribution 'gaussian'")
    assert main(["tune", "--space", "no_such_space", "--data", str(tmp_path)]) == 2
    assert ("search space not found: no_such_space (a YAML file, or a shipped name: "
            "memae_image, memae_video, smoke)") in capsys.readouterr().err


def test_a_bad_space_fails_before_val_from_test_writes_into_the_dataset(tmp_path, capsys):
    from memae_dist.cli import main
    from memae_dist.data.importers.synthetic import SyntheticConfig, generate_synthetic

    data = str(tmp_path / "data")
    generate_synthetic(data, SyntheticConfig(seed=1, size=(16, 16), train_videos=1,
                                             test_videos=2, frames_per_video=40),
                       workers=1, progress=False)
    manifest = (tmp_path / "data" / "manifest.json").read_bytes()
    bad = tmp_path / "bad.yaml"  # lambda = 3/2 for N = 2: no trial could start
    bad.write_text("params:\n  k: {uniform: [1, 3]}\n  model.num_slots: {choice: [2, 2000]}\n"
                   "derived:\n  model.shrink_threshold: k / model.num_slots\n")
    assert main(["tune", "--space", str(bad), "--data", data, "--val-from-test", "1",
                 "--storage", str(tmp_path / "sweeps")]) == 2
    assert "model.shrink_threshold must be < 1" in capsys.readouterr().err
    assert (tmp_path / "data" / "manifest.json").read_bytes() == manifest
    assert not (tmp_path / "sweeps").exists()


def test_numbers_in_a_space_file_must_be_finite(tmp_path):
    # YAML reads `inf` and `nan` (no dot) as text, `.inf` and `.nan` as floats: both refused.
    for bad in ("inf", float("inf"), "-inf", "nan"):
        data = good()
        data["params"]["k"] = {"uniform": [1, bad]}
        refuse(tmp_path, data, "params.k.uniform", "expected a finite number")
    data = good()
    data["params"]["k"] = {"uniform": [1, 3], "bounds": ["-inf", "inf"]}
    refuse(tmp_path, data, "params.k.bounds", "expected a finite number")
    for bad in ("nan", float("nan"), "inf"):
        data = good()
        data["params"]["model.entropy_weight"] = {"choice": [1e-4, bad]}
        refuse(tmp_path, data, "params.model.entropy_weight.choice", "finite numbers")
    for bad in ("nan", float("nan"), "inf", -1):
        data = good()
        data["objective"]["collapse_penalty"] = bad
        refuse(tmp_path, data, "objective.collapse_penalty")


def test_derived_values_too_large_or_not_finite_fail_at_once_naming_the_expression():
    import time

    for expr, reason in (("10 ** 10 ** 10 * k", "too large"),
                         ("(k * 2 ** 900) ** 2", "too large"),
                         ("0.5 ** -2000 * k", "too large"),
                         ("k * 1e308 * 10", "not a finite number"),
                         ("k + float('nan')", "not a finite number"),
                         ("k * exp(1000)", "range"),
                         ("(-k) ** 0.5", "not a real number"),
                         ("'x' * 10 ** 9 if k else 0", "text can only be joined with +")):
        space = parse_space({"params": {"k": {"uniform": [1, 3]}},
                             "derived": {"model.shrink_threshold": expr}}, "big.yaml")
        start = time.monotonic()
        with pytest.raises(UserError) as info:
            space.check_against(BASE)
        assert time.monotonic() - start < 5, expr
        message = str(info.value)
        assert "\n" not in message and f"derived.model.shrink_threshold = {expr!r}" in message
        assert reason in message, message
    # Powers of a sane size still evaluate.
    space = parse_space({"params": {"k": {"uniform": [1, 3]}},
                         "derived": {"model.shrink_threshold": "k ** 2 / 2 ** 10",
                                     "model.entropy_weight": "2 ** -5000 + 10 ** -4"}}, "s.yaml")
    out = space.assignments({"k": 2.0}, BASE)
    assert out["model.shrink_threshold"] == 4 / 1024 and out["model.entropy_weight"] == 1e-4
