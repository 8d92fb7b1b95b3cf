"""The wheel ships every subpackage and every shipped recipe (setuptools lists them by hand)."""

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra installs tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_and_recipe_folder_is_declared():
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(setup["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts)
             for p in (REPO / "memae_dist").rglob("__init__.py")}
    assert found - declared == set(), "add these to [tool.setuptools] packages"
    for package, folder in setup["package-dir"].items():
        assert package in declared and list((REPO / folder).glob("*.yaml")), package
        assert setup["package-data"][package] == ["*.yaml"]
