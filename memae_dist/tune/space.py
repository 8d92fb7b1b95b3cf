"""Declarative search spaces (``tune_spaces/*.yaml``): parsed, validated, turned into Tune domains.

A space file names what to sample and how; values that depend on other values are written in the
file as small arithmetic expressions (``model.shrink_threshold: k / model.num_slots``), not coded
here. Example::

    params:
      model.num_slots: {choice: [500, 1000, 2000, 3000]}
      k: {uniform: [1, 3], bounds: [1, 3]}       # a free variable used below
      model.entropy_weight: {loguniform: [1.0e-5, 1.0e-2]}
    derived:
      model.shrink_threshold: k / model.num_slots

A parameter is either a dotted config key (sampled straight into the config) or a bare name (a
free variable for ``derived`` expressions). ``bounds`` is an optional guard: the distribution
must stay inside it, so a typo in a recommended range is refused instead of silently swept.
Every problem is a one-line ``UserError`` naming the file and the key.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memae_dist.config import ExperimentConfig, from_dict, read_yaml
from memae_dist.errors import UserError
from memae_dist.tune.expr import evaluate, names_in

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "grid")
TOP_KEYS = ("name", "description", "samples", "objective", "scheduler", "params", "derived")
OBJECTIVE_METRICS = ("auto", "val_auc", "val_recon", "recon", "loss")
# The sweep sets these itself (one run per trial, in the sweep's storage, on --data, keeping
# its best epoch by the objective).
RESERVED_KEYS = ("run.name", "run.storage", "data.path", "train.checkpoint_metric",
                 "train.checkpoint_mode")
# Trials are compared on one validation split with one epoch budget (ASHA's rungs); a swept
# split could also be the test split, which no trial may read.
SHARED_KEYS = ("data.train_split", "data.val_split", "eval.split", "train.epochs")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
@dataclass(frozen=True)
class Param:
    name: str  # a dotted config key ("model.num_slots") or a free variable ("k")
    kind: str  # one of DISTRIBUTIONS
    values: tuple  # choice/grid: the values; uniform/loguniform/int: (low, high), inclusive
    bounds: tuple[float, float] | None = None

    @property
    def is_config_key(self) -> bool:
        return "." in self.name

    @property
    def log_scale(self) -> bool:
        return self.kind == "loguniform"

    def domain(self):
        """The Tune domain this parameter samples from."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        low, high = self.values
        if self.kind == "uniform":
            return tune.uniform(low, high)
        if self.kind == "loguniform":
            return tune.loguniform(low, high)
        return tune.randint(low, high + 1)  # Tune's upper end is exclusive; ours is not

    def corners(self) -> tuple:
        """Values that bracket everything this parameter can take (for up-front checks)."""
        return self.values


@dataclass(frozen=True)
class ObjectiveSpec:
    # What the sweep optimises: "auto" = val_auc on a labelled val split, val_recon on an
    # unlabelled one, the training recon when no val split is configured.
    metric: str = "auto"
    # "min" or "max"; "auto" follows the metric (max for val_auc, min otherwise).
    mode: str = "auto"
    # Unsupervised proxy only: objective = val_recon x (1 + penalty) in epochs whose memory
    # collapsed (fewer used slots than train.min_used_slots), so a degenerate memory never wins.
    collapse_penalty: float = 1.0


@dataclass(frozen=True)
class SchedulerSpec:
    # ASHA: epochs every trial gets before it can be stopped.
    grace_period: int = 1
    # ASHA: at each rung only the best 1/reduction_factor of trials continue.
    reduction_factor: int = 2


@dataclass(frozen=True)
class SearchSpace:
    source: str  # the file it came from, for messages
    name: str
    params: tuple[Param, ...]
    derived: tuple[tuple[str, str], ...] = ()  # (config key, expression), evaluated in order
    samples: int = 8
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    description: str = ""

    @property
    def has_grid(self) -> bool:
        return any(p.kind == "grid" for p in self.params)

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.params if p.kind == "grid")

    def tune_space(self) -> dict[str, Any]:
        """Tune's ``param_space``: one flat entry per parameter (derived values come later)."""
        return {p.name: p.domain() for p in self.params}

    def assignments(self, sample: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        """Sampled values + derived values -> ``{dotted config key: value}`` for one trial."""
        out = {p.name: sample[p.name] for p in self.params if p.is_config_key}
        env = dict(sample)
        for key, expr in self.derived:
            try:
                value = evaluate(ast.parse(expr, mode="eval").body, env, base)
            except (ArithmeticError, ValueError, TypeError) as exc:
                raise UserError(f"{self.source}: derived.{key} = {expr!r} failed for "
                                f"{_short(sample)}: {exc}") from None
            out[key] = env[key] = value
        return out

    def apply(self, base: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
        """The full config tree of one trial: ``base`` with this sample's assignments."""
        tree = _deep_copy(base)
        for key, value in self.assignments(sample, base).items():
            _set(tree, key, value)
        return tree

    def check_against(self, base: dict[str, Any],
                      check: Callable[[ExperimentConfig], None] | None = None) -> None:
        """Build the config at every corner of the space; the first invalid one is refused.

        Ranges are checked at both ends and choices at every value, so a space that can reach a
        config the components reject fails before the first trial starts, not in trial 17.
        ``check``: a further test of each corner's config (the dataset suits it)."""
        for combo in _corner_combos([p.corners() for p in self.params]):
            sample = {p.name: v for p, v in zip(self.params, combo)}
            try:
                cfg = from_dict(ExperimentConfig, self.apply(base, sample))
            except UserError as exc:
                raise UserError(f"{self.source}: {_short(sample)} gives an invalid config: "
                                f"{exc}") from None
            try:
                if check is not None:
                    check(cfg)
            except UserError as exc:
                raise UserError(f"{self.source}: at {_short(sample)}: {exc}") from None


MAX_CORNERS = 4096  # configs built one by one in well under a minute


def _corner_combos(corners: list[tuple]) -> Iterator[tuple]:
    """Every combination of the parameters' corners; past MAX_CORNERS, every corner of each
    parameter still, cycled against the others' (a choice of 600 values is one list, not a
    product to cut short)."""
    if math.prod(len(c) for c in corners) <= MAX_CORNERS:
        yield from itertools.product(*corners)
        return
    for i in range(max(len(c) for c in corners)):
        yield tuple(c[i % len(c)] for c in corners)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file; every problem is a one-line ``UserError``."""
    path = Path(path)
    return parse_space(read_yaml(path, "tune space file"), str(path))


def parse_space(data: dict[str, Any], source: str = "space") -> SearchSpace:
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise UserError(f"{source}: unknown key '{unknown[0]}' (valid keys: "
                        f"{', '.join(TOP_KEYS)})")
    if "params" not in data:
        raise UserError(f"{source}: missing key 'params' (the parameters to sample)")
    raw_params = data["params"]
    if not isinstance(raw_params, dict) or not raw_params:
        raise UserError(f"{source}: params must be a non-empty mapping of name -> distribution")
    config_keys = _config_leaves()
    params = tuple(_parse_param(name, spec, source, config_keys)
                   for name, spec in raw_params.items())
    derived = _parse_derived(data.get("derived") or {}, params, source, config_keys)
    _check_used(params, derived, source)
    samples = data.get("samples", 8)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UserError(f"{source}: samples must be an integer >= 1, got {samples!r}")
    name = data.get("name") or Path(source).stem
    if not isinstance(name, str) or not _NAME.fullmatch(name.replace("-", "_")):
        raise UserError(f"{source}: name must be letters, digits, '_' or '-', got {name!r}")
    return SearchSpace(
        source=source, name=name, params=params, derived=derived, samples=samples,
        objective=_parse_objective(data.get("objective"), source),
        scheduler=_parse_scheduler(data.get("scheduler"), source),
        description=str(data.get("description") or ""),
    )


# ---------------------------------------------------------------------------- parsing helpers
def _parse_param(name: Any, spec: Any, source: str, config_keys: set[str]) -> Param:
    where = f"{source}: params.{name}"
    if not isinstance(name, str) or not all(_NAME.fullmatch(p) for p in name.split(".")):
        raise UserError(f"{source}: parameter name {name!r} must be a config key such as "
                        "model.num_slots or a plain name such as k")
    if "." in name:
        _check_config_key(name, where, config_keys)
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a mapping such as {{uniform: [1, 3]}}, got {spec!r}")
    kinds = [k for k in spec if k != "bounds"]
    if not kinds:
        raise UserError(f"{where}: missing key: no distribution given (one of "
                        f"{', '.join(DISTRIBUTIONS)})")
    bad = [k for k in kinds if k not in DISTRIBUTIONS]
    if bad:
        raise UserError(f"{where}: unknown distribution '{bad[0]}' (choose one of "
                        f"{', '.join(DISTRIBUTIONS)})")
    if len(kinds) > 1:
        raise UserError(f"{where}: give exactly one distribution, got {', '.join(kinds)}")
    kind = kinds[0]
    values = _parse_values(kind, spec[kind], where)
    bounds = None
    if "bounds" in spec:
        bounds = _parse_range(spec["bounds"], f"{where}.bounds")
        _check_bounds(kind, values, bounds, where)
    return Param(name, kind, values, bounds)


def _parse_values(kind: str, raw: Any, where: str) -> tuple:
    if kind in ("choice", "grid"):
        if not isinstance(raw, list) or not raw:
            raise UserError(f"{where}.{kind} must be a non-empty list of values, got {raw!r}")
        values = tuple(_number_or_value(v, f"{where}.{kind}") for v in raw)
        if len(set(map(repr, values))) != len(values):
            raise UserError(f"{where}.{kind} lists a value twice: {list(values)}")
        return values
    low, high = _parse_range(raw, f"{where}.{kind}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise UserError(f"{where}.int bounds must be integers, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{where}.loguniform needs 0 < low < high, got [{low}, {high}]")
    if kind == "int":
        return int(low), int(high)
    return float(low), float(high)


def _parse_range(raw: Any, where: str) -> tuple[float, float]:
    if not isinstance(raw, list) or len(raw) != 2:
        raise UserError(f"{where} must be [low, high], got {raw!r}")
    low, high = (_number(v, where) for v in raw)
    if not low < high:
        raise UserError(f"{where} needs low < high, got [{low}, {high}]")
    return low, high


def _check_bounds(kind: str, values: tuple, bounds: tuple[float, float], where: str) -> None:
    low, high = bounds
    if kind in ("choice", "grid"):
        for v in values:
            if not isinstance(v, (int, float)) or not low <= v <= high:
                raise UserError(f"{where}: value {v!r} is outside its bounds [{low}, {high}]")
    elif not (low <= values[0] and values[1] <= high):
        raise UserError(f"{where}: {kind} range [{values[0]}, {values[1]}] is outside its "
                        f"bounds [{low}, {high}]")


def _parse_derived(raw: Any, params: tuple[Param, ...], source: str,
                   config_keys: set[str]) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: derived must be a mapping of config key -> expression")
    known = {p.name for p in params}
    out = []
    for key, expr in raw.items():
        where = f"{source}: derived.{key}"
        _check_config_key(str(key), where, config_keys)
        if key in known:
            raise UserError(f"{where}: is also a sampled parameter; keep one of the two")
        if isinstance(expr, (int, float)) and not isinstance(expr, bool):
            expr = repr(expr)
        if not isinstance(expr, str) or not expr.strip():
            raise UserError(f"{where}: expected an expression such as 'k / model.num_slots'")
        try:
            tree = ast.parse(expr, mode="eval").body
        except SyntaxError:
            raise UserError(f"{where}: cannot parse expression {expr!r}") from None
        for name in names_in(tree, where):
            if name not in known and name not in config_keys:
                raise UserError(f"{where}: unknown name '{name}' in {expr!r} (not a parameter "
                                "or config key)")
        out.append((str(key), expr))
        known.add(str(key))
    return tuple(out)


def _check_used(params: tuple[Param, ...], derived, source: str) -> None:
    used: set[str] = set()
    for key, expr in derived:
        used |= names_in(ast.parse(expr, mode="eval").body, key)
    for p in params:
        if not p.is_config_key and p.name not in used:
            raise UserError(f"{source}: params.{p.name} is not a config key and no derived "
                            "expression uses it")


def _parse_objective(raw: Any, source: str) -> ObjectiveSpec:
    raw = raw or {}
    where = f"{source}: objective"
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping (metric, mode, collapse_penalty)")
    unknown = sorted(set(raw) - {"metric", "mode", "collapse_penalty"})
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}' (metric, mode, collapse_penalty)")
    spec = ObjectiveSpec(**raw)
    if spec.metric not in OBJECTIVE_METRICS:
        raise UserError(f"{where}.metric must be one of {', '.join(OBJECTIVE_METRICS)}, "
                        f"got {spec.metric!r}")
    if spec.mode not in ("auto", "min", "max"):
        raise UserError(f"{where}.mode must be auto, min or max, got {spec.mode!r}")
    penalty = _number(spec.collapse_penalty, f"{where}.collapse_penalty")
    if penalty < 0:
        raise UserError(f"{where}.collapse_penalty must be >= 0, got {penalty}")
    return ObjectiveSpec(spec.metric, spec.mode, penalty)


def _parse_scheduler(raw: Any, source: str) -> SchedulerSpec:
    raw = raw or {}
    where = f"{source}: scheduler"
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping (grace_period, reduction_factor)")
    unknown = sorted(set(raw) - {"grace_period", "reduction_factor"})
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}' (grace_period, reduction_factor)")
    spec = SchedulerSpec(**raw)
    for key, low in (("grace_period", 1), ("reduction_factor", 2)):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{where}.{key} must be an integer >= {low}, got {value!r}")
    return spec


def _check_config_key(key: str, where: str, config_keys: set[str]) -> None:
    if key in RESERVED_KEYS:
        raise UserError(f"{where}: {key} is set by the sweep itself and cannot be swept")
    if key in SHARED_KEYS:
        raise UserError(f"{where}: {key} cannot be swept: every trial must share it for their "
                        f"results to compare (set it for the whole sweep with --set {key}=...)")
    if key not in config_keys:
        section = key.split(".")[0]
        hint = sorted(k for k in config_keys if k.startswith(section + "."))
        raise UserError(f"{where}: unknown config key '{key}'"
                        + (f" (e.g. {', '.join(hint[:4])})" if hint else ""))


def _config_leaves() -> set[str]:
    out: set[str] = set()

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out.add(f"{prefix}{key}")

    walk(ExperimentConfig().to_dict(), "")
    return out


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "1e-4" as a string (and "inf" too)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, got {value!r}")
    return value


def _number_or_value(value: Any, where: str) -> Any:
    """A choice: a finite number (also when YAML read it as text) or any other value."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: expected finite numbers, got {value!r}")
    return value


# ---------------------------------------------------------------------------- config trees
def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _deep_copy(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


def _short(sample: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sample.items())


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
