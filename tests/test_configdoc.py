"""``memae-dist config``: every setting with what it means, as a recipe that loads back."""

import dataclasses
from pathlib import Path

import pytest

from memae_dist.cli import main
from memae_dist.config import ExperimentConfig, load_config
from memae_dist.configdoc import field_comments, render, yaml_value

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_setting_has_its_meaning_written_above_it():
    for section in dataclasses.fields(ExperimentConfig):
        cls = section.default_factory
        comments = field_comments(cls)
        undocumented = [f.name for f in dataclasses.fields(cls) if not comments.get(f.name)]
        assert undocumented == [], f"{section.name}: document {undocumented} in {cls.__name__}"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_each_shipped_recipe_prints_as_a_recipe_that_loads_back(path, tmp_path, capsys):
    out = tmp_path / "recipe.yaml"
    assert main(["config", "--config", path.stem, "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"config: {out}\n"
    assert load_config(out).to_dict() == load_config(path).to_dict()
    assert main(["config", "--config", path.stem]) == 0
    assert capsys.readouterr().out == out.read_text()  # the same text, printed


def test_flags_and_overrides_are_applied_and_named(tmp_path, capsys):
    assert main(["config", "--config", "ped2_lite", "--epochs", "3", "--name", "2024",
                 "--set", "train.lr=1e-3", "--set", "model.mlp_hidden=[32, 8]"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# memae-dist experiment config: ped2_lite, with --epochs 3 "
                           "--name 2024 --set train.lr=1e-3 --set model.mlp_hidden=[32, 8]\n")
    assert "  # Adam learning rate (the paper: 1e-4).\n  lr: 0.001\n" in text
    (tmp_path / "r.yaml").write_text(text)
    cfg = load_config(tmp_path / "r.yaml")
    assert (cfg.train.epochs, cfg.run.name, cfg.model.mlp_hidden) == (3, "2024", (32, 8))
    # Characters past the 16-bit range (JSON writes them as surrogate pairs) arrive whole.
    assert main(["config", "--config", "demo", "--data", "/d/ped2😀",
                 "--out", str(tmp_path / "e.yaml")]) == 0
    cfg = load_config(tmp_path / "e.yaml")
    assert cfg.data.path == "/d/ped2😀"
    capsys.readouterr()
    # The built-in defaults, when no recipe is named.
    assert main(["config"]) == 0
    assert "built-in defaults" in capsys.readouterr().out.splitlines()[0]


def test_values_keep_their_type_in_yaml():
    assert [yaml_value(v) for v in (1e-4, "2024", "", None, True, (256, 64), "PACK")] == [
        "0.0001", "'2024'", "''", "null", "true", "[256, 64]", "PACK"]
    text = render(ExperimentConfig(), ["head"])
    assert text.startswith("# head\n\nmodel:\n") and text.endswith("lock_ttl_s: 120.0\n")


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["config", "--config", "demo", "--set", "train.lr=fast"]) == 2
    assert capsys.readouterr().err == ("memae-dist: error: --set train.lr=fast: train.lr must "
                                       "be a number, got 'fast'\n")
    assert main(["config", "--config", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["config", "--config", "demo", "--out", "s3://bucket/r.yaml"]) == 2
    assert "a recipe is a local file" in capsys.readouterr().err
    assert main(["config", "--config", "demo", "--out", str(tmp_path)]) == 2
    assert "is a folder; give the file's name" in capsys.readouterr().err
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  epochs: 2\n")
    assert main(["config", "--config", str(mine), "--out", str(mine)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert mine.read_text() == "train:\n  epochs: 2\n" and sorted(tmp_path.iterdir()) == [mine]
    # Credentials in a URI or an endpoint are refused unseen, never written into a recipe.
    for flags in (["--storage", "s3://KEY:HUN/TER2@bucket/runs"],
                  ["--data", "s3://KEY:HUNTER2@bucket/data"],
                  ["--set", "storage.endpoint_url=http://KEY:HUN TER2@host:9000"]):
        out = tmp_path / "leak.yaml"
        assert main(["config", "--config", "demo", *flags, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "credentials" in err and "TER2" not in err and not out.exists()
    # A folder that cannot be written (here: not a folder at all): one line, not a traceback.
    assert main(["config", "--config", "demo", "--out", "/proc/no-such-recipe.yaml"]) == 2
    assert capsys.readouterr().err == ("memae-dist: error: --out /proc/no-such-recipe.yaml: "
                                       "cannot write there: no such file or directory\n")
