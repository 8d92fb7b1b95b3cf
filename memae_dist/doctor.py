"""``memae-dist doctor`` and the preflight that ``train`` / ``tune`` run: can this cluster work?

The checks: the Ray version; that the cluster answers; per node, the Ray and Python versions,
that ``memae_dist`` imports and which GPUs torch sees; that the run storage is writable, readable
and deletable from the driver *and from every node*; that the dataset manifest is readable
everywhere. The storage check writes a marker from the driver, reads it back on each node, has
each node write its own marker, reads those back on the driver and deletes them all. A local
folder passes on one machine and fails on a multi-node cluster unless it is a shared mount, which
is the mistake this exists to catch: checkpoints written where the other nodes cannot see them.

Every failure carries its fix. :func:`preflight` runs the storage and manifest part before any
training worker starts, so a bad URI fails a job in seconds instead of after the workers are up.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from memae_dist.config import ExperimentConfig
from memae_dist.data import storage
from memae_dist.data.storage import StorageConfig, describe, join
from memae_dist.errors import UserError
from memae_dist.node_probe import gpu_info, probe_node

log = logging.getLogger("memae_dist.doctor")

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
MIN_RAY = (2, 50)  # the oldest Ray this package declares in pyproject.toml
NODE_TIMEOUT_S = 120.0  # a node's first task may have to set up the job's runtime env
TCP_TIMEOUT_S = 3.0
DOCTOR_HINT = "`memae-dist doctor --storage URI --data URI` checks every node"
_PACKAGE_FIX = ("ship the package with the job (`ray job submit --working-dir . --runtime-env "
                "cluster/runtime_env.yaml`) or install memae-dist in the node image")


@dataclass
class Check:
    name: str  # what was checked: "ray", "cluster", "storage", "manifest", "gpus", ...
    status: str  # PASS | WARN | FAIL | SKIP
    detail: str
    fix: str = ""
    node: str = "-"  # "driver", a node label, or "-" for cluster-wide checks

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        where = f" [{self.node}]" if self.node != "-" else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.name}{where}: {self.detail}.{fix}"


# ----------------------------------------------------------------------- entry points


def run_doctor(cfg: ExperimentConfig, address: str | None = None) -> list[Check]:
    """Every check, for ``cfg.run.storage`` and ``cfg.data.path`` (when set)."""
    checks = [ray_version_check()]
    cluster, nodes = connect(address, log_to_driver=False, required=False)
    checks.append(cluster)
    if nodes:
        checks.append(resources_check(nodes, cfg))
    checks += storage_and_node_checks(cfg, nodes, system=True)
    return checks


def preflight(cfg: ExperimentConfig, address: str | None = None) -> None:
    """Raise a ``UserError`` within seconds when the run storage or the dataset is unusable.

    The driver checks come first and need no cluster. On an existing multi-node cluster (an
    ``address``, ``RAY_ADDRESS`` as inside ``ray job submit``, or an initialised Ray) every
    node then repeats them; a local cluster this process will start has only this machine.
    """
    import ray

    start = time.monotonic()
    log.info("run %s: storage %s", cfg.run.name,
             describe(join(storage_root(cfg), cfg.run.name), cfg.storage))
    if cfg.data.path:
        log.info("data: %s", describe(cfg.data.path, cfg.storage))
    checks = storage_and_node_checks(cfg, [], system=False)
    nodes: list[dict] = []
    in_worker = ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    # Inside a Ray worker (a Tune trial) the driver that started it has checked the nodes.
    if not any(c.failed for c in checks) and not in_worker and (
        ray.is_initialized() or address or os.environ.get("RAY_ADDRESS")
    ):
        # Same connection ensure_ray would make; it then finds Ray initialised.
        cluster, nodes = connect(address, log_to_driver=True, required=True)
        checks.append(cluster)
        nodes = nodes if len(nodes) > 1 else []
        if nodes:
            checks += storage_and_node_checks(cfg, nodes, system=False)
    failed = [c for c in checks if c.failed]
    if failed:
        raise UserError("preflight failed, nothing was started: "
                        + " | ".join(c.line() for c in failed) + f" ({DOCTOR_HINT})")
    log.info("preflight passed in %.1f s: storage and dataset usable from the driver%s",
             time.monotonic() - start, f" and all {len(nodes)} nodes" if nodes else "")


def format_table(checks: list[Check]) -> str:
    """A pass/fail table, then the fix of every failure and warning."""
    head = ("CHECK", "NODE", "STATUS", "DETAIL")
    rows = [(c.name, c.node, c.status, c.detail) for c in checks]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = ["  ".join(f"{v:<{w}}" for v, w in zip(r[:3], widths)) + "  " + r[3]
             for r in [head, *rows]]
    fixes = [c for c in checks if c.fix and c.status in (FAIL, WARN)]
    if fixes:
        lines += ["", "How to fix:"]
        lines += [f"  {c.status} {c.name} [{c.node}]: {c.fix}" for c in fixes]
    n_fail = sum(c.failed for c in checks)
    lines += ["", f"{len(checks)} checks: {n_fail} failed"
                  f", {sum(c.status == WARN for c in checks)} warnings"]
    return "\n".join(lines)


# ----------------------------------------------------------------------- Ray and the cluster


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
            ray.init(address=target or "auto", log_to_driver=log_to_driver,
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


def _connect_fix(reason: str) -> str:
    if "auth" in reason.lower() or "token" in reason.lower():
        return ("the cluster uses token authentication: export RAY_AUTH_TOKEN (`ray "
                "get-auth-token` on the head prints it), or match its RAY_AUTH_MODE")
    return ("check that the cluster is up (`ray status` on the head) and pass its GCS address "
            "HOST:6379 with --address; a cluster with token authentication also needs "
            "RAY_AUTH_TOKEN exported here")


def address_problem(target: str | None) -> tuple[str, str] | None:
    """A quick reason why ``target`` cannot be a Ray address (before a slow ray.init)."""
    if not target or target == "auto" or target.startswith("ray://"):
        return None
    if target.startswith(("http://", "https://")):
        return (f"{target} is a job server (dashboard) address",
                "use it for `ray job submit --address`; doctor needs the GCS address "
                "HOST:6379, or run doctor itself as a Ray job")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return f"bad Ray address {target!r}", "use HOST:PORT, e.g. 10.0.0.5:6379"
    try:
        socket.create_connection((host, int(port)), timeout=TCP_TIMEOUT_S).close()
    except OSError as exc:
        return (f"cannot reach {target}: {exc.strerror or exc}",
                "check the head node's address and that port is open to this machine")
    return None


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def node_label(node: dict) -> str:
    return f"{node['NodeManagerAddress']}/{node['NodeID'][:6]}"


def resources_check(nodes: list[dict], cfg: ExperimentConfig) -> Check:
    t = cfg.train
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
    gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    need_cpu, need_gpu = max(t.workers, 1) * t.cpus_per_worker, t.workers * t.gpus_per_worker
    detail = (f"the run asks {t.workers} workers x ({t.cpus_per_worker:g} CPU, "
              f"{t.gpus_per_worker:g} GPU); the cluster has {cpus:g} CPUs, {gpus:g} GPUs now")
    if cpus >= need_cpu + 1 and gpus >= need_gpu:  # + 1 CPU for Ray Data's read tasks
        return Check("resources", PASS, detail)
    return Check("resources", WARN, detail, "an autoscaling cluster adds nodes on demand; "
                 "otherwise add nodes or lower --workers / --cpus-per-worker / --gpus-per-worker")


# ----------------------------------------------------------------------- storage and nodes


def storage_root(cfg: ExperimentConfig) -> str:
    """The run storage as the driver sees it (a local path made absolute, as fit() does)."""
    root = cfg.run.storage
    return root if "://" in root else os.path.abspath(root)


def storage_and_node_checks(cfg: ExperimentConfig, nodes: list[dict], *,
                            system: bool) -> list[Check]:
    """Marker round trip and manifest read on the driver, then on each of ``nodes``."""
    root, data, scfg = storage_root(cfg), cfg.data.path, cfg.storage
    marker = join(root, f".memae-doctor-{uuid.uuid4().hex[:12]}")
    token = uuid.uuid4().bytes
    checks: list[Check] = []
    # One fast, clear failure instead of minutes of retries against a dead endpoint.
    remote = storage.is_remote(root) or bool(data and storage.is_remote(data))
    unreachable = storage.unreachable_reason(scfg) if remote else None
    storage_ok = True
    try:
        if unreachable and storage.is_remote(root):
            checks.append(Check("storage", FAIL, unreachable, storage_fix(unreachable, root),
                                "driver"))
        else:
            checks.append(_driver_storage(root, marker, token, scfg))
        storage_ok = not checks[-1].failed
        if unreachable and data and storage.is_remote(data):
            checks.append(Check("manifest", FAIL, unreachable, _manifest_fix(unreachable),
                                "driver"))
        else:
            checks.append(manifest_check(data, scfg, "driver"))
        if nodes:
            checks += _node_checks(nodes, marker if storage_ok else None, token, data, scfg,
                                   system)
        elif system:  # no cluster: this machine, whose GPUs a local Ray would detect
            info = gpu_info(0.0)
            checks.append(gpu_check(info, float(info["nvidia_smi"] or 0), "local"))
    finally:
        if storage_ok:
            checks.append(_cleanup(marker, scfg))
    return [c for c in checks if c is not None]


def manifest_check(data: str, cfg: StorageConfig, node: str) -> Check:
    from memae_dist.data.manifest import load_manifest

    if not data:
        return Check("manifest", SKIP, "no dataset given", node=node)
    try:
        manifest = load_manifest(data, cfg)
    except UserError as exc:
        return Check("manifest", FAIL, str(exc), _manifest_fix(str(exc)), node)
    try:
        from memae_dist.data.info import shard_size_problems

        problems = shard_size_problems(data, manifest, cfg)
    except UserError as exc:
        return Check("manifest", FAIL, str(exc), _manifest_fix(str(exc)), node)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check("manifest", FAIL, problems[0] + more,
                     "re-run the same prepare command to rewrite it (memae-dist data verify "
                     "checks every byte)", node)
    videos = sum(len(v) for v in manifest.splits.values())
    return Check("manifest", PASS, f"{manifest.name}: {videos} videos in "
                 f"{', '.join(manifest.splits)}", node=node)


def _driver_storage(root: str, marker: str, token: bytes, cfg: StorageConfig) -> Check:
    uri = join(marker, "driver")
    try:
        storage.write_bytes_atomic(uri, token, cfg)
        if storage.read_bytes(uri, cfg) != token:
            return Check("storage", FAIL, f"{uri} read back different bytes",
                         "check that nothing else rewrites this prefix", "driver")
    except UserError as exc:
        return Check("storage", FAIL, str(exc), storage_fix(str(exc), root), "driver")
    return Check("storage", PASS, f"{describe(root, cfg)} writable and readable", node="driver")


def _cleanup(marker: str, cfg: StorageConfig) -> Check | None:
    try:
        storage.delete(marker, cfg)
        if storage.exists(marker, cfg):
            raise UserError(f"{marker} still exists after deleting it")
    except UserError as exc:
        # Training prunes old checkpoints, so it needs delete rights too.
        return Check("storage delete", FAIL, str(exc), storage_fix(str(exc), marker), "driver")
    return None


def _node_checks(nodes, marker, token, data, cfg, system) -> list[Check]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # num_cpus=0: the probe must run even on a busy node or a head started with --num-cpus=0.
    task = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    refs = {}
    for node in nodes:
        gpus = float(node["Resources"].get("GPU", 0))
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ref = task.options(scheduling_strategy=strategy).remote(
            marker, token, node["NodeID"][:12], data, cfg, gpus if system else -1.0)
        refs[node_label(node)] = (ref, gpus)
    checks = []
    deadline = time.monotonic() + NODE_TIMEOUT_S
    for label, (ref, gpus) in refs.items():
        try:
            result = ray.get(ref, timeout=max(deadline - time.monotonic(), 1.0))
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref)
            checks.append(Check("node", FAIL, f"no answer within {NODE_TIMEOUT_S:g} s",
                                "check the node's raylet logs and `ray status`", label))
            continue
        except ray.exceptions.RayError as exc:
            text = str(exc)
            missing = "No module named 'memae_dist" in text
            reason = "memae_dist is not importable on this node" if missing else \
                text.strip().splitlines()[-1][:300]
            checks.append(Check("node", FAIL, reason, _PACKAGE_FIX if missing else
                                "see the node's worker logs", label))
            continue
        checks += _interpret(result, label, marker, data, cfg, system, gpus)
        if marker and result.get("storage") is None:
            checks.append(_driver_reads_node_marker(marker, result["key"], cfg, label))
    return checks


def _driver_reads_node_marker(marker, key, cfg, label) -> Check | None:
    try:
        storage.read_bytes(join(marker, key), cfg)
    except UserError as exc:
        return Check("storage", FAIL, f"the node wrote a marker the driver cannot read: {exc}",
                     "every node must resolve the same storage (same endpoint_url / "
                     "AWS_ENDPOINT_URL, or the same shared mount)", label)
    return None


def _interpret(result, label, marker, data, cfg, system, ray_gpus) -> list[Check]:
    out: list[Check | None] = []
    if system:
        out.append(Check("node", PASS, f"{result['host']}: Ray {result['ray']}, Python "
                         f"{result['python']}, memae-dist {result['memae_dist']}", node=label))
        out.append(gpu_check(result["gpus"], ray_gpus, label))
    if marker:
        err = result.get("storage")
        out.append(Check("storage", FAIL, err, storage_fix(err, marker), label) if err else
                   Check("storage", PASS, "reads the driver's marker, writes its own",
                         node=label))
    if data:
        err = result.get("manifest")
        out.append(Check("manifest", FAIL, err, _manifest_fix(err), label) if err else
                   Check("manifest", PASS, "readable", node=label))
    return [c for c in out if c is not None]


def storage_fix(message: str, uri: str) -> str:
    """The fix for a storage error message from memae_dist.data.storage."""
    if "does not exist" in message:
        return ("create the bucket first (`aws s3 mb s3://BUCKET`, MinIO: `mc mb ALIAS/BUCKET`) "
                "or point --storage at an existing one")
    if "access denied" in message:
        return ("give this node's identity (instance role, or the AWS_* variables from the "
                "Secret) s3:ListBucket, GetObject, PutObject and DeleteObject on the prefix")
    if "unreachable" in message:
        return ("check storage.endpoint_url / AWS_ENDPOINT_URL and that this node can reach "
                "the endpoint (security group, network policy)")
    if "permission denied" in message:
        return "make the folder writable by the user that runs Ray on this node"
    if "not found" in message and not storage.is_remote(uri):
        return ("the folder is not shared between nodes: use s3://BUCKET/PREFIX (or a "
                "filesystem mounted at the same path on every node) for --storage")
    if "not found" in message:
        return ("every node must resolve the same S3 endpoint: set storage.endpoint_url or "
                "the same AWS_ENDPOINT_URL on every node")
    return DOCTOR_HINT


def _manifest_fix(message: str) -> str:
    if "no manifest.json" in message:
        return ("prepare the dataset first (`memae-dist prepare KIND --src SRC --dst URI`) and "
                "pass the folder holding manifest.json as --data")
    return storage_fix(message, "s3://" if "s3://" in message else "")


# ----------------------------------------------------------------------- GPUs


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
