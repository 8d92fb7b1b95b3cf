"""Files of videos a dataset no longer lists, removed once its new manifest is written.

A rerun of ``prepare`` updates its own dataset (another dataset over it is refused): a video
gone from the source since, or a test video a benchmark's new copy leaves out, would otherwise
keep its shard and marker beside the manifest, unlisted, counted by nobody but the bucket's
bill. Only this writer's own files are touched: ``<split>/<video>.parquet`` and its
``.done.json`` marker; and, before an import starts, the temporary files of one killed while
it wrote (``.<name>.tmp-<hex>``, which only the writer makes, under the dataset's lock).
"""

from __future__ import annotations

import logging

from memae_dist.data import storage
from memae_dist.data.atomic import TEMPORARY_NAME

logger = logging.getLogger("memae_dist.data.writer")

SHARD_SUFFIX = ".parquet"
MARKER_SUFFIX = ".done.json"


def remove_unlisted(dst: str, shard_paths: set[str],
                    cfg: storage.StorageConfig | None = None) -> list[str]:
    """Delete the shards and markers under ``dst`` whose shard the manifest does not list;
    returns their paths, relative to ``dst``."""
    stale = []
    for rel in sorted(storage.file_sizes(dst, cfg)):
        if rel.count("/") != 1:
            continue
        for suffix in (SHARD_SUFFIX, MARKER_SUFFIX):
            if rel.endswith(suffix) and rel[: -len(suffix)] + SHARD_SUFFIX not in shard_paths:
                stale.append(rel)
    for rel in stale:
        storage.delete(storage.join(dst, rel), cfg)
    if stale:
        logger.warning("%s: removed %d file(s) of videos the dataset no longer holds: %s", dst,
                       len(stale), ", ".join(stale[:6]) + (", ..." if len(stale) > 6 else ""))
    return stale


def remove_cut_off(dst: str, cfg: storage.StorageConfig | None = None) -> list[str]:
    """Delete the temporary files a killed import left in ``dst`` and its split folders."""
    cut_off = [rel for rel in sorted(storage.file_sizes(dst, cfg, missing_ok=True))
               if rel.count("/") <= 1 and TEMPORARY_NAME.fullmatch(rel.rpartition("/")[2])]
    for rel in cut_off:
        storage.delete(storage.join(dst, rel), cfg)
    if cut_off:
        logger.info("%s: removed %d temporary file(s) of an import cut off mid-write", dst,
                    len(cut_off))
    return cut_off
