"""Storage faults against real S3 servers on loopback.

- An unusable store at start (endpoint down, wrong credentials, missing bucket): every verb
  fails within seconds with one line naming the endpoint or bucket, exit code 2, nothing written.
- The endpoint going down mid-run and coming back: training retries and finishes; the
  checkpoint written before the outage is byte-for-byte intact.
- A checkpoint upload that cannot finish: the run stops, the previous checkpoint stays the one a
  rerun restores, and the rerun completes the run.

The last two put a TCP proxy (``netfault.FaultProxy``) between the CLI and the S3 server.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from memae_dist.data.storage import join, read_bytes
from memae_dist.train.checkpoint import restore_point
from tests.faults.helpers import assert_user_error, memae
from tests.faults.netfault import FaultProxy
from tests.train.test_command import upload_folder

FAST_S = 60  # generous for a loaded machine; a retrying client would take minutes


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A second S3 server that checks credentials (moto with IAM auth on): unknown keys get
    InvalidAccessKeyId, as on AWS or MinIO."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "server.log").open("w")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto did not start"
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


class _WebPage(http.server.BaseHTTPRequestHandler):
    """A web server that is not S3 (a storage product's web console on the wrong port): an
    HTML page for any path, 200 for paths under a bucket named ``console``, else 404."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._page(include_body=True)

    def do_HEAD(self):  # noqa: N802
        self._page(include_body=False)

    def do_PUT(self):  # noqa: N802
        self._page(include_body=True)

    def _page(self, include_body: bool) -> None:
        body = b"<!doctype html><html><body>Console</body></html>"
        self.send_response(200 if self.path.startswith("/console") else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if include_body:
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def web_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WebPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def silent_server():
    """Takes connections and never answers: a hung service, or a port forward to nothing."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held = []
    threading.Thread(target=lambda: [held.append(sock.accept()) for _ in iter(int, 1)],
                     daemon=True).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


VERBS = {
    "prepare": ["prepare", "synthetic", "--dst", "{s3}/data", "--size", "16", "16",
                "--no-progress"],
    "train": ["train", "--config", "demo", "--data", "{s3}/data", "--storage", "{s3}/runs",
              "--name", "r"],
    "evaluate": ["evaluate", "--checkpoint", "{s3}/runs/r", "--data", "{s3}/data", "--out",
                 "{tmp}/eval"],
    "data-info": ["data", "info", "{s3}/data"],
}


@pytest.mark.parametrize("fault", ["endpoint-down", "wrong-credentials", "missing-bucket",
                                   "not-s3", "silent"])
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_unusable_store_fails_fast_naming_it(fault, verb, s3_server, auth_server, web_server,
                                             silent_server, tmp_path):
    bucket = "no-such-bucket-memae"
    endpoint = {"endpoint-down": f"http://127.0.0.1:{_free_port()}",
                "wrong-credentials": auth_server, "missing-bucket": s3_server,
                "not-s3": web_server, "silent": silent_server}[fault]
    args = [a.format(s3=f"s3://{bucket}", tmp=tmp_path) for a in VERBS[verb]]
    t0 = time.monotonic()
    proc = memae(*args, cwd=tmp_path, env={"AWS_ENDPOINT_URL": endpoint})
    elapsed = time.monotonic() - t0
    names = {"endpoint-down": (endpoint, "unreachable"),
             "wrong-credentials": ("access denied", "AWS credentials"),
             "missing-bucket": (bucket, "does not exist"),
             "not-s3": (web_server, "does not answer like an S3 service"),
             "silent": (silent_server, "takes connections but does not answer (no reply in "
                                       "10 s)")}[fault]
    line = assert_user_error(proc, *names)
    assert "dummy-secret" not in proc.stderr + proc.stdout, line
    assert elapsed < FAST_S, (elapsed, line)
    assert not (tmp_path / "eval").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, not even a log


def test_a_web_page_answering_200_is_not_taken_for_s3_replies(web_server, tmp_path):
    """A console whose catch-all route answers 200 for every path would pass for a bucket
    holding every object; its HTML is named as not S3's, before anything is read."""
    proc = memae("data", "info", "s3://console/data", cwd=tmp_path,
                 env={"AWS_ENDPOINT_URL": web_server})
    line = assert_user_error(proc, web_server, "does not answer like an S3 service (HTTP 200")
    assert "JSON" not in line and "dummy-secret" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------- faults in the middle of a run

SMALL = ["--set", "model.num_slots=50", "--set", "data.shuffle_buffer=16",
         "--set", "train.batch_size=8", "--set", "train.max_steps_per_epoch=3",
         "--set", "train.keep_checkpoints=10", "--set", "train.cpus_per_worker=1"]


@pytest.fixture
def proxied(tiny_data, s3_server, s3_bucket, tmp_path):
    """(proxy, data URI, storage URI, env for the CLI): the dataset uploaded, the CLI's S3
    traffic routed through the proxy."""
    bucket = s3_bucket.rsplit("/", 1)[0]
    data, storage = f"{bucket}/data", f"{bucket}/runs"
    upload_folder(tiny_data, data)
    parts = urlsplit(s3_server)
    proxy = FaultProxy(parts.hostname, parts.port)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(AWS_ENDPOINT_URL=proxy.endpoint, MEMAE_OBJECT_STORE_BYTES=str(150 * 2**20))
    yield proxy, data, storage, env
    proxy.close()


def _train(data: str, storage: str, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "memae_dist.cli", "train", "--data", data, "--storage",
            storage, "--name", "R", "--workers", "1", "--epochs", str(epochs), *SMALL, *extra]


def _wait_for_outage(proxy: FaultProxy, proc, log: Path) -> None:
    deadline = time.monotonic() + 900
    while not proxy.tripped.wait(0.3):
        assert proc.poll() is None, _excerpt(log)
        assert time.monotonic() < deadline, "the run never reached checkpoint 2"


def _excerpt(log: Path) -> str:
    """The end of a run's log without Ray Data's progress bars (for assertion messages)."""
    lines = [ln for ln in log.read_text().splitlines()
             if ln.strip() and "row/s" not in ln and "\x1b[A" not in ln]
    return "\n".join(lines)[-4000:]


def _digest(uri: str) -> str:
    return hashlib.sha256(read_bytes(uri)).hexdigest()


def test_endpoint_outage_mid_run_is_retried_and_the_run_finishes(proxied, tmp_path):
    proxy, data, storage, env = proxied
    run = join(storage, "R")
    log_path = tmp_path / "train.log"
    # The server dies at the first request for checkpoint 2 (so checkpoint 1 is complete): open
    # connections reset, every new one reset at once (counted). Striking at a point of the run,
    # not after a timer, keeps the test meaningful however fast the machine trains.
    proxy.when_sent(b"checkpoint_epoch_0002", lambda: proxy.down(count=True))
    with log_path.open("w") as log:
        # One worker-group restart allowed, as a production run would set it: the retries
        # should absorb the outage on their own (asserted below), the restart is the fallback.
        proc = subprocess.Popen(_train(data, storage, 5, "--set", "train.max_failures=1"),
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait_for_outage(proxy, proc, log_path)
        first = join(run, "checkpoint_epoch_0001", "state.pt")
        before = _digest(first)  # the test itself reaches the server directly
        time.sleep(10)
        assert proc.poll() is None, _excerpt(log_path)
        proxy.up()
        rc = proc.wait(timeout=900)
    out = log_path.read_text()
    assert rc == 0, _excerpt(log_path)
    history = json.loads(read_bytes(join(run, "history.json")))
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    # Absorbed by retries with backoff (no restart in every run seen here); at most the one
    # allowed worker-group restart from the last checkpoint.
    assert history[-1]["run_starts"] <= 2, history[-1]
    assert _digest(first) == before  # the checkpoint from before the outage is intact
    assert proxy.refused > 0  # the run did hit the outage, and rode it out
    assert "Traceback" not in out.split("epoch 5/5")[-1]


def test_failed_checkpoint_upload_keeps_the_previous_one(proxied, tmp_path):
    proxy, data, storage, env = proxied
    run = join(storage, "R")
    cmd = _train(data, storage, 3)
    log_path = tmp_path / "first.log"
    with log_path.open("w") as log:
        # From checkpoint 2 on, requests and shard reads still pass; a multi-MB state.pt upload
        # never does.
        proxy.when_sent(b"checkpoint_epoch_0002", lambda: proxy.cut_uploads_over(2 * 2**20))
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        rc = proc.wait(timeout=900)
    assert proxy.tripped.is_set(), _excerpt(log_path)
    first = log_path.read_text()
    assert rc != 0, _excerpt(log_path)
    assert proxy.resets > 0
    assert (restore_point(run) or "").endswith("checkpoint_epoch_0001")
    last_line = [ln for ln in first.splitlines() if ln.startswith("memae-dist: error: ")]
    assert last_line and "checkpoint" in last_line[-1], first[-3000:]

    proxy.cut_uploads_over(None)
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    history = json.loads(read_bytes(join(run, "history.json")))
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["run_starts"] == 2
