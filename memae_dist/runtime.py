"""Connecting to Ray, or starting a local Ray sized for training plus Ray Data."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from memae_dist.errors import UserError

# The object store is kept small by default: frames travel as compact uint8 blocks, and on a
# laptop Ray's default (30% of RAM per node) would take memory training needs.
DEFAULT_OBJECT_STORE_BYTES = 512 * 1024**2
TCP_TIMEOUT_S = 3.0
# Free space a local Ray needs in its session folder (logs, sockets, spilled objects): with
# less its dashboard failed to start after a minute, as a traceback of Ray's.
MIN_RAY_SCRATCH_BYTES = 64 * 2**20


def ensure_ray(cpus_needed: float = 0.0, address: str | None = None,
               gpus_needed: float = 0.0) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), or start a local Ray.

    A local Ray advertises more logical CPUs than the machine has: logical CPUs are only a
    scheduling budget, and training workers that hold every core would leave Ray Data's read
    tasks nothing, which stalls the stream. ``gpus_needed``: GPUs that must be free at once;
    a local Ray with fewer is refused, since nothing will ever add them (a cluster may).
    """
    import ray

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        # Ray would print a traceback for an HTTP address and retry a dead one for minutes.
        problem = address_problem(target)
        if problem:
            given = "--address" if address else "RAY_ADDRESS"
            raise UserError(f"{problem[0]} ({given}); {problem[1]}")
        with keeping_sigterm_handler():
            ray.init(address=address or None, log_to_driver=True)
        return
    cores = os.cpu_count() or 1
    start_local_ray(max(cores, math.ceil(cpus_needed)) + 2,
                    int(os.environ.get("MEMAE_OBJECT_STORE_BYTES", DEFAULT_OBJECT_STORE_BYTES)))
    have = float(ray.cluster_resources().get("GPU", 0))
    if gpus_needed > have:
        gpus = f"{gpus_needed:g} GPU" + ("" if gpus_needed == 1 else "s")
        raise UserError(f"--gpus-per-worker asks for {gpus} at once, and this "
                        f"machine has {have:g} that Ray can use: drop --gpus-per-worker to run "
                        "on its CPUs, or pass --address of a cluster with GPUs")


def require_torch_gpu(gpus_per_worker: float) -> None:
    """An in-process run (``--workers 0``) uses whatever GPU torch sees, with no Ray to ask for
    one: a GPU asked for that torch does not see is refused, not replaced by the CPU unsaid."""
    import torch

    if gpus_per_worker > 0 and not torch.cuda.is_available():
        raise UserError("--gpus-per-worker with --workers 0 asks for a GPU in this process, and "
                        "torch sees none (no GPU, or a CPU-only torch build): drop "
                        "--gpus-per-worker to run on the CPU")


def local_ray_gone() -> bool:
    """Whether the local Ray this process started was signalled with it, as a SIGTERM sent to
    the whole process group (``timeout``, systemd, a CI cancel) leaves it: its dashboard and
    log monitor exit at once and its GCS stops answering, so any call into Ray waits a minute
    for the GCS, then aborts the process, Ray's own shutdown at exit included. Its processes
    run until Ray shuts down otherwise, so one that has exited tells."""
    try:
        from ray._private import worker

        node = worker._global_node
        if node is None or not node.head:
            return False
        return any(info.process.poll() is not None
                   for infos in node.all_processes.values() for info in infos)
    except Exception:  # noqa: BLE001 - Ray's internals moved: take it as there
        return False


def address_problem(target: str | None) -> tuple[str, str] | None:
    """A quick reason why ``target`` cannot be a Ray address (before a slow ray.init)."""
    if not target or target == "auto" or target.startswith("ray://"):
        return None
    if target.startswith(("http://", "https://")):
        return (f"{target} is a job server (dashboard) address",
                "use it for `ray job submit --address`; memae-dist connects to the GCS "
                "address HOST:6379, or runs as a Ray job itself; without either it starts a "
                "local Ray (unset RAY_ADDRESS)")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return f"bad Ray address {target!r}", "use HOST:PORT, e.g. 10.0.0.5:6379"
    try:
        socket.create_connection((host, int(port)), timeout=TCP_TIMEOUT_S).close()
    except OSError as exc:
        return (f"cannot reach {target}: {exc.strerror or exc}",
                "check the head node's address and that port is open to this machine")
    return None


def start_local_ray(num_cpus: int, object_store_bytes: int, **kwargs) -> None:
    """A private local Ray whose processes find their own state API, and no other.

    Ray Train's placement-group cleaner asks the state API whether the controller is alive. By
    default a process finds that API through the cluster most recently started on the machine
    (``/tmp/ray/ray_current_cluster``): with two local Rays (a sweep and a debug run, tests and
    a benchmark) it asked the other one's dashboard, was told the controller did not exist, and
    removed the placement group, killing a healthy run. ``RAY_API_SERVER_ADDRESS`` is read
    first, and the processes Ray starts inherit it, so it pins this cluster's dashboard.
    """
    import ray

    _check_ray_scratch()
    port = free_port()
    # Only for the processes ray.init spawns (they keep a copy of this environment): left in
    # this process it would also redirect its own `ray job submit` or state calls.
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    try:
        with keeping_sigterm_handler():
            ray.init(
                # "local": never join a cluster that some `ray start` left running here.
                address="local",
                num_cpus=num_cpus,
                object_store_memory=object_store_bytes,
                include_dashboard=True,  # the state API that cleaner needs
                dashboard_host="127.0.0.1",
                dashboard_port=port,
                **{"log_to_driver": True, **kwargs},
            )
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def _check_ray_scratch() -> None:
    # Where Ray puts its session folder (ray._common.utils.get_default_system_temp_dir).
    folder = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):  # Ray makes the folders it needs
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if free < MIN_RAY_SCRATCH_BYTES:
        raise UserError(f"cannot start a local Ray: its session folder {folder}/ray has "
                        f"{free / 2**20:.1f} MiB free ({MIN_RAY_SCRATCH_BYTES // 2**20} MiB "
                        "needed); free some, or set RAY_TMPDIR to a folder on a disk with room")


@contextmanager
def keeping_sigterm_handler() -> Iterator[None]:
    """``ray.init`` makes SIGTERM exit the driver on the spot (and Ray's native handler prints
    a stack); a SIGTERM handler the caller installed (the CLI's cleanup, like Ctrl-C's) is put
    back."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    except SystemExit as exc:
        # Ray's handler, installed part-way through ray.init, exits with the signal's number:
        # a SIGTERM that lands then ends the command as one landing a moment later would.
        if exc.code == signal.SIGTERM and callable(before):
            before(signal.SIGTERM, None)
        raise
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_room_for_data(cpus_for_training: float) -> None:
    """Refuse to start when training workers would leave Ray Data no CPU to read with."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    if total - cpus_for_training < 1.0:
        raise UserError(
            f"the Ray cluster has {total:g} CPUs and the training workers take "
            f"{cpus_for_training:g} (train.workers x train.cpus_per_worker): Ray Data needs at "
            "least 1 free CPU to read clips; lower train.cpus_per_worker (fractions are fine) "
            "or start Ray with more logical CPUs (ray start --num-cpus)"
        )
