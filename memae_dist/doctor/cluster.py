"""Doctor checks of Ray itself: its version, the cluster's address, its nodes and GPUs."""

from __future__ import annotations

import logging
import os

from memae_dist.config import ExperimentConfig
from memae_dist.doctor.checks import FAIL, PASS, SKIP, WARN, Check
from memae_dist.runtime import address_problem, keeping_sigterm_handler

TOKEN_AUTH = ("export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN here (`ray get-auth-token` on the "
              "head prints the token)")
# The oldest Ray this package declares in pyproject.toml: Train V2's report(checkpoint_upload_fn)
# came in 2.51, its PreemptionError in 2.58.
MIN_RAY = (2, 58)


def ray_version_check() -> Check:
    import ray

    have = tuple(int(p) for p in ray.__version__.split(".")[:2] if p.isdigit())
    need = ".".join(map(str, MIN_RAY))
    if have < MIN_RAY:
        return Check("ray", FAIL, f"Ray {ray.__version__} is older than {need}",
                     f'pip install "ray[default,train,tune,data]>={need}" on every node')
    return Check("ray", PASS, f"Ray {ray.__version__} (>= {need})")


def connect(address: str | None, *, log_to_driver: bool, required: bool):
    """(cluster Check, alive nodes); connects this process to the cluster when needed."""
    import ray

    target = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        problem = address_problem(target)
        if problem:
            return Check("cluster", FAIL, problem[0], problem[1]), []
        try:
            # Train's preflight connects here first: without the CLI's handler put back, a
            # SIGTERM (`ray job stop`) became Ray's exit, reported as an interrupt (130).
            with keeping_sigterm_handler():
                ray.init(address=target or started_cluster(), log_to_driver=log_to_driver,
                         logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            if not (target or required) and "Could not find any running Ray" in reason:
                return Check("cluster", SKIP, "no running Ray cluster found (train starts a "
                             "local one); only this machine is checked",
                             "pass --address HOST:6379 or run doctor as a Ray job"), []
            return Check("cluster", FAIL, f"cannot connect to Ray at {target or 'auto'}: "
                         f"{reason}", _connect_fix(str(exc))), []
    nodes = alive_nodes()
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
    gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    return Check("cluster", PASS, f"{len(nodes)} nodes alive, {cpus:g} CPUs, {gpus:g} GPUs"), nodes


def started_cluster() -> str:
    """The cluster `ray start` last started on this machine. Ray's "auto" would also join any
    other process's private local Ray (another memae-dist command, a test run), and check the
    storage with that process's credentials."""
    try:
        from ray._private.services import find_bootstrap_address
    except ImportError:  # a Ray that moved it: its "auto" is the next best
        return "auto"
    found = find_bootstrap_address(None)
    if not found:
        raise ConnectionError("Could not find any running Ray cluster")
    return found


def _connect_fix(reason: str) -> str:
    if "auth" in reason.lower() or "token" in reason.lower():
        return (f"the cluster uses token authentication: {TOKEN_AUTH}, or match its "
                "RAY_AUTH_MODE")
    return ("check that the cluster is up (`ray status` on the head) and pass its GCS address "
            f"HOST:6379 with --address; for a cluster with token authentication, {TOKEN_AUTH}")


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def node_label(node: dict) -> str:
    return f"{node['NodeManagerAddress']}/{node['NodeID'][:6]}"


def resources_check(nodes: list[dict], cfg: ExperimentConfig,
                    free_cpus: float | None = None) -> Check:
    """``free_cpus``: what other jobs on the cluster leave free now."""
    t = cfg.train
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
    gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    need_cpu, need_gpu = max(t.workers, 1) * t.cpus_per_worker, t.workers * t.gpus_per_worker
    workers = (f"{t.workers} worker{'s' if t.workers > 1 else ''}" if t.workers
               else "training in process")
    detail = (f"the run needs {need_cpu + 1:g} CPUs ({workers} x {t.cpus_per_worker:g} CPU, "
              f"+ 1 for reading data) and {need_gpu:g} GPUs; the cluster has {cpus:g} CPUs, "
              f"{gpus:g} GPUs now")
    fits = cpus >= need_cpu + 1 and gpus >= need_gpu
    if fits and (free_cpus is None or free_cpus >= need_cpu + 1):
        return Check("resources", PASS, detail)
    if fits:
        return Check("resources", WARN, f"{detail}, {free_cpus:g} CPUs free (other jobs hold "
                     "the rest)", "on a cluster of fixed size the run waits for them, and two "
                     "runs that leave no CPU free for reading wait on each other for ever: wait, "
                     "or lower --workers / --cpus-per-worker (docs/CLUSTER.md)")
    return Check("resources", WARN, detail, "an autoscaling cluster adds nodes on demand; "
                 "otherwise add nodes or lower --workers / --cpus-per-worker / --gpus-per-worker")


def gpu_check(info: dict | None, ray_gpus: float, label: str) -> Check | None:
    if info is None:
        return None
    smi, seen = info.get("nvidia_smi"), info.get("torch")
    if info.get("error"):
        return Check("gpus", FAIL if ray_gpus else WARN, f"GPU probe failed: {info['error']}",
                     "check the NVIDIA driver (`nvidia-smi`) and torch on this node", label)
    if ray_gpus == 0 and not smi:
        return Check("gpus", PASS, "no GPUs (CPU node)", node=label)
    if ray_gpus == 0:
        return Check("gpus", WARN, f"{smi} GPUs present but Ray advertises none",
                     f"start Ray on this node with --num-gpus={smi}", label)
    if not seen:
        return Check("gpus", FAIL, f"Ray advertises {ray_gpus:g} GPUs but torch sees none "
                     f"(torch CUDA build: {info.get('cuda')})",
                     "install a CUDA build of torch in the node image and check the NVIDIA "
                     "driver (`nvidia-smi`)", label)
    if seen < ray_gpus:
        return Check("gpus", FAIL, f"Ray advertises {ray_gpus:g} GPUs, torch sees {seen}",
                     f"start Ray on this node with --num-gpus={seen}", label)
    return Check("gpus", PASS, f"{ray_gpus:g} GPUs, torch (CUDA {info.get('cuda')}) sees "
                 f"{seen}", node=label)
