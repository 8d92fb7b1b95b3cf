"""``memae-dist prepare KIND``: one entry point over every importer."""

from __future__ import annotations

from memae_dist.data.storage import StorageConfig
from memae_dist.errors import UserError

KINDS = ("ucsd-ped2", "ucsd-ped1", "avenue", "shanghaitech", "folder", "images", "synthetic")
DEFAULT_SIZE = (256, 256)  # the MemAE paper's input size
IMAGES_SIZE = (28, 28)  # the paper's 2D image net (MNIST) takes exactly this size


def run_import(kind: str, *, src: str | None, dst: str, size: tuple[int, int] | None,
               workers: int | None = None, synthetic: dict | None = None,
               skip_bad: bool = False, labels: str | None = None, split: str | None = None,
               progress: bool = True, storage_cfg: StorageConfig | None = None) -> dict:
    """Import dataset ``kind`` from ``src`` into ``dst``; returns the manifest.

    ``labels`` and ``split`` apply to ``folder`` only: a labels file / folder, and the split of
    sources that are not inside train/test/val folders (default train). ``synthetic``: settings
    of the generated set (``SyntheticConfig`` fields: seed, video counts, frames).
    ``storage_cfg`` is the experiment config's ``storage:`` section (S3 endpoint, region); unset
    fields come from AWS_* variables.
    """
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r} (choose from: {', '.join(KINDS)})")
    if kind != "folder" and labels:
        raise UserError(f"--labels is for 'prepare folder'; {kind} finds its own labels")
    if kind != "folder" and split:
        raise UserError(f"--split is for 'prepare folder'; {kind} finds its own splits")
    if kind == "synthetic":
        from memae_dist.data.importers.synthetic import SyntheticConfig, generate_synthetic

        if src:  # a user who passes one expects it to be read
            raise UserError("--src is not for 'prepare synthetic': the set is generated")
        cfg = SyntheticConfig(**(synthetic or {}), **({"size": size} if size else {}))
        return generate_synthetic(dst, cfg, workers=workers, progress=progress,
                                  storage_cfg=storage_cfg)
    if not src:
        raise UserError(f"prepare {kind} needs --src (the dataset folder)")
    size = size or (IMAGES_SIZE if kind == "images" else DEFAULT_SIZE)
    common = {"workers": workers, "skip_bad": skip_bad, "progress": progress,
              "storage_cfg": storage_cfg}
    if kind in ("ucsd-ped2", "ucsd-ped1"):
        from memae_dist.data.importers.ucsd import import_ucsd

        return import_ucsd(src, dst, size, variant=kind.split("-")[1], **common)
    if kind == "avenue":
        from memae_dist.data.importers.avenue import import_avenue

        return import_avenue(src, dst, size, **common)
    if kind == "shanghaitech":
        from memae_dist.data.importers.shanghaitech import import_shanghaitech

        return import_shanghaitech(src, dst, size, **common)
    if kind == "images":
        from memae_dist.data.importers.images import import_images

        return import_images(src, dst, size, **common)
    from memae_dist.data.importers.folder import import_folder

    return import_folder(src, dst, size, labels=labels, split=split or "train", **common)


def summarize(manifest: dict) -> dict[str, dict[str, int]]:
    """Per split: videos, frames and abnormal frames, from a manifest dict."""
    out = {}
    for split, info in manifest["splits"].items():
        videos = info["videos"]
        abnormal = sum(
            last - first + 1 for v in videos for first, last in (v.get("abnormal") or [])
        )
        out[split] = {"videos": len(videos), "frames": sum(v["num_frames"] for v in videos),
                      "abnormal": abnormal}
    return out
