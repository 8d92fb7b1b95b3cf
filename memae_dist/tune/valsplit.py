"""A labelled validation split carved out of the test videos (anomalib's ``from_test`` mode).

Datasets such as UCSD Ped2 have no labelled validation data: anomalies appear only in the test
videos. Tuning on the test videos and then reporting their AUC would be optimistic, so some
labelled test videos are *moved* into a ``val`` split: the sweep optimises AUC on those, and the
final AUC is computed once on the remaining, untouched test videos.

The carve rewrites the dataset's ``manifest.json`` only (atomically): the moved videos keep
their shards under ``test/``, so no frame is copied. It is recorded in the manifest
(``"val_from_test"``), a rerun with the same selection is a no-op and a different selection is
refused. Re-importing the dataset (``prepare``) writes a fresh manifest without the carve.
"""

from __future__ import annotations

import json

from memae_dist.config import ExperimentConfig, from_dict
from memae_dist.data import storage
from memae_dist.data.manifest import MANIFEST_FILE, Manifest, load_manifest
from memae_dist.data.storage import StorageConfig
from memae_dist.errors import UserError

CARVE_KEY = "val_from_test"


def parse_selection(spec: str) -> int | list[str]:
    """``"2"`` -> the first 2 labelled test videos; ``"01,04"`` -> those videos by name.

    Datasets number their videos "01", "02", ...: a leading zero or a comma makes a name."""
    spec = spec.strip()
    if spec.isdigit() and (spec == "0" or not spec.startswith("0")):
        count = int(spec)
        if count < 1:
            raise UserError(f"--val-from-test must be a count >= 1 or video names, got {spec!r}")
        return count
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UserError(f"--val-from-test must be a count or comma-separated names, got {spec!r}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # it would be recorded in the manifest as given, and fix every later selection
        raise UserError(f"--val-from-test {spec}: names {', '.join(twice)} more than once")
    return names


def carve_val_from_test(
    dataset_uri: str,
    selection: int | list[str],
    *,
    split: str = "val",
    source: str = "test",
    storage_cfg: StorageConfig | None = None,
) -> list[str]:
    """Move the selected labelled ``source`` videos into ``split``; returns their names."""
    if split == source:
        raise UserError(f"data.val_split={split} with --val-from-test: the validation split "
                        f"is carved out of '{source}' and cannot be '{source}' itself; leave "
                        "data.val_split unset (the carved split is then 'val')")
    manifest = load_manifest(dataset_uri, storage_cfg)
    uri = storage.join(dataset_uri, MANIFEST_FILE)
    raw = json.loads(storage.read_bytes(uri, storage_cfg))
    done = raw.get(CARVE_KEY)
    if done is not None:
        return _check_same(done, selection, manifest, split, uri)
    if split in manifest.splits:
        raise UserError(f"{uri} already has a '{split}' split that was not carved from "
                        f"'{source}': drop --val-from-test to validate on it as it is, or "
                        "set data.val_split to a new name")
    chosen = _choose(manifest, selection, source, uri)
    remaining = [v for v in raw["splits"][source]["videos"] if v["name"] not in chosen]
    moved = [v for v in raw["splits"][source]["videos"] if v["name"] in chosen]
    raw["splits"][source]["videos"] = remaining
    raw["splits"][split] = {"videos": moved}
    raw[CARVE_KEY] = {"split": split, "source": source, "videos": chosen}
    Manifest.from_dict(raw, where=uri)  # the result must still be a valid manifest
    storage.write_bytes_atomic(uri, json.dumps(raw, indent=1).encode(), storage_cfg)
    return chosen


def _choose(manifest: Manifest, selection: int | list[str], source: str, uri: str) -> list[str]:
    videos = manifest.videos(source)
    labelled = [v for v in videos if v.labelled]
    if isinstance(selection, int):
        if selection >= len(videos):
            raise UserError(f"--val-from-test {selection}: '{source}' has only {len(videos)} "
                            "videos and at least one must stay for the final test")
        if selection > len(labelled):
            raise UserError(f"--val-from-test {selection}: '{source}' has only "
                            f"{len(labelled)} labelled videos")
        chosen = labelled[:selection]
    else:
        by_name = {v.name: v for v in videos}
        missing = [n for n in selection if n not in by_name]
        if missing:
            raise UserError(f"--val-from-test: no video '{missing[0]}' in split '{source}' "
                            f"of {uri}")
        chosen = [by_name[n] for n in selection]
        if len(chosen) >= len(videos):
            raise UserError(f"--val-from-test: keep at least one '{source}' video for the "
                            "final test")
        unlabelled = [v.name for v in chosen if not v.labelled]
        if unlabelled:
            raise UserError(f"--val-from-test: video '{unlabelled[0]}' has no labels")
    frames = sum(v.num_frames for v in chosen)
    abnormal = sum(int(manifest.frame_labels(v).sum()) for v in chosen)
    if not 0 < abnormal < frames:
        names = ", ".join(v.name for v in chosen)
        raise UserError(f"--val-from-test: the selected videos ({names}) need both normal and "
                        "abnormal frames for a validation AUC")
    left = [v for v in labelled if v not in chosen]
    left_abnormal = sum(int(manifest.frame_labels(v).sum()) for v in left)
    if not 0 < left_abnormal < sum(v.num_frames for v in left):
        raise UserError(f"--val-from-test: the labelled '{source}' videos left "
                        f"({', '.join(v.name for v in left) or 'none'}) need both normal and "
                        "abnormal frames for the final test AUC; choose other videos")
    return [v.name for v in chosen]


def _check_same(done: dict, selection, manifest: Manifest, split: str, uri: str) -> list[str]:
    names = list(done.get("videos", []))
    same_split = done.get("split") == split
    wanted = (len(names) == selection if isinstance(selection, int)
              else sorted(selection) == sorted(names))
    if not (same_split and wanted):
        raise UserError(f"{uri} already carved {names} into '{done.get('split')}'; a different "
                        "validation selection would mix tuned-on and test videos (re-import the "
                        "dataset to start over)")
    manifest.videos(split)  # still present
    return names


def val_selection(cfg: ExperimentConfig, opts) -> int | list[str] | None:
    """The dataset and the --val-from-test choice (``opts``: the ``SweepOptions``), checked
    before Ray starts: a typo is one line at once, not after a cluster start."""
    if not cfg.data.path:
        raise UserError("--val-from-test needs the dataset: pass --data URI" if opts.val_from_test
                        else "data.path is not set: pass --data URI or set data.path in the "
                        "config")
    return parse_selection(opts.val_from_test) if opts.val_from_test else None


def with_val_split(cfg: ExperimentConfig, selection: int | list[str] | None) -> ExperimentConfig:
    """The dataset the trials read, with the validation split --val-from-test carves into it."""
    if selection is None:
        return cfg
    split = cfg.data.val_split or "val"
    carve_val_from_test(cfg.data.path, selection, split=split, source=cfg.eval.split,
                        storage_cfg=cfg.storage)
    tree = cfg.to_dict()
    tree["data"]["val_split"] = split
    return from_dict(ExperimentConfig, tree)
