"""The config tree: YAML + overrides -> validated dataclasses; errors name the dotted key."""

from pathlib import Path

import pytest

from memae_dist.config import ExperimentConfig, dump_yaml, load_config, read_yaml
from memae_dist.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    # Round trip: what we would write back loads to the same tree.
    again = load_config(None, base=read_yaml_text(dump_yaml(cfg), path.parent))
    assert again.to_dict() == cfg.to_dict()


def read_yaml_text(text: str, tmp: Path) -> dict:
    import yaml

    return yaml.safe_load(text)


def test_ped2_is_the_official_recipe():
    cfg = load_config(CONFIGS / "ped2.yaml")
    assert (cfg.model.num_slots, cfg.model.shrink_threshold, cfg.model.entropy_weight) == (
        2000, 0.0025, 0.0002)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.lr) == (14, 100, 1e-4)
    assert (cfg.data.window, cfg.data.stride) == (16, 1)
    assert cfg.model.addressing == "dot"
    assert cfg.eval.error == "mae"  # the official MemAE test code's error for grey frames


def test_ped2_lite_keeps_the_shrinkage_threshold_in_the_papers_range():
    """lambda 5/N collapsed the memory at 64x64 (bench/RESULTS.md); the paper advises 1/N..3/N."""
    cfg = load_config(CONFIGS / "ped2_lite.yaml")
    n = cfg.model.num_slots
    assert 1 / n <= cfg.model.shrink_threshold <= 3 / n
    assert (cfg.model.entropy_weight, cfg.eval.error) == (0.0002, "mae")


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["model.num_slots=500", "train.lr=1e-3", "train.deterministic=true",
                             "data.path=s3://bucket/ped2"])
    assert cfg.model.num_slots == 500
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.deterministic is True
    assert cfg.data.path == "s3://bucket/ped2"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.num_slot=5", "unknown config key 'model.num_slot'"),
        ("trian.epochs=5", "unknown config key 'trian'"),
        ("model.num_slots=0", "model.num_slots"),
        ("model.shrink_threshold=-0.1", "model.shrink_threshold"),
        ("train.epochs=ten", "train.epochs must be an integer"),
        ("train.lr=fast", "train.lr must be a number"),
        ("data.window=0", "data.window"),
        ("train.seed=-1", "train.seed must be from 0 to 9223372036854775807, got -1"),
        (f"train.seed={2**64}", "train.seed must be from 0 to 9223372036854775807"),
        ("train.weight_decay=-1", "train.weight_decay must be >= 0, got -1.0"),
        (f"train.lr={10**400}", "train.lr must be a finite number"),
        (f"model.num_slots={10**13}", "model.num_slots must be <= 1,000,000"),
        (f"train.precise_bn_batches={10**30}", "train.precise_bn_batches must be <= 100000"),
        # The video net halves time three times: a 12-frame clip would come back 16 long.
        ("data.window=12", "multiple of 8 frames (the paper: 16): data.window=12"),
        ("train.batch_size=15", "train.batch_size (15) must be divisible"),
        ("eval.error=huber", "eval.error"),
        ("train.precision=fp8", "train.precision"),
        # The name is one folder under run.storage: '..' would put the run beside it.
        ("run.name=..", "run.name must be one folder name"),
        ("run.name=a/b", "run.name must be one folder name"),
        # Ray Train tags its metrics with the name and fails on a non-ASCII one, after start-up.
        ("run.name=my run é", "run.name must be ASCII (Ray tags its metrics with it), got "
                              "'my run é'"),
        ("run.lock_ttl_s=0.5", "run.lock_ttl_s must be 0 (no lock) or 1..86400 seconds"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="bad.yaml"):
        read_yaml(bad)
    with pytest.raises(UserError, match="config file not found"):
        read_yaml(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match=r"binary.yaml: not a YAML text file"):
        read_yaml(binary)
    with pytest.raises(UserError, match=r"--set train.epochs: value '\[1,' is not valid YAML"):
        load_config(None, ["train.epochs=[1,"])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  slots: 3\n")
    with pytest.raises(UserError, match=r"unknown.yaml: unknown config key 'model.slots'"):
        load_config(unknown)
    # YAML itself keeps the last of two equal keys: the first would be ignored unsaid.
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 3\n  lr: 1.0e-3\n  epochs: 4\n")
    with pytest.raises(UserError, match=r"twice.yaml line 4: invalid YAML \(key 'epochs' "
                                        r"given twice\)"):
        read_yaml(twice)
    merged = tmp_path / "merged.yaml"
    merged.write_text("a: &x {b: 1}\nc:\n  <<: *x\n  b: 3\n  d: 2\n")
    assert read_yaml(merged) == {"a": {"b": 1}, "c": {"b": 3, "d": 2}}  # merge keys still work


def test_errors_name_the_override_that_set_the_bad_value(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  epochs: 0\n")
    with pytest.raises(UserError, match=r"^--set model.num_slots=0: model.num_slots must be"):
        load_config(recipe, ["train.epochs=2", "model.num_slots=0"])
    # An unknown section on the override's path names the override too.
    with pytest.raises(UserError, match=r"^--set trian.epochs=5: unknown config key 'trian'"):
        load_config(recipe, ["trian.epochs=5"])
    with pytest.raises(UserError, match=r"^--set model.memory.slots=9: unknown config key "
                                        r"'model.memory'"):
        load_config(None, ["model.num_slots=50", "model.memory.slots=9"])
    with pytest.raises(UserError, match=r"^--epochs 0: train.epochs must be >= 1"):
        load_config(None, ["train.epochs=0"], labels=["--epochs 0"])
    # The file's own bad value still names the file.
    with pytest.raises(UserError, match=r"recipe.yaml: train.epochs must be >= 1") as err:
        load_config(recipe, ["model.num_slots=50"])
    assert "--set" not in str(err.value)


def test_global_batch_is_split_over_workers_and_accumulation():
    cfg = load_config(None, ["train.batch_size=16", "train.workers=2", "train.grad_accum=2"])
    assert cfg.train.micro_batch_size == 4
    debug = load_config(None, ["train.batch_size=16", "train.workers=0"])
    assert debug.train.micro_batch_size == 16


def test_image_nets_take_one_frame_per_sample():
    with pytest.raises(UserError, match=r"model.arch=image reconstructs one image at a time: "
                                        r"set data.window=1 \(got 16\)"):
        load_config(None, ["model.arch=image"])
    cfg = load_config(None, ["model.arch=mlp", "data.window=1"])
    assert (cfg.model.arch, cfg.data.window) == ("mlp", 1)


def test_mnist_is_the_papers_image_recipe():
    """N = 100 as in the paper, lambda inside 1/N..3/N, one query per image (bench/RESULTS.md)."""
    cfg = load_config(CONFIGS / "mnist.yaml")
    assert (cfg.model.arch, cfg.model.num_slots, cfg.model.memory_query) == (
        "image", 100, "flatten")
    assert 1 / 100 <= cfg.model.shrink_threshold <= 3 / 100
    assert (cfg.data.window, cfg.model.entropy_weight) == (1, 0.0002)


def test_a_folder_named_like_a_shipped_recipe_does_not_hide_it(tmp_path, monkeypatch):
    """Data folders are naturally called `ped2` or `mnist`; `--config ped2` still means the
    recipe, and a file of that name (the user's own) still wins."""
    from memae_dist.commands.common import resolve_config_path, resolve_yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ped2").mkdir()
    (tmp_path / "smoke").mkdir()
    assert resolve_config_path("ped2") == CONFIGS / "ped2.yaml"
    assert resolve_yaml("smoke", "memae_dist.tune_spaces", "search space").name == "smoke.yaml"
    (tmp_path / "mnist").write_text("train:\n  epochs: 2\n")
    assert resolve_config_path("mnist") == Path("mnist")
