"""Soak test (opt-in: ``pytest -m soak tests/faults/test_soak.py``): import + train + score,
again and again against the S3 server, for ``MEMAE_SOAK_SECONDS`` (default 600), while the
endpoint drops out for ``OUTAGE_S`` seconds every ``OUTAGE_EVERY_S`` seconds.

It reports, in ``MEMAE_SOAK_REPORT`` (default ``soak_report.json`` in the test's folder) and on
stdout: iterations, the errors that escaped every retry, the outages injected and the
connections they cut, seconds per iteration, and memory (RSS) of this driver process and of
the whole local Ray cluster after every iteration. It fails on any escaped error or when the
driver grows by more than ``MAX_GROWTH_MB`` between the second and the last iteration.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from tests.faults.netfault import FaultProxy

pytestmark = pytest.mark.soak
OUTAGE_S, OUTAGE_EVERY_S = 2.0, 30.0
MAX_GROWTH_MB = 300


def _rss_mb(proc: psutil.Process, tree: bool) -> float:
    procs = [proc, *proc.children(recursive=True)] if tree else [proc]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def _outages(proxy: FaultProxy, stop: threading.Event, counter: list[int]) -> None:
    while not stop.wait(OUTAGE_EVERY_S):
        proxy.down()
        counter[0] += 1
        time.sleep(OUTAGE_S)
        proxy.up()


def _iteration(i: int, root: str, storage) -> None:
    from memae_dist.config import load_config
    from memae_dist.data.importers.synthetic import SyntheticConfig, generate_synthetic
    from memae_dist.evaluate.batch_score import ScoreConfig, score_dataset
    from memae_dist.train.trainer import fit

    data = f"{root}/it{i}/data"
    generate_synthetic(data, SyntheticConfig(seed=i, size=(16, 16), train_videos=2,
                                             test_videos=1, frames_per_video=40),
                       workers=2, progress=False)
    cfg = load_config(None, [
        f"data.path={data}", f"run.storage={root}/it{i}/runs", "run.name=soak",
        "model.num_slots=50", "train.epochs=2", "train.workers=1", "train.batch_size=8",
        "train.max_steps_per_epoch=3", "data.shuffle_buffer=16", "train.tensorboard=false",
    ])
    result = fit(cfg)
    score_dataset(result.checkpoint_uri, data, f"{root}/it{i}/scores.parquet",
                  ScoreConfig(workers=1, progress=False), storage=storage)


def test_soak(s3_server, s3_bucket, tmp_path):
    import ray

    from memae_dist.data.storage import StorageConfig

    seconds = float(os.environ.get("MEMAE_SOAK_SECONDS", "600"))
    report_path = Path(os.environ.get("MEMAE_SOAK_REPORT", tmp_path / "soak_report.json"))
    parts = urlsplit(s3_server)
    proxy = FaultProxy(parts.hostname, parts.port)
    # Everything, Ray workers included, reaches S3 through the proxy.
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
    from memae_dist.runtime import start_local_ray

    if ray.is_initialized():
        ray.shutdown()
    start_local_ray(4, 256 * 2**20, logging_level="WARNING")
    stop, outages = threading.Event(), [0]
    threading.Thread(target=_outages, args=(proxy, stop, outages), daemon=True).start()
    me, rows, errors = psutil.Process(), [], []
    t_end = time.monotonic() + seconds
    try:
        i = 0
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            try:
                _iteration(i, s3_bucket.rsplit("/", 1)[0] + "/soak", StorageConfig())
            except Exception as exc:  # a soak counts failures rather than stopping at one
                errors.append({"iteration": i, "error": f"{type(exc).__name__}: {exc}"[:500]})
            rows.append({"iteration": i, "seconds": round(time.monotonic() - t0, 1),
                         "driver_rss_mb": round(_rss_mb(me, tree=False), 1),
                         "cluster_rss_mb": round(_rss_mb(me, tree=True), 1)})
            print(json.dumps(rows[-1]), flush=True)
            i += 1
    finally:
        stop.set()
        ray.shutdown()
        os.environ["AWS_ENDPOINT_URL"] = s3_server
    growth = rows[-1]["driver_rss_mb"] - rows[min(1, len(rows) - 1)]["driver_rss_mb"]
    report = {"seconds": seconds, "iterations": len(rows), "errors": errors,
              "outages_injected": outages[0], "connections_cut": proxy.resets,
              "driver_growth_mb_after_warmup": round(growth, 1), "rows": rows}
    report_path.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    proxy.close()
    assert not errors, errors
    assert growth < MAX_GROWTH_MB, report
