"""``memae-dist demo``: generate synthetic scenes, train MemAE with Ray Train, evaluate.

Everything stays under one output folder: ``data/`` (the prepared synthetic set), ``runs/``
(checkpoints and history), ``metrics.json``, ``frames.csv`` and ``scores.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from memae_dist.config import load_config
from memae_dist.data.manifest import MANIFEST_FILE
from memae_dist.data.storage import join

log = logging.getLogger("memae_dist.demo")


def run_demo(out: Path, workers: int = 2, epochs: int | None = None) -> dict:
    from memae_dist.commands.common import resolve_config_path
    from memae_dist.data.importers.synthetic import SyntheticConfig, generate_synthetic
    from memae_dist.evaluate.run import evaluate_checkpoint
    from memae_dist.runtime import ensure_ray
    from memae_dist.train.trainer import fit

    out = out.resolve()
    data = str(out / "data")
    # Paths quoted so YAML keeps them whole (a " #" would start a comment).
    overrides = [f"data.path={json.dumps(data)}", f"run.storage={json.dumps(str(out / 'runs'))}",
                 f"train.workers={workers}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    # Checked before minutes of data generation.
    cfg = load_config(resolve_config_path("demo"), overrides)
    ensure_ray(cpus_needed=workers)  # before the generator, which would start a smaller Ray
    if not Path(join(data, MANIFEST_FILE)).exists():
        log.info("generating the synthetic set (README, 'The synthetic demo set') into %s", data)
        generate_synthetic(data, SyntheticConfig(seed=0))
    result = fit(cfg)
    return evaluate_checkpoint(result.run_uri, data, out)
