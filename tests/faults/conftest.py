"""Fixtures of the fault-injection tests: a private copy of the tiny dataset to damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def tiny_copy(tiny_data, tmp_path) -> Path:
    """A copy of the session's tiny synthetic dataset (16x16, 3 train + 2 test videos of 40)."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    return dst
