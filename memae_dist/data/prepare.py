"""``memae-dist prepare KIND``: one entry point over every importer."""

from __future__ import annotations

from memae_dist.errors import UserError

KINDS = ("ucsd-ped2", "ucsd-ped1", "synthetic")


def run_import(kind: str, *, src: str | None, dst: str, size: tuple[int, int] | None,
               workers: int | None = None, seed: int = 0, skip_bad: bool = False) -> dict:
    if kind == "synthetic":
        from memae_dist.data.importers.synthetic import SyntheticConfig, generate_synthetic

        cfg = SyntheticConfig(seed=seed, **({"size": size} if size else {}))
        return generate_synthetic(dst, cfg, workers=workers)
    if kind in ("ucsd-ped2", "ucsd-ped1"):
        from memae_dist.data.importers.ucsd import import_ucsd

        if not src:
            raise UserError(f"prepare {kind} needs --src (the dataset folder)")
        return import_ucsd(src, dst, size or (256, 256), variant=kind.split("-")[1],
                           workers=workers, skip_bad=skip_bad)
    raise UserError(f"unknown dataset kind {kind!r} (choose from: {', '.join(KINDS)})")


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
