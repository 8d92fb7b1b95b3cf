"""A real two-node Ray cluster on loopback, started with ``ray start`` like a real one.

Each node gets its own free ports and a private temp dir, so it never meets another Ray on the
machine; shutting down kills exactly the processes whose command line names that temp dir
(``ray stop`` would stop every Ray of this user). Token auth is off for the nodes and for every
client process, since fresh Ray clusters otherwise expect a token.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
OBJECT_STORE_BYTES = 150_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for nodes and clients: this venv first on PATH, no token auth."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra or {})
    return env


class LocalCluster:
    """``ray start --head`` plus one joined node, with a job server on ``self.job_address``."""

    def __init__(self, head_cpus: int = 3, worker_cpus: int = 2):
        self.temp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: unix socket paths
        self.env = client_env()
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dashboard_port = free_port()
        self.job_address = f"http://127.0.0.1:{self.dashboard_port}"
        self._start(["--head", f"--port={self.gcs.split(':')[1]}", "--include-dashboard=true",
                     "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                     f"--ray-client-server-port={free_port()}"], head_cpus, "head")
        self._start([f"--address={self.gcs}"], worker_cpus, "worker")
        self.wait_for_nodes(2)

    def _start(self, args: list[str], cpus: int, name: str) -> None:
        cmd = [str(BIN / "ray"), "start", *args, "--node-ip-address=127.0.0.1",
               f"--num-cpus={cpus}", "--num-gpus=0",
               f"--object-store-memory={OBJECT_STORE_BYTES}",
               f"--temp-dir={self.temp}/{name}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}",
               "--min-worker-port=0", "--max-worker-port=0"]
        run = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        if run.returncode:
            raise RuntimeError(f"ray start ({name}) failed:\n{run.stdout}\n{run.stderr}")

    def api(self, path: str) -> dict:
        with urllib.request.urlopen(self.job_address + path, timeout=10) as resp:
            return json.loads(resp.read())

    def wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                nodes = self.api("/nodes?view=summary")["data"]["summary"]
                if sum(node["raylet"]["state"] == "ALIVE" for node in nodes) >= n:
                    return
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(2)
        raise TimeoutError(f"fewer than {n} nodes came up within {timeout} s")

    def submit(self, entrypoint: list[str], cwd: Path, *, runtime_env: str,
               submission_id: str, timeout: float = 420,
               wait: bool = True) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir .`` from ``cwd``; waits for the job unless not
        ``wait``, returns the CLI's result."""
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.job_address,
               "--working-dir", ".", "--runtime-env", runtime_env,
               "--submission-id", submission_id, *([] if wait else ["--no-wait"]),
               "--", *entrypoint]
        return subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def stop(self, submission_id: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """``ray job stop``: returns once the job has stopped."""
        cmd = [str(BIN / "ray"), "job", "stop", "--address", self.job_address, submission_id]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def job(self, submission_id: str) -> dict:
        return self.api(f"/api/jobs/{submission_id}")

    def logs(self, submission_id: str) -> str:
        return self.api(f"/api/jobs/{submission_id}/logs")["logs"]

    def pids(self) -> list[int]:
        """Processes whose command line names this cluster's temp dir (all of its daemons)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if self.temp.encode() in cmdline:
                found.append(int(entry))
        return found

    def shutdown(self) -> None:
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while pids and time.monotonic() < deadline:
                time.sleep(0.5)
                pids = self.pids()
            if not pids:
                break
        shutil.rmtree(self.temp, ignore_errors=True)
