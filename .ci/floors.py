"""Print a pip constraints file that pins every dependency pyproject.toml declares to its floor.

`make test-floors` installs the package under these pins and runs the test suite, so a floor
that does not work (an API that came later) fails there. torch is the exception: its floor is a
multi-GB CUDA build on PyPI, so it stays at the CPU build the Makefile names (argv[1]).
"""

import sys
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra installs tomli there
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
RUNTIME_EXTRAS = ("export", "tune")  # dev tools are not the product's floors


def floor_pins(torch_pin: str) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        declared += project["optional-dependencies"][extra]
    pins = []
    for line in declared:
        req = Requirement(line)
        if req.name == "torch":
            pins.append(torch_pin)
            continue
        floors = [s.version for s in req.specifier if s.operator == ">="]
        if len(floors) != 1:
            raise SystemExit(f"{PYPROJECT}: {line!r} needs exactly one '>=' floor")
        pins.append(f"{req.name}=={floors[0]}")
    return pins


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: floors.py TORCH_PIN (the Makefile's, e.g. torch==2.13.0)")
    print("\n".join(floor_pins(sys.argv[1])))
