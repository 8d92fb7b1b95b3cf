"""What ``memae-dist doctor`` runs on each node: versions, GPUs, a storage round trip, the manifest.

Kept apart from :mod:`memae_dist.doctor` (which turns the results into checks and fixes) so a
probe task imports little: no torch, and only the storage code every node needs anyway.
"""

from __future__ import annotations

import socket

from memae_dist.data import storage
from memae_dist.data.storage import StorageConfig, join
from memae_dist.errors import UserError


def probe_node(marker: str | None, token: bytes, key: str, data: str, cfg: StorageConfig,
               ray_gpus: float) -> dict:
    """Runs on one node; error texts are returned, not raised, so every node reports.

    ``marker``: the folder holding the driver's marker ``driver`` (content ``token``); the node
    reads it back and writes its own as ``key``. ``ray_gpus`` < 0 skips the GPU probe.
    """
    import platform

    import ray

    import memae_dist

    out = {"key": key, "host": socket.gethostname(), "ray": ray.__version__,
           "python": platform.python_version(), "memae_dist": memae_dist.__version__,
           "gpus": gpu_info(ray_gpus) if ray_gpus >= 0 else None, "storage": None,
           "manifest": None, "endpoint": storage.endpoint_name(cfg)}
    if any(u and storage.is_remote(u) for u in (marker, data)):
        reason = storage.unreachable_reason(cfg)
        if reason:  # unreachable from this node: both checks fail with this reason
            out["storage"] = out["manifest"] = reason
            return out
    if marker:
        try:
            if storage.read_bytes(join(marker, "driver"), cfg) != token:
                out["storage"] = "the driver's marker reads back different bytes here"
            else:
                storage.write_bytes_atomic(join(marker, key), token, cfg)
        except UserError as exc:
            out["storage"] = str(exc)
    if data:
        from memae_dist.data.manifest import load_manifest

        try:
            load_manifest(data, cfg)
        except UserError as exc:
            out["manifest"] = str(exc)
    return out


def gpu_info(ray_gpus: float) -> dict:
    """GPUs nvidia-smi lists and torch sees; torch runs in a subprocess so this worker never
    initialises CUDA (Ray reuses workers, and a CUDA context would outlive the probe)."""
    import shutil
    import subprocess
    import sys

    info: dict = {"nvidia_smi": None, "torch": None, "cuda": None, "error": None}
    smi = shutil.which("nvidia-smi")
    try:
        if smi:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = sum(ln.startswith("GPU ") for ln in listing.stdout.splitlines())
        if ray_gpus > 0 or info["nvidia_smi"]:
            code = "import torch; print(torch.cuda.device_count(), torch.version.cuda)"
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 timeout=180)
            if run.returncode:
                info["error"] = (run.stderr.strip().splitlines() or ["torch failed"])[-1][:300]
            else:
                count, cuda = run.stdout.split()[-2:]
                info["torch"], info["cuda"] = int(count), None if cuda == "None" else cuda
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        info["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return info
