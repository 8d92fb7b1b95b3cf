"""Every file in cluster/ (and every command in docs/CLUSTER.md) is parsed and checked offline."""

from __future__ import annotations

import copy
import re
import shlex
import sys
import zipfile
from pathlib import Path

import pytest
import ray
import yaml

from memae_dist.cli import COMMANDS, build_parser
from memae_dist.commands.common import experiment_config, resolve_config_path
from memae_dist.config import load_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra installs tomli there
    import tomli as tomllib

REPO = Path(__file__).parents[2]
CLUSTER = REPO / "cluster"
DOC = REPO / "docs" / "CLUSTER.md"
CHECKED = {"runtime_env.yaml", "runtime_env_pip.yaml", "aws-gpu.yaml", "Dockerfile",
           "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"}
RUNTIME_ENV_KEYS = {"working_dir", "py_modules", "excludes", "pip", "env_vars", "config"}
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", re.I)


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def check_entrypoint(command: str) -> str:
    """Parse a ``python -m memae_dist.cli VERB ...`` / ``memae-dist VERB ...`` command line with
    the real CLI parser and validate the experiment config it builds; returns the verb."""
    argv = shlex.split(command.replace("\\\n", " "), comments=True)
    if "memae_dist.cli" in argv:
        assert argv[argv.index("memae_dist.cli") - 1] == "-m", command
        argv = argv[argv.index("memae_dist.cli") + 1:]
    else:
        argv = argv[argv.index("memae-dist") + 1:]
    args = build_parser().parse_args(argv)
    assert args.command in COMMANDS
    if args.command in ("train", "doctor"):
        experiment_config(args)
    elif args.command == "tune":
        load_config(resolve_config_path(args.config), [f"data.path={args.data}"])
    return args.command


def test_every_cluster_file_is_known_and_parses():
    found = {str(p.relative_to(CLUSTER)) for p in CLUSTER.rglob("*") if p.is_file()}
    assert found == CHECKED, "a new file in cluster/ needs its checks here"
    for name in CHECKED - {"Dockerfile"}:
        assert isinstance(load(name), dict), name
        assert "\t" not in (CLUSTER / name).read_text()


@pytest.mark.parametrize("name", ["runtime_env.yaml", "runtime_env_pip.yaml"])
def test_runtime_envs_are_valid_and_carry_no_secrets(name):
    from ray.runtime_env import RuntimeEnv

    env = load(name)
    assert set(env) <= RUNTIME_ENV_KEYS, set(env) - RUNTIME_ENV_KEYS
    assert "working_dir" not in env  # given by `--working-dir .`, which would override it
    RuntimeEnv(**env)  # Ray's own validation of every field
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    assert env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "60"  # see test_job_submit.py
    assert not [k for k in env["env_vars"] if SECRET_NAME.search(k) or k.startswith("AWS_")]
    for must in ("/.venv", "/.venv-floors", "/.git", "/runs", "/demo_out", "/data", "*.parquet"):
        assert must in env["excludes"], must


def test_pip_runtime_env_installs_what_pyproject_declares():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [d for d in project["dependencies"] if not d.startswith("ray")]
    declared += project["optional-dependencies"]["tune"]
    assert load("runtime_env_pip.yaml")["pip"]["packages"] == declared
    assert load("runtime_env_pip.yaml")["excludes"] == load("runtime_env.yaml")["excludes"]


def test_working_dir_upload_keeps_the_package_and_drops_the_rest(tmp_path):
    """Zip the repository exactly as `ray job submit --working-dir .` does."""
    from ray._private.runtime_env.packaging import _zip_files

    out = tmp_path / "pkg.zip"
    _zip_files(str(REPO), load("runtime_env.yaml")["excludes"], str(out), include_gitignore=True)
    names = set(zipfile.ZipFile(out).namelist())
    for path in ("memae_dist/cli.py", "memae_dist/data/storage.py", "memae_dist/data/stream.py",
                 "memae_dist/doctor/storage_checks.py", "configs/ped2.yaml", "pyproject.toml"):
        assert path in names, path
    dropped = [n for n in names if n.split("/")[0] in (".venv", ".git", "runs", "demo_out", "data")
               or n.endswith((".parquet", ".pyc")) or "/__pycache__/" in n]
    assert dropped == []
    assert out.stat().st_size < 20 * 2**20  # it is uploaded with every job


def test_aws_launcher_config_validates_with_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load("aws-gpu.yaml")
    config = prepare_config(copy.deepcopy(raw))  # merges AWS defaults, as `ray up` does
    validate_config(config)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    gpu = [t for name, t in types.items() if name != config["head_node_type"]]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1
    assert re.match(r"(g|p)\d", gpu[0]["node_config"]["InstanceType"])
    for node_type in types.values():  # S3 by instance role, never by key
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert raw["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert "ray start --head" in " ".join(config["head_start_ray_commands"])
    assert "$RAY_HEAD_IP" in " ".join(config["worker_start_ray_commands"])
    assert not SECRET_NAME.search((CLUSTER / "aws-gpu.yaml").read_text().replace(
        "AWS_REGION", ""))

    broken = copy.deepcopy(raw)
    broken["available_node_types"]["ray.worker.gpu"]["min_worker"] = 1
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(broken))


def test_kuberay_cluster_and_job():
    from ray.runtime_env import RuntimeEnv

    cluster, job = load("kuberay/raycluster.yaml"), load("kuberay/rayjob.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = spec["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert group["minReplicas"] == 0 < group["maxReplicas"] and spec["enableInTreeAutoscaling"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert worker["image"] == head["image"]
    for container in (head, worker):
        env = {e["name"]: e for e in container["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[key]
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "memae-s3", "key": key}
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert "shutdownAfterJobFinishes" not in job["spec"]  # the cluster outlives the job
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)
    assert not [k for k in runtime_env.get("env_vars", {}) if SECRET_NAME.search(k)]
    assert runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "60"
    assert check_entrypoint(job["spec"]["entrypoint"]) == "train"


def test_dockerfile_builds_on_the_same_ray_and_installs_the_package():
    lines = [ln.strip() for ln in (CLUSTER / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == f"FROM rayproject/ray:{ray.__version__}-py311-gpu"
    copied = {src for ln in lines if ln.startswith("COPY")
              for src in shlex.split(ln)[1:-1] if not src.startswith("--")}
    # What pip needs to build the package: pyproject.toml, its readme and license files, and the
    # folder of every package (setuptools stops at a missing package-dir folder or license file).
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    dirs = meta["tool"]["setuptools"].get("package-dir", {})
    needed = {"pyproject.toml", meta["project"]["readme"], *meta["project"]["license-files"]}
    needed |= {dirs.get(pkg, pkg.replace(".", "/")).split("/")[0]
               for pkg in meta["tool"]["setuptools"]["packages"]}
    assert needed - copied == set(), "cluster/Dockerfile does not copy these"
    assert any(ln.startswith("RUN pip install") and '".[tune]"' in ln for ln in lines)
    assert f"py{sys.version_info.major}{sys.version_info.minor}" in lines[0]


def test_documented_commands_parse_and_name_existing_files():
    text = DOC.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [c.strip() for b in blocks for c in re.split(r"(?<!\\)\n", b) if c.strip()]
    verbs = [check_entrypoint(c) for c in commands if "memae_dist.cli" in c
             or re.match(r"(\w+=\S* )*memae-dist ", c)]  # after any VAR=value prefixes
    assert {"train", "tune", "doctor", "prepare"} <= set(verbs)
    for command in commands:
        argv = shlex.split(command.replace("\\\n", " "), comments=True)
        if argv[:3] == ["ray", "job", "submit"]:
            assert argv[argv.index("--working-dir") + 1] == "."
            assert (REPO / argv[argv.index("--runtime-env") + 1]).is_file()
        if argv[:2] in (["kubectl", "apply"], ["docker", "build"]):
            assert (REPO / argv[argv.index("-f") + 1]).is_file(), command
        if argv[:2] in (["ray", "up"], ["ray", "dashboard"]):
            assert (REPO / argv[-1]).is_file(), command
