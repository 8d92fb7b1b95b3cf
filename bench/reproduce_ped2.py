"""Reproduce the MemAE paper's UCSD Ped2 result and its ablation with the product's own CLI.

For each (variant, seed) of the chosen profile this runs exactly what a user would run:

    memae-dist prepare ucsd-ped2 --src PED2 --dst WORK/data_<size> --size S S
    memae-dist train --config RECIPE --data ... --storage WORK/runs --name V_sN \
        --set model.variant=V --set train.seed=N
    memae-dist evaluate --checkpoint WORK/runs/V_sN --data ... --error mse --out WORK/eval/V_sN

and once more with ``--error mae`` (the official test script's error measure for MemAE, and
the Ped2 recipes' own), then collects frame AUC (paper protocol and the others), where the paper
protocol loses AUC (mis-ranked frame pairs within and across videos), the memory's last-epoch
attention entropy, training clips/s and wall time into ``bench/results/ped2_<profile>.json``
for the Ped2 table of ``bench/RESULTS.md``.

Profiles:
- ``lite``: 64x64, ``configs/ped2_lite.yaml`` (N = 500, lambda 1/N, window stride 2, 40
  epochs, lr 3e-4, global batch 4, one worker with two cores): about an hour of two quiet cores
  per variant in bf16 on a CPU with AMX tiles (which this script then uses; 60-65 s an epoch),
  about 1.5 hours in fp32; 3 seeds of memae, 1 of each ablation.
- ``paper``: 256x256, ``configs/ped2.yaml`` (the official recipe, 100 epochs): for a GPU node
  with Ray (``bench/ped2_gpu.py`` trains the same recipe on a GPU node without it).

A finished (variant, seed) is not re-run: its evaluation's ``metrics.json`` is reused, so an
interrupted reproduction continues where it stopped (training itself resumes by run name). With
``--only``, the results file still lists every finished run of the plan in the work folder.
Ctrl-C or SIGTERM (to this script alone, too) is passed on to the running step, which stops
cleanly; the same command then continues.

``--tabulate FILE ...`` reads the runs of earlier results files instead of training (a run
named twice, by variant and seed, counts once) and prints, or writes to ``--json``, their
summaries: the table's means and spreads, recomputed from what was measured.

Usage: python bench/reproduce_ped2.py [--profile lite|paper] [--src ../shared/data/ucsd_ped2]
       [--work bench/.work/ped2] [--only memae:0,ae:0] [--set KEY=VALUE ...] [--size S]
       python bench/reproduce_ped2.py --tabulate RESULTS.json ... [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from memae_dist.data.storage import write_bytes_atomic
from memae_dist.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"ae": 0.917, "memae_nonsparse": 0.929, "memae": 0.941}
# The official test script scores a window differently per model class: the AE by the mean
# squared error of its [0, 1] frames, MemAE (and so MemAE-nonSparse, the same class without
# shrinkage) by the per-pixel L2 norm over colour channels of its [-1, 1] frames, averaged,
# which for grey frames is the mean absolute error. The scale is lost to the per-video min-max;
# the measure is not. "official" reads each run with its variant's measure.
OFFICIAL_ERROR = {"ae": "mse", "memae_nonsparse": "mae", "memae": "mae"}
SUMMARIES = {"summary": "auc_paper", "summary_mae": "auc_paper_mae",
             "summary_official": "auc_paper_official"}
PROFILES = {
    "lite": {"recipe": "ped2_lite", "size": 64,
             "runs": [("memae", 0), ("memae", 1), ("memae", 2), ("ae", 0),
                      ("memae_nonsparse", 0)]},
    "paper": {"recipe": "ped2", "size": 256,
              "runs": [("memae", 0), ("ae", 0), ("memae_nonsparse", 0)]},
}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "memae_dist.cli", *args]


def run(cmd: list[str], log: Path) -> float:
    """Run one CLI step, its output appended to ``log``; returns its wall time in seconds."""
    t0 = time.perf_counter()
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd[2:]) + "\n")
        out.flush()
        proc = None
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
            code = proc.wait()
        except KeyboardInterrupt:
            if proc is not None:
                if not _step_got_it():
                    # SIGTERM, which the CLI always handles (a training run then resumes from
                    # its last checkpoint): a shell starts background jobs with SIGINT
                    # ignored, and their children inherit that.
                    proc.send_signal(signal.SIGTERM)
                proc.wait()
            sys.exit(f"interrupted: {' '.join(cmd[2:])}; the same command continues")
    if code != 0:
        sys.exit(f"step failed (exit {code}): {' '.join(cmd[2:])}; see {log}")
    return time.perf_counter() - t0


_STOPS: list[int] = []


def _stop(signum, frame) -> None:
    _STOPS.append(signum)
    raise KeyboardInterrupt


def forward_stops() -> None:
    """Ctrl-C, and SIGINT or SIGTERM sent to this script alone (setsid, a job runner), stop
    the running step cleanly rather than leave it running or kill it."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)


def _step_got_it() -> bool:
    """A Ctrl-C at the terminal reaches the whole foreground process group, the step included;
    a second signal would cut its clean stop short."""
    if not _STOPS or _STOPS[-1] != signal.SIGINT:
        return False
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (AttributeError, OSError, ValueError):  # no terminal: sent to this script alone
        return False


def prepare(args, size: int, log: Path) -> str:
    data = args.work / f"data_{size}"
    if not (data / "manifest.json").exists():
        run(cli("prepare", "ucsd-ped2", "--src", str(args.src), "--dst", str(data),
                "--size", str(size), str(size), "--no-progress"), log)
    return str(data)


def train_and_evaluate(args, profile: dict, data: str, variant: str, seed: int) -> dict:
    name = f"{variant}_s{seed}"
    out = args.work / "eval" / name
    metrics_file = out / "metrics.json"
    log = args.work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    runs = args.work / "runs"
    # Wall times are measured once and kept beside the evaluation, so a run read back later
    # (an interrupted reproduction, or another --only) reports what was measured.
    walls_file = out / "walls.json"
    walls = {"train_wall_s": None, "eval_wall_s": None}
    if not metrics_file.exists():
        cmd = cli("train", "--config", profile["recipe"], "--data", data, "--storage",
                  str(runs), "--name", name, "--set", f"model.variant={variant}",
                  "--set", f"train.seed={seed}")
        for item in args.set:
            cmd += ["--set", item]
        walls["train_wall_s"] = run(cmd, log)
        # MSE named, not left to the recipe: the two evaluations must stay MSE and MAE.
        walls["eval_wall_s"] = run(cli("evaluate", "--checkpoint", str(runs / name), "--data",
                                       data, "--error", "mse", "--out", str(out),
                                       "--no-progress"), log)
        write_bytes_atomic(str(walls_file), json.dumps(walls).encode())
    else:
        check_reusable(args, profile, runs / name, variant, seed)
        if walls_file.exists():
            walls = json.loads(walls_file.read_text())
    # The official MemAE test script's error (OFFICIAL_ERROR).
    mae_file = args.work / "eval" / f"{name}_mae" / "metrics.json"
    if not mae_file.exists():
        run(cli("evaluate", "--checkpoint", str(runs / name), "--data", data, "--error", "mae",
                "--out", str(mae_file.parent), "--no-progress"), log)
    metrics = json.loads(metrics_file.read_text())
    mae = json.loads(mae_file.read_text())
    history = json.loads((runs / name / "history.json").read_text())
    steady = [row["clips_per_s"] for row in history[1:]] or [history[0]["clips_per_s"]]
    epochs_s = sum(row["epoch_s"] for row in history)
    return with_official({
        "variant": variant, "seed": seed,
        "auc_paper": metrics["auc_paper"], "auc_micro": metrics.get("auc_micro"),
        "auc_per_video_mean": metrics.get("auc_per_video_mean"),
        "auc_paper_mae": mae["auc_paper"],
        "auc_per_video_mean_mae": mae.get("auc_per_video_mean"),
        "epochs": len(history), "train_clips_per_s": statistics.median(steady),
        "train_wall_s": walls["train_wall_s"] or epochs_s,
        # All epochs' time, also those of earlier invocations when the run was resumed.
        "train_epochs_s": epochs_s,
        "eval_wall_s": walls["eval_wall_s"],
        "final_loss": history[-1]["loss"],
        "slots_used": history[-1].get("slots_used"),
        # Without a memory there is no attention to measure: the history's entropy column is
        # then the zero loss term.
        "per_query_entropy": (history[-1].get("entropy")
                              if ModelConfig(variant=variant).uses_memory else None),
        **pairs_lost(metrics),
        **{f"{key}_mae": value for key, value in pairs_lost(mae).items()},
    })


def with_official(row: dict) -> dict:
    """``row`` with ``auc_paper_official``: its AUC under the official script's error."""
    key = "auc_paper_mae" if OFFICIAL_ERROR[row["variant"]] == "mae" else "auc_paper"
    return {**row, "auc_paper_official": row[key]}


# What a finished run must share with this invocation's plan to be reported as part of it.
SAME = ("model.variant", "train.seed", "train.epochs", "train.lr", "train.batch_size",
        "data.window", "data.stride")
SAME_MEMORY = {"memae": ("model.num_slots", "model.entropy_weight", "model.shrink_threshold"),
               "memae_nonsparse": ("model.num_slots",), "ae": ()}


def check_reusable(args, profile: dict, run: Path, variant: str, seed: int) -> None:
    """Stop if the finished run ``run`` was trained with other settings than this invocation
    asks for (an older recipe, other --set values): its numbers would be reported as this
    plan's."""
    from memae_dist.commands.common import resolve_config_path
    from memae_dist.config import load_config
    from memae_dist.train.checkpoint import latest_checkpoint, read_checkpoint_config

    want = load_config(resolve_config_path(profile["recipe"]),
                       [f"model.variant={variant}", f"train.seed={seed}", *args.set]).to_dict()
    ckpt = latest_checkpoint(str(run))
    if ckpt is None:
        sys.exit(f"{run} has no checkpoint, but its evaluation exists; delete the evaluation "
                 "to train it again")
    got = read_checkpoint_config(ckpt)
    differ = [f"{key} {lookup(got, key)} (wanted {lookup(want, key)})"
              for key in SAME + SAME_MEMORY[variant]
              if lookup(got, key) != lookup(want, key)]
    if differ:
        sys.exit(f"{run} was trained with other settings: {', '.join(differ)}; use another "
                 "--work folder, or the same --set flags as that run")


def lookup(tree: dict, dotted: str):
    """The setting ``dotted`` of a config tree; None where an older checkpoint lacks it."""
    from memae_dist.tune.expr import lookup as config_value

    try:
        return config_value(tree, dotted)
    except ValueError:
        return None


def pairs_lost(metrics: dict) -> dict:
    """Where the paper protocol's AUC goes: ``1 - auc_paper`` is the share of (abnormal, normal)
    frame pairs ranked wrongly after per-video min-max normalisation, split here into pairs of
    frames from the same video (the model's ranking within a video) and from different videos
    (what the normalisation does to the pooled ranking). Each video's own AUC counts its
    wrongly ranked pairs, so the split follows from the evaluation's metrics alone."""
    videos = metrics["per_video"]
    pairs = [v["n_abnormal"] * (v["n_frames"] - v["n_abnormal"]) for v in videos]
    abnormal = sum(v["n_abnormal"] for v in videos)
    total = abnormal * (sum(v["n_frames"] for v in videos) - abnormal)
    within = sum((1 - v["auc"]) * n for v, n in zip(videos, pairs) if n) / total
    return {"auc_lost_within_videos": within,
            "auc_lost_across_videos": 1 - metrics["auc_paper"] - within}


def finished(args, name: str) -> bool:
    """Both evaluations of run ``name`` exist in the work folder."""
    return all((args.work / "eval" / n / "metrics.json").exists() for n in (name, f"{name}_mae"))


def summarise(rows: list[dict], key: str = "auc_paper") -> dict:
    out = {}
    for variant in PAPER:
        aucs = [r[key] for r in rows if r["variant"] == variant]
        if aucs:
            out[variant] = {"mean": statistics.fmean(aucs), "n": len(aucs),
                            "std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                            "spread": max(aucs) - min(aucs), "paper": PAPER[variant]}
    return out


def summaries(rows: list[dict]) -> dict:
    return {name: summarise(rows, key) for name, key in SUMMARIES.items()}


def tabulate(files: list[Path]) -> dict:
    """The runs of earlier results files, each (variant, seed) once, and their summaries."""
    rows, seen = [], set()
    for path in files:
        try:
            runs = json.loads(path.read_text())["runs"]
        except (OSError, ValueError, KeyError) as exc:
            sys.exit(f"--tabulate: {path} is not a results file of this script ({exc})")
        for row in runs:
            if (row["variant"], row["seed"]) not in seen:
                seen.add((row["variant"], row["seed"]))
                rows.append(with_official(row))
    return {"runs": rows, **summaries(rows), "files": [str(p) for p in files],
            "command": "python bench/reproduce_ped2.py " + " ".join(sys.argv[1:])}


def machine() -> str:
    from memae_dist.train.precision import cpu_has_native

    return (f"{platform.machine()}, {os.cpu_count()} cores, AMX bf16: {cpu_has_native('bf16')}, "
            f"Python {platform.python_version()}")


def machine_overrides(profile: str, user_sets: list[str]) -> list[str]:
    """bf16 autocast for ``lite`` on a CPU with AMX tiles, unless the command sets a precision.

    There it trains the same model 2.4x faster than fp32 (bench/RESULTS.md, "CPU layouts");
    the recipe itself stays fp32, because without AMX bf16 is slower. Recorded in the results
    file's overrides like any --set."""
    from memae_dist.train.precision import cpu_has_native

    if profile != "lite" or any(s.startswith("train.precision=") for s in user_sets):
        return []
    return ["train.precision=bf16"] if cpu_has_native("bf16") else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="lite")
    parser.add_argument("--src", type=Path, default=ROOT.parent / "shared/data/ucsd_ped2")
    parser.add_argument("--work", type=Path, default=ROOT / "bench/.work/ped2")
    parser.add_argument("--only", default="", help="comma list of VARIANT:SEED to run")
    parser.add_argument("--set", action="append", default=[], help="extra recipe override")
    parser.add_argument("--size", type=int, default=None,
                        help="frame size (square) instead of the profile's, to study resolution")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tabulate", type=Path, nargs="+", metavar="RESULTS",
                        help="summarise earlier results files instead of training")
    args = parser.parse_args()
    forward_stops()
    if args.tabulate:
        result = tabulate(args.tabulate)
        if args.json:
            write_bytes_atomic(str(args.json), json.dumps(result, indent=2).encode())
        print(json.dumps({name: result[name] for name in SUMMARIES}, indent=2))
        return
    profile = PROFILES[args.profile]
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    selected = profile["runs"]
    if args.only:
        selected = [(v, int(s)) for v, s in (item.split(":") for item in args.only.split(","))]
    args.set = machine_overrides(args.profile, args.set) + args.set
    size = args.size or profile["size"]
    data = prepare(args, size, args.work / "prepare.log")
    rows = []
    for variant, seed in selected:
        rows.append(train_and_evaluate(args, profile, data, variant, seed))
        print(json.dumps(rows[-1]), flush=True)
    # The results file describes every finished run of the plan, not only this invocation's:
    # runs finished earlier in the same work folder are read back (nothing is retrained).
    for variant, seed in profile["runs"]:
        if (variant, seed) not in selected and finished(args, f"{variant}_s{seed}"):
            rows.append(train_and_evaluate(args, profile, data, variant, seed))
    result = {"profile": args.profile, "recipe": profile["recipe"], "size": size,
              "overrides": args.set, "machine": machine(), "runs": rows,
              **summaries(rows),
              "command": "python bench/reproduce_ped2.py " + " ".join(sys.argv[1:])}
    target = args.json or ROOT / "bench/results" / f"ped2_{args.profile}.json"
    write_bytes_atomic(str(target), json.dumps(result, indent=2).encode())
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
