"""The resolved experiment config as a commented YAML recipe (``memae-dist config``).

Every setting is printed under the comment its dataclass gives it, so the output is at once the
reference of every key and a recipe to edit: it loads back (``--config FILE``) to the same
config. The comments are read from the dataclasses' source, where the fields are documented
once; an installation without sources prints the settings without them.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

import yaml

from memae_dist.config import ExperimentConfig, to_plain

_FIELD = re.compile(r"    (\w+)\s*:")  # a field of a class body, at its indentation


def field_comments(cls: type) -> dict[str, list[str]]:
    """``{field: the comment lines right above it}`` in the source of dataclass ``cls``."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[str, list[str]] = {}
    pending: list[str] = []
    for line in lines[1:]:
        text = line.strip()
        if text.startswith("#"):
            pending.append(text[1:].strip())
            continue
        match = _FIELD.match(line)
        if match and match.group(1) in names:
            comments[match.group(1)] = pending
        pending = []
    return comments


def yaml_value(value: Any) -> str:
    """One value as YAML on one line: ``0.0001``, ``[256, 128, 64]``, ``'2024'``, ``null``."""
    text = yaml.safe_dump(to_plain(value), default_flow_style=True, width=10**6).strip()
    return text[: -len("...")].rstrip() if text.endswith("\n...") else text


def render(cfg: ExperimentConfig, header: list[str]) -> str:
    """``cfg`` as YAML, each key under its comment, after ``header`` (comment lines)."""
    out = [f"# {line}" for line in header]
    for section in dataclasses.fields(ExperimentConfig):
        component = getattr(cfg, section.name)
        comments = field_comments(type(component))
        out += ["", f"{section.name}:"]
        for item in dataclasses.fields(component):
            out += [f"  # {line}" if line else "  #" for line in comments.get(item.name, [])]
            out.append(f"  {item.name}: {yaml_value(getattr(component, item.name))}")
    return "\n".join(out) + "\n"
