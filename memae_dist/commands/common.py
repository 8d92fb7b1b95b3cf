"""Small helpers shared by CLI verbs."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from memae_dist import layout
from memae_dist.errors import UserError

# Larger than any camera's frame: a typo (an extra digit) is refused before it asks for
# hundreds of GiB.
MAX_SIDE = 4096


def frame_size(values: list[int] | None, multiple: int = 16) -> tuple[int, int] | None:
    """``--size H W``: the video nets halve a frame four times, hence multiples of 16."""
    if values is None:
        return None
    h, w = values
    if min(h, w) < multiple or max(h, w) > MAX_SIDE or h % multiple or w % multiple:
        what = f"multiples of {multiple} " if multiple > 1 else "numbers "
        raise UserError(f"--size must be two {what}from {multiple} to {MAX_SIDE}, got {h} {w}")
    return h, w


def int_at_least(low: int):
    """argparse type: an int >= ``low``, refused as a usage error naming the flag."""
    def parse(text: str) -> int:
        value = int(text)  # a ValueError becomes argparse's "invalid int value"
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def float_at_least(low: float, above: bool = False):
    """argparse type: a finite float >= ``low`` (> ``low`` with ``above``); nan and inf are
    refused as usage errors naming the flag instead of failing deep inside Ray."""
    def parse(text: str) -> float:
        value = float(text)  # a ValueError becomes argparse's "invalid float value"
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>' if above else '>='} {low:g}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


# Names that promise a file: given as an output folder, they are a mistaken file name.
FILE_SUFFIXES = (".json", ".csv", ".png", ".parquet", ".pq", ".html", ".txt", ".yaml", ".yml")


def local_folder(value: str, flag: str = "--out") -> Path:
    """An output folder on this machine, checked before any work: not a URI, not a file."""
    if not value.strip():  # Path("") is the working folder: never what was meant
        raise UserError(f"{flag} is empty; give a folder's name")
    if "://" in value:
        raise UserError(f"{flag} {value}: must be a local folder (this command writes its "
                        "figures and tables on this machine)")
    from memae_dist.data.storage import local_path

    local_path(value)  # a mistyped "s3:/..." is refused, not made a folder named "s3:"
    path = Path(value).expanduser()  # as every other path is: the shell leaves "--out=~/x"
    try:
        exists = path.exists()  # a name too long for the filesystem raises here
    except OSError as exc:
        raise UserError(f"{flag} {value}: cannot write there: {exc.strerror}") from None
    if exists and not path.is_dir():
        raise UserError(f"{flag} {value}: exists and is not a folder")
    if not exists and path.suffix.lower() in FILE_SUFFIXES:
        raise UserError(f"{flag} {value}: names a file; give a folder (this command writes "
                        "several files into it)")
    _no_file_in_the_way(path, value, flag)
    check_writable(path, value, flag)
    return path


def check_writable(folder: Path, value: str, flag: str) -> None:
    """Refuse, before hours of scoring, a ``folder`` that cannot take files (permissions, a
    read-only or virtual filesystem). It is made and tried, then what this made is removed."""
    import tempfile

    from memae_dist.data.storage import first_missing_folder, remove_empty_folders

    folder = folder.absolute()
    made = first_missing_folder(str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".memae-write-check-"):
            pass
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise UserError(f"{flag} {value}: cannot write there: {reason}") from None
    finally:
        if made:
            remove_empty_folders(str(folder), made)


def file_target(value: str, example: str, flag: str = "--out", storage=None,
                inputs: tuple[str | None, ...] = (),
                keep: tuple[tuple[str | None, str], ...] = ()) -> None:
    """Refuse, before any work, an output file that could only fail once written: no name, one
    of the ``inputs`` (read, then overwritten), a file of one of the ``keep`` folders ((URI,
    "the checkpoint" or "the dataset"): ``OWN_FILES``), a folder by that name, a file where
    one of its folders must go, a device or pipe, an unsupported scheme, or an S3 bucket that is
    missing or refuses us."""
    from memae_dist.data import storage as st
    from memae_dist.data.atomic import writable_path

    if not value.strip():
        raise UserError(f"{flag} is empty; give a file's name (e.g. {example})")
    for name in inputs:
        if name and st.same_file(value, name):
            raise UserError(f"{flag} {value}: is the input file; give another name")
    for folder, what in keep:
        if folder and _overwrites_a_file_in(value, folder, what, storage):
            raise UserError(f"{flag} {value}: would overwrite a file of {what} {folder}; "
                            "give another name")
    if value.endswith(("/", os.sep)):  # a folder, existing or not, whatever the scheme
        raise UserError(f"{flag} {value}: names a folder; give the file's name "
                        f"(e.g. {value}{example})")
    if not st.is_remote(value):  # also refuses an unsupported scheme, naming it
        path = Path(st.local_path(value))
        if path.is_dir():
            shown = path if "://" in value else Path(value)  # as the user wrote it
            raise UserError(f"{flag} {value}: is a folder; give the file's name "
                            f"(e.g. {shown / example})")
        _no_file_in_the_way(path, value, flag)
        writable_path(path)
        check_writable(path.parent, value, flag)
        return
    st.check_bucket(value, storage)
    if st.is_folder(value, storage):
        raise UserError(f"{flag} {value}: is a folder; give the file's name "
                        f"(e.g. {value}/{example})")


# What a checkpoint or run folder, and a dataset, hold at their top level (all of what lies in
# their subfolders is theirs too): an output file there would destroy them. Other files beside
# them (an earlier scores file, an exported model) are the user's to replace.
OWN_FILES = {"the checkpoint": layout.RUN_FILES, "the dataset": layout.DATASET_FILES}


def _overwrites_a_file_in(value: str, folder: str, what: str, storage=None) -> bool:
    """Whether ``value`` names an existing file of the checkpoint, run or dataset ``folder``
    (or of the folder of ``folder``, when that names a file such as a checkpoint's state.pt)."""
    from memae_dist.data import storage as st

    if st.is_remote(value) != st.is_remote(folder):
        return False
    if not st.is_remote(value):
        out = Path(st.local_path(value)).resolve()
        root = Path(st.local_path(folder)).resolve()
        root = root.parent if root.is_file() else root
        if not (out.is_file() and out.is_relative_to(root)):
            return False
        rel = out.relative_to(root).parts
    else:
        key = value.split("://", 1)[1].strip("/")
        root = folder.split("://", 1)[1].strip("/")
        root = root.rsplit("/", 1)[0] if root.endswith(".pt") else root
        if not (key.startswith(root + "/") and st.is_file(value, storage)):
            return False
        rel = tuple(key[len(root) + 1:].split("/"))
    return len(rel) > 1 or rel[0] in OWN_FILES[what]


def _no_file_in_the_way(path: Path, value: str, flag: str) -> None:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {value}: {parent} is a file, not a folder")
            return


def shipped_folder(package: str):
    """Where the YAMLs shipped as ``package`` (``memae_dist.configs``) are.

    Installed, they are that package. A job's uploaded working directory is a checkout whose
    ``memae_dist/`` comes first on the path and hides the installed package; its YAMLs are
    the checkout's top-level folder of the same name (``configs/``)."""
    from importlib.resources import files

    try:
        return files(package)
    except ModuleNotFoundError:
        import memae_dist

        return Path(memae_dist.__file__).resolve().parents[1] / package.rsplit(".", 1)[1]


def resolve_yaml(name: str, package: str, what: str) -> Path:
    """A YAML path, or the name of one shipped in ``package`` (installed with memae-dist)."""
    path = Path(name)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    folder = shipped_folder(package)
    shipped = folder / f"{name}.yaml"
    # A data folder named like a recipe (`ped2`, `mnist`) must not hide the recipe.
    if shipped.is_file():
        return Path(str(shipped))
    if path.exists():  # a pipe or a folder: its reader says what is wrong with it
        return path
    names = sorted(e.name[:-5] for e in folder.iterdir() if e.name.endswith(".yaml"))
    raise UserError(f"{what} not found: {name} (a YAML file, or a shipped name: "
                    f"{', '.join(names)})")


def resolve_config_path(name: str | None) -> Path | None:
    """A YAML path, or a shipped recipe's name (``demo``, ``ped2``, ``ped2_lite``, ``mnist``)."""
    return None if name is None else resolve_yaml(name, "memae_dist.configs", "config")


def add_experiment_flags(p: argparse.ArgumentParser, address: bool = True) -> None:
    """``train``'s flags: recipe, data, scale, storage, (Ray address,) overrides."""
    p.add_argument("--config", help="YAML recipe or shipped name (demo, ped2, ped2_lite, mnist)")
    p.add_argument("--data", help="prepared dataset URI (data.path)")
    p.add_argument("--epochs", type=int, help="epochs in all, a resumed run's included "
                                              "(train.epochs; default: the recipe's)")
    p.add_argument("--workers", type=int, help="Ray Train workers (train.workers); 0 = "
                                               "in-process debug mode")
    add_worker_resource_flags(p)
    p.add_argument("--storage", help="run storage URI (default: run.storage)")
    p.add_argument("--name", help="run name; rerun with the same name to resume")
    if address:
        p.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    add_set_flag(p)


def add_worker_resource_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpus-per-worker", type=float_at_least(0, above=True),
                   help="CPUs each worker reserves, fractions allowed (train.cpus_per_worker; "
                        "default: the recipe's)")
    p.add_argument("--gpus-per-worker", type=float_at_least(0),
                   help="GPUs each worker reserves (train.gpus_per_worker; default: the "
                        "recipe's)")


def add_set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting; repeatable ('memae-dist config' lists every key)")


# The flags of add_experiment_flags that set a config key.
EXPERIMENT_FLAGS = (("data", "data.path"), ("epochs", "train.epochs"),
                    ("workers", "train.workers"), ("storage", "run.storage"),
                    ("name", "run.name"), ("cpus_per_worker", "train.cpus_per_worker"),
                    ("gpus_per_worker", "train.gpus_per_worker"))


def given_flags(args: argparse.Namespace) -> dict[str, str]:
    """``{config key: the flag as typed}`` for each experiment flag given."""
    return {key: f"--{flag.replace('_', '-')} {getattr(args, flag)}"
            for flag, key in EXPERIMENT_FLAGS if getattr(args, flag, None) is not None}


def quoted(text: str) -> str:
    """A flag's text as a YAML string: quoted, so YAML keeps it a string (--name 2024, --name
    yes); not ASCII-escaped, as YAML reads JSON's surrogate pairs (an emoji) as two broken
    characters."""
    return json.dumps(text, ensure_ascii=False)


def experiment_config(args: argparse.Namespace):
    """The validated config from ``--config`` plus the flags above and ``--set`` overrides."""
    from memae_dist.config import load_config

    overrides, given = [], given_flags(args)
    for flag, key in EXPERIMENT_FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={quoted(value) if isinstance(value, str) else value}")
    labels = list(given.values())
    refuse_twice(given, args.set)
    overrides += args.set or []
    return load_config(resolve_config_path(args.config), overrides, labels=labels)


def refuse_twice(given: dict[str, str], sets: list[str] | None) -> None:
    """A setting given by its flag and by ``--set`` too: one of the two would be ignored."""
    for item in sets or []:
        key = item.split("=", 1)[0].strip()
        if key in given:
            raise UserError(f"{given[key]} and --set {item} both set {key}; give it once")


def print_metrics(metrics: dict) -> None:
    keys = ("auc_paper", "auc_micro", "auc_per_video_mean", "average_precision", "eer",
            "n_frames_scored", "n_abnormal")
    width = max(len(k) for k in keys)
    for key in keys:
        value = metrics.get(key)
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {text}")


def add_storage_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML recipe whose storage: section (S3 endpoint, region) "
                                    "to use; default: the AWS_* environment")


def storage_config(args: argparse.Namespace):
    """The ``storage:`` section of ``--config`` (None: the AWS_* environment)."""
    if not getattr(args, "config", None):
        return None
    from memae_dist.config import load_config

    return load_config(resolve_config_path(args.config), []).storage
