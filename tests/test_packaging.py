"""The wheel ships every subpackage and every shipped recipe (setuptools lists them by hand)."""

import shutil
import subprocess
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


def test_shipped_names_resolve_inside_an_uploaded_checkout(tmp_path):
    """`ray job submit --working-dir .` runs the CLI inside a copy of the repository: its
    memae_dist/ comes first on the path and hides the installed package, whose
    memae_dist.configs the copy does not have. The recipes are the copy's configs/."""
    for folder in ("memae_dist", "configs", "tune_spaces"):
        shutil.copytree(REPO / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; sys.meta_path = [f for f in sys.meta_path "  # as a regular install
            "if 'editable' not in repr(f).lower()]\n"
            "from memae_dist.commands.common import resolve_config_path, resolve_yaml\n"
            "print(resolve_config_path('ped2'))\n"
            "print(resolve_yaml('smoke', 'memae_dist.tune_spaces', 'search space'))")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == [str(tmp_path / "configs" / "ped2.yaml"),
                                  str(tmp_path / "tune_spaces" / "smoke.yaml")]


def test_the_doctor_checks_the_ray_version_the_package_declares():
    from memae_dist.doctor.cluster import MIN_RAY

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray = [d for d in deps if d.startswith("ray[")]
    assert ray == [f"ray[default,train,tune,data]>={'.'.join(map(str, MIN_RAY))}"]


def test_make_test_floors_pins_every_runtime_dependency_to_its_floor():
    """`make test-floors` installs these pins; a dependency without a '>=' floor would escape it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [
        d for extra in ("export", "tune") for d in project["optional-dependencies"][extra]]
    run = subprocess.run([sys.executable, str(REPO / ".ci" / "floors.py"), "torch==2.13.0"],
                         capture_output=True, text=True, timeout=60, check=True)
    pins = run.stdout.split()
    assert len(pins) == len(declared) and "torch==2.13.0" in pins
    assert "numpy==1.24.2" in pins and "s3fs==2024.12.0" in pins
    assert all(pin.count("==") == 1 for pin in pins), pins
