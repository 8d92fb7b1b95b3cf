"""The experiment configuration: one typed tree, loaded from YAML, overridden from the CLI.

Each component owns its config (``ModelConfig`` in ``models/``, ``DataConfig`` in ``data/``,
``TrainConfig`` in ``train/``...) and validates itself in ``__post_init__``. This module only
composes them, turns YAML into dataclasses (refusing unknown keys and wrong types with the key's
full dotted name) and applies ``--set key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memae_dist.data.config import DataConfig
from memae_dist.data.lock import DEFAULT_LOCK_TTL_S
from memae_dist.data.redact import redact_url
from memae_dist.data.storage import StorageConfig
from memae_dist.errors import UserError
from memae_dist.evaluate.config import EvalConfig
from memae_dist.models.config import ModelConfig
from memae_dist.train.config import TrainConfig


def check_folder_name(name: str, what: str) -> None:
    """A run or sweep name becomes one folder under the storage: '..' would escape it."""
    if (not name or name in (".", "..") or name != name.strip()
            or any(c in "/\\" or not c.isprintable() for c in name)):
        raise UserError(f"{what} must be one folder name (not '.' or '..', no '/', '\\', "
                        f"control characters or surrounding spaces), got {name!r}")
    if not name.isascii():  # Ray Train tags its metrics with the name, in ASCII only
        raise UserError(f"{what} must be ASCII (Ray tags its metrics with it), got {name!r}")


@dataclass
class RunConfig:
    # Stable run name (one ASCII folder name); rerunning with the same name and storage resumes
    # from the last checkpoint.
    name: str = "memae"
    # Where checkpoints and history go: a local folder, file:// or s3://bucket/prefix.
    storage: str = "runs"
    # Seconds without a heartbeat after which the lock a training process holds on its run
    # (RUN/run.lock, refreshed every lock_ttl_s / 4) counts as stale and may be taken over.
    # 0 turns the lock off: then nothing stops two processes from training one run.
    lock_ttl_s: float = DEFAULT_LOCK_TTL_S

    def __post_init__(self) -> None:
        check_folder_name(self.name, "run.name")
        if not self.storage:
            raise UserError("run.storage must be a local path or URI, got an empty string")
        if not (self.lock_ttl_s == 0 or 1 <= self.lock_ttl_s <= 86400):
            raise UserError("run.lock_ttl_s must be 0 (no lock) or 1..86400 seconds, got "
                            f"{self.lock_ttl_s}")


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.model.arch != "video" and self.data.window != 1:
            raise UserError(f"model.arch={self.model.arch} reconstructs one image at a time: "
                            f"set data.window=1 (got {self.data.window})")
        if self.model.arch == "video" and self.data.window % 8:
            # The encoder halves time three times and the decoder doubles it back: any other
            # length comes back a different length and the loss cannot compare the two.
            raise UserError(f"model.arch=video takes windows of a multiple of 8 frames "
                            f"(the paper: 16): data.window={self.data.window}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past the largest float
        return False


def to_plain(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists: what YAML/JSON and Ray's config passing want."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; it is meant as a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key} must be a number, got {value!r}")
        if not _finite(value):  # every float setting here is a size, rate or time
            raise UserError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{key} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, naming the dotted key of any bad entry."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise UserError(
            f"unknown config key '{where}{unknown[0]}' (valid keys: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` to a plain dict tree; the value is parsed as YAML (1e-4, true, [1])."""
    if "=" not in assignment:
        raise UserError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: '{part}' is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"--set {key}: value {raw!r} is not valid YAML") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: plain YAML keeps the last
    one silently, so `epochs: 3` further up would be ignored without a word."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping; ``what`` names the kind of file in errors (a recipe, a tune space)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a YAML text file (not UTF-8)") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", "") or ""
        detail = f" ({problem})" if problem.startswith("key ") else ""
        raise UserError(f"{path}{where}: invalid YAML{detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level of a {what} must be a mapping, got "
                        f"{type(data).__name__}")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
) -> ExperimentConfig:
    """YAML file (optional) + ``key=value`` overrides -> a validated ``ExperimentConfig``.

    ``labels``: how the user wrote the first overrides (``--epochs 0``), for errors; the rest
    read ``--set key=value``. An error about an overridden key names the override, not the file.
    """
    tree: dict[str, Any] = dict(base or {})
    if path is not None:
        tree = _merge(tree, read_yaml(path))
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return from_dict(ExperimentConfig, tree)
    except UserError as exc:
        culprits = _overrides_named(str(exc), overrides, labels)
        if culprits or path is not None:
            raise UserError(f"{culprits or path}: {exc}") from None
        raise


def _overrides_named(message: str, overrides, labels) -> str:
    """The overrides (as the user wrote them) whose key the error message names."""
    labels = [*(labels or ()),
              *(f"--set {redact_url(a)}" for a in overrides[len(labels or ()):])]
    named = [label for assignment, label in zip(overrides, labels)
             if _names_key(message, assignment.split("=", 1)[0].strip())]
    return ", ".join(dict.fromkeys(named))


def _names_key(message: str, key: str) -> bool:
    """Whether ``message`` names ``key`` or quotes a section on its path ('trian' of trian.x)."""
    if re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", message):
        return True
    parts = key.split(".")
    return any(f"'{'.'.join(parts[:n])}'" in message for n in range(1, len(parts)))


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def dump_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
