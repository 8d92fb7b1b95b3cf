"""Doctor checks of the run storage and the dataset, from the driver and from every node.

A marker goes from the driver to each node and back; every failure names its fix.
"""

from __future__ import annotations

import time
import uuid

from memae_dist.config import ExperimentConfig
from memae_dist.data import storage
from memae_dist.data.storage import StorageConfig, describe, join
from memae_dist.doctor.checks import DOCTOR_HINT, FAIL, PASS, SKIP, Check
from memae_dist.doctor.cluster import gpu_check, node_label
from memae_dist.errors import UserError
from memae_dist.node_probe import gpu_info, probe_node

NODE_TIMEOUT_S = 120.0  # a node's first task may have to set up the job's runtime env
_PACKAGE_FIX = ("ship the package with the job (`ray job submit --working-dir . --runtime-env "
                "cluster/runtime_env.yaml`) or install memae-dist in the node image")


def storage_root(cfg: ExperimentConfig) -> str:
    """The run storage as the driver sees it (a local path made absolute, as fit() does)."""
    return storage.absolute(cfg.run.storage)  # also refuses a mistyped "s3:/..."


def storage_and_node_checks(cfg: ExperimentConfig, nodes: list[dict], *,
                            system: bool) -> list[Check]:
    """Marker round trip and manifest read on the driver, then on each of ``nodes``."""
    root, data, scfg = storage_root(cfg), cfg.data.path, cfg.storage
    marker = join(root, f".memae-doctor-{uuid.uuid4().hex[:12]}")
    token = uuid.uuid4().bytes
    checks: list[Check] = []
    created = storage.first_missing_folder(root)  # the checks must not leave empty folders behind
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
        if created:
            storage.remove_empty_folders(storage.local_path(root), created)
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
        return Check("storage", FAIL, str(exc), storage_fix(str(exc), root, driver=True),
                     "driver")
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
            # Left to run, not cancelled: it holds no CPU, and a cancel that meets the probe
            # finishing at that moment aborts the driver inside Ray (ray-project/ray#54798).
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
    here = storage.endpoint_name(cfg)
    remote = any(u and storage.is_remote(u) for u in (marker, data))
    # A node that resolves another endpoint fails as if the bucket were missing there: the fix
    # is the endpoint, not a new bucket on the wrong server.
    other = remote and result.get("endpoint", here) != here
    elsewhere = (f"this node resolves S3 endpoint {result.get('endpoint')}, the driver {here}: "
                 "set the same AWS_ENDPOINT_URL on every node, or storage.endpoint_url")
    if system:
        out.append(Check("node", PASS, f"{result['host']}: Ray {result['ray']}, Python "
                         f"{result['python']}, memae-dist {result['memae_dist']}", node=label))
        out.append(gpu_check(result["gpus"], ray_gpus, label))
    if marker:
        err = result.get("storage")
        out.append(Check("storage", FAIL, err, elsewhere if other else storage_fix(err, marker),
                         label) if err else
                   Check("storage", PASS, "reads the driver's marker, writes its own",
                         node=label))
    if data:
        err = result.get("manifest")
        out.append(Check("manifest", FAIL, err, elsewhere if other else _manifest_fix(err),
                         label) if err else
                   Check("manifest", PASS, "readable", node=label))
    return [c for c in out if c is not None]


def storage_fix(message: str, uri: str, driver: bool = False) -> str:
    """The fix for a storage error message from memae_dist.data.storage (``driver``: the
    failure was this machine's own, not a node's)."""
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
    if "in the way" in message:
        return "a file stands where the folder would go: point --storage at a folder"
    if "not found" in message and driver and not storage.is_remote(uri):
        return "no folder can be made there (a read-only or virtual filesystem): choose another"
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
    if "format_version" in message or "manifest (format=" in message:
        return ("prepare the dataset again with this memae-dist (`memae-dist prepare KIND --src "
                "SRC --dst URI`), or run the memae-dist version that wrote it")
    return storage_fix(message, "s3://" if "s3://" in message else "")
