"""Alarms from a scores file: runs of frames whose raw error reaches a threshold.

What a video-analytics deployment acts on is not a frame but an event: "something abnormal
from frame 120 to 187 of camera 3". An event is a run of consecutive scored frames with
``score >= threshold``; runs separated by at most ``max_gap`` unflagged frames are one event
(a person briefly hidden does not end it), and events shorter than ``min_frames`` frames,
bridged ones included, are dropped (one noisy frame is no alarm). The threshold is a raw
error, as ``evaluate`` reads them off a labelled split (``thresholds.py``).

Where the scores carry labels, each event is checked against them: an event that overlaps an
abnormal frame is a detection, one that does not is a false alarm, and a labelled anomaly (a
run of abnormal frames) that no event overlaps is missed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass

import numpy as np

from memae_dist.evaluate.protocol import VideoScores

EVENT_COLUMNS = ("video", "first_frame", "last_frame", "frames", "peak_frame", "peak_score",
                 "abnormal_frames")


@dataclass(frozen=True)
class Event:
    video: str
    first_frame: int
    last_frame: int
    frames: int  # scored frames inside the event, flagged or bridged
    peak_frame: int
    peak_score: float
    abnormal_frames: int | None  # labelled abnormal frames inside it; None: no labels


def find_events(video: VideoScores, threshold: float, *, min_frames: int = 1,
                max_gap: int = 0, labelled: bool = False) -> list[Event]:
    """The events of one video, in frame order (``video.frames``: its scored frame indices,
    ascending, as ``read_scores`` delivers them). ``min_frames`` counts bridged frames too."""
    merged: list[list[int]] = []  # [first, last] positions into the arrays
    for i in np.flatnonzero(video.scores >= threshold):
        # The gap in frame numbers: a frame missing from the scores is not a scored one.
        if merged and video.frames[i] - video.frames[merged[-1][1]] - 1 <= max_gap:
            merged[-1][1] = i
        else:
            merged.append([i, i])
    events = []
    for first, last in merged:
        if last - first + 1 < min_frames:
            continue
        peak = first + int(np.argmax(video.scores[first:last + 1]))
        events.append(Event(
            video.name, int(video.frames[first]), int(video.frames[last]), last - first + 1,
            int(video.frames[peak]), float(video.scores[peak]),
            int(video.labels[first:last + 1].sum()) if labelled else None))
    return events


def event_summary(videos: list[VideoScores], events: list[Event],
                  labelled: set[str]) -> dict:
    """Counts over all videos; the label checks cover the labelled videos only."""
    by_video: dict[str, list[Event]] = {}
    for e in events:
        by_video.setdefault(e.video, []).append(e)
    out = {"videos": len(videos), "videos_with_events": len(by_video), "events": len(events)}
    if not labelled:
        return out
    anomalies = missed = 0
    for v in (v for v in videos if v.name in labelled):
        hits = np.zeros(v.frames.size, dtype=bool)
        for e in by_video.get(v.name, []):
            hits |= (v.frames >= e.first_frame) & (v.frames <= e.last_frame)
        for first, last in _runs(v.labels.astype(bool)):
            anomalies += 1
            missed += not hits[first:last + 1].any()
    out.update(anomalies=anomalies, anomalies_detected=anomalies - missed,
               false_alarms=sum(e.abnormal_frames == 0 for e in events if e.video in labelled))
    return out


def events_csv(events: list[Event]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=EVENT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for e in events:
        row = asdict(e)
        row["peak_score"] = f"{e.peak_score:.9g}"
        row["abnormal_frames"] = "" if e.abnormal_frames is None else e.abnormal_frames
        writer.writerow(row)
    return text.getvalue().encode()


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in a 1-D mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))  # starts at even positions, ends at odd
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]
