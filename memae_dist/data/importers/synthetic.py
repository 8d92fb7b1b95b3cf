"""Synthetic "road" videos for the demo: small objects walk along a road; test videos add anomalies.

Every video is a fixed camera over a dim, textured, static background with a slightly brighter
horizontal road band at a random height. Normal traffic walks left to right along 1-3 lanes of
the road: small bright rectangles (2-3 x 3-4 px at 32x32, a per-video look with small per-walker
variation) at 0.5-1 px/frame with a little speed jitter and vertical wobble. A lane's next
walker enters as the previous one starts to leave, so the amount of traffic on screen stays
level: with per-video min-max normalised scores, a fluctuating crowd would otherwise swamp the
anomalies. Test videos may add one anomalous event:

- ``fast``: a group of normal-looking walkers at 3-4x the mean walking speed, two on screen;
- ``large``: one walker 2-3x the normal size (both sides) at normal speed;
- ``wrong_way``: one normal-looking object walking right to left along the road, or straight
  across it (top to bottom or bottom to top).

A frame is labelled abnormal exactly when an anomalous object covers at least one pixel's worth
of it, so the recorded ranges match what is on screen. Each video is drawn from its own numpy
generator seeded by (seed, split, index) using only exactly rounded arithmetic (no
transcendental functions), so the bytes do not depend on the platform. Geometry is given in
pixels of a 32x32 frame and scaled with the frame size. This set is synthetic: it exercises the
pipeline and the model, it says nothing about real footage.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from memae_dist.data.storage import StorageConfig
from memae_dist.errors import UserError

# Test video i gets ANOMALY_CYCLE[i % 6]; "none" keeps some test videos clean.
ANOMALY_CYCLE = ("fast", "large", "wrong_way", "fast", "large", "none")
_SPLIT_CODES = {"train": 0, "test": 1}
_ROAD_HEIGHT = 10.0  # rows of a 32-row frame
_SPEED = (0.5, 1.0)  # normal walking speed, px/frame at 32x32
_FAST = (3.0, 4.0)  # the "fast" anomaly's speed over the mean normal speed
_LARGE = (2.0, 3.0)  # size factor of the "large" anomaly


@dataclass
class SyntheticConfig:
    # Seed of the whole set; video i of a split is an independent draw from (seed, split, i).
    seed: int = 0
    # Frame size (height, width); multiples of 16 as the 3D-conv model needs.
    size: tuple[int, int] = (32, 32)
    # Number of training videos (normal traffic only).
    train_videos: int = 8
    # Number of test videos; ANOMALY_CYCLE decides which anomaly, if any, each one gets.
    test_videos: int = 6
    # Frames in every video.
    frames_per_video: int = 96

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"synthetic.seed must be an integer >= 0, got {self.seed!r}")
        size = tuple(self.size) if isinstance(self.size, (list, tuple)) else ()
        if len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 16 and s % 16 == 0 for s in size
        ):
            raise UserError(
                f"synthetic.size must be two multiples of 16 (height, width), got {self.size!r}"
            )
        self.size = (size[0], size[1])
        for name in ("train_videos", "test_videos"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"synthetic.{name} must be an integer >= 1, got {value!r}")
        n = self.frames_per_video
        if isinstance(n, bool) or not isinstance(n, int) or n < 32:
            raise UserError(f"synthetic.frames_per_video must be an integer >= 32, got {n!r}")


@dataclass
class _Object:
    x: float  # left edge, px
    y: float  # top edge, px
    w: float
    h: float
    vx: float  # px/frame
    vy: float
    level: float  # grey level 0..255
    spawn: int = 0  # first frame it moves on screen
    wobble: bool = True  # normal walkers sway a little inside their lane
    lane: float = 0.0  # top edge the wobble is centred on
    slot: int = -1  # traffic lane it belongs to (-1: an anomaly)
    followed: bool = False  # the lane's next walker is already on its way


@dataclass
class _Scene:
    height: int
    width: int
    ux: float  # px per 32x32-pixel, horizontally
    uy: float
    road_top: float
    road_bottom: float
    # This video's kind of walker (each one varies a little around it) and its lanes.
    walker_w: float
    walker_h: float
    walker_level: float
    lanes: tuple[float, ...]  # top edges, one per lane of traffic


def anomaly_kind(index: int) -> str:
    """The anomaly test video ``index`` (0-based) carries: fast, large, wrong_way or none."""
    return ANOMALY_CYCLE[index % len(ANOMALY_CYCLE)]


def _rngs(cfg: SyntheticConfig, split: str, index: int) -> tuple[np.random.Generator, ...]:
    """Generators for (scene and traffic, anomaly): a separate anomaly stream leaves the rest of
    the video unchanged whether or not the anomaly is drawn."""
    seq = np.random.SeedSequence([cfg.seed, _SPLIT_CODES[split], index])
    return tuple(np.random.default_rng(child) for child in seq.spawn(2))


def _upsample(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a small grid to (height, width), corners aligned.

    One numpy operation per arithmetic step, so no compiler can fuse a multiply-add and change
    the last bit on some platform.
    """

    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
        lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
        return lo, pos - lo

    ly, fy = taps(height, coarse.shape[0])
    lx, fx = taps(width, coarse.shape[1])
    rows = coarse[ly] * (1.0 - fy)[:, None] + coarse[ly + 1] * fy[:, None]  # (H, w0)
    return rows[:, lx] * (1.0 - fx) + rows[:, lx + 1] * fx  # (H, W)


def _scene(rng: np.random.Generator, height: int, width: int) -> tuple[_Scene, np.ndarray]:
    """Road, walkers and lanes of one video, and its static background (H, W) in grey levels."""
    ux, uy = width / 32.0, height / 32.0
    road_h = _ROAD_HEIGHT * uy
    top = rng.uniform(0.4, 0.6) * height - road_h / 2
    walker_w, walker_h = rng.uniform(2.0, 3.0) * ux, rng.uniform(3.0, 4.0) * uy
    count = int(rng.integers(1, 4))
    lanes = tuple(
        min(
            max(top + (k + 0.5) * road_h / count - walker_h / 2 + rng.uniform(-0.5, 0.5) * uy, top),
            top + road_h - walker_h,
        )
        for k in range(count)
    )
    level = rng.uniform(170.0, 230.0)
    scene = _Scene(height, width, ux, uy, top, top + road_h, walker_w, walker_h, level, lanes)
    # Low-contrast texture: a smooth shading plus fixed fine grain, well below object levels.
    shading = _upsample(rng.uniform(-1.0, 1.0, size=(5, 5)), height, width)
    grain = rng.integers(-3, 4, size=(height, width))
    background = rng.uniform(35.0, 60.0) + 12.0 * shading + grain
    rows = np.arange(height) + 0.5
    on_road = (rows >= scene.road_top) & (rows < scene.road_bottom)
    background[on_road] += rng.uniform(8.0, 14.0)
    return scene, background


def _walker(
    rng: np.random.Generator, scene: _Scene, lane: float | None = None, size_factor: float = 1.0
) -> _Object:
    """A walker like this video's (size and grey level vary a little), placed just left of the
    frame, walking right; on ``lane`` or anywhere on the road."""
    w = scene.walker_w * rng.uniform(0.9, 1.1) * size_factor
    h = scene.walker_h * rng.uniform(0.9, 1.1) * size_factor
    speed = rng.uniform(*_SPEED) * scene.ux
    level = scene.walker_level + rng.uniform(-10.0, 10.0)
    if size_factor > 1.0:  # too big for a lane: centre it on the road
        lane = (scene.road_top + scene.road_bottom - h) / 2
    elif lane is None:
        lane = rng.uniform(scene.road_top, max(scene.road_top, scene.road_bottom - h))
    return _Object(x=-w, y=lane, w=w, h=h, vx=speed, vy=0.0, level=level, lane=lane)


def _on_screen(obj: _Object, scene: _Scene) -> bool:
    """Whether the object can still be seen now or later (it has not left along its course)."""
    if obj.vx > 0 and obj.x >= scene.width:
        return False
    if obj.vx < 0 and obj.x + obj.w <= 0:
        return False
    if obj.vy > 0 and obj.y >= scene.height:
        return False
    return not (obj.vy < 0 and obj.y + obj.h <= 0)


def _step(obj: _Object, rng: np.random.Generator, scene: _Scene) -> None:
    jitter = rng.uniform(0.85, 1.15)
    obj.x += obj.vx * jitter
    obj.y += obj.vy * jitter
    if obj.wobble:
        sway = 0.6 * scene.uy
        obj.y = min(
            max(obj.y + rng.uniform(-0.2, 0.2) * scene.uy, obj.lane - sway), obj.lane + sway
        )


def _coverage(obj: _Object, scene: _Scene) -> np.ndarray:
    """Fraction of each pixel the rectangle covers, (H, W) in [0, 1] (area-exact anti-aliasing)."""

    def axis(lo: float, hi: float, n: int) -> np.ndarray:
        edges = np.arange(n, dtype=np.float64)
        return np.clip(np.minimum(hi, edges + 1.0) - np.maximum(lo, edges), 0.0, 1.0)

    return np.outer(
        axis(obj.y, obj.y + obj.h, scene.height), axis(obj.x, obj.x + obj.w, scene.width)
    )


def _traffic(rng: np.random.Generator, scene: _Scene) -> list[_Object]:
    """One walker per lane, anywhere along it."""
    walkers = []
    for slot, lane in enumerate(scene.lanes):
        obj = _walker(rng, scene, lane)
        obj.x, obj.slot = rng.uniform(-obj.w, float(scene.width)), slot
        walkers.append(obj)
    _refill(walkers, rng, scene)
    return walkers


def _refill(traffic: list[_Object], rng: np.random.Generator, scene: _Scene) -> None:
    """Steady flow: a lane's next walker enters as the previous one starts to leave, so the
    amount of traffic on screen (and with it the normal reconstruction error) stays level."""
    for obj in list(traffic):
        if obj.slot >= 0 and not obj.followed and obj.x + obj.w >= scene.width:
            nxt = _walker(rng, scene, scene.lanes[obj.slot])
            nxt.x += obj.x + obj.w - scene.width  # as far in as the other one is out
            nxt.slot, obj.followed = obj.slot, True
            traffic.append(nxt)
    traffic[:] = [o for o in traffic if _on_screen(o, scene)]


def _crossing_frames(obj: _Object, scene: _Scene) -> float:
    if obj.vx != 0:
        return (scene.width + obj.w) / abs(obj.vx)
    return (scene.height + obj.h) / abs(obj.vy)


def _event_objects(
    kind: str, rng: np.random.Generator, scene: _Scene, n_frames: int
) -> list[_Object]:
    """The anomalous objects of one event, spawn frames relative to the event's start."""
    if kind == "none":
        return []
    if kind == "fast":
        # A group riding at one pace, two on screen at a time: one contiguous range, and an
        # anomaly of steady strength. The pace is relative to the mean walking speed, so even
        # the slowest group is 2x faster than the fastest walker.
        length = rng.uniform(0.35, 0.5) * n_frames
        pace = rng.uniform(*_FAST) * (_SPEED[0] + _SPEED[1]) / 2 * scene.ux
        objs: list[_Object] = []
        offset = 0.0
        while not objs or offset + _crossing_frames(objs[-1], scene) < length:
            obj = _walker(rng, scene)
            obj.vx = pace * rng.uniform(0.95, 1.05)
            obj.spawn = int(offset)
            objs.append(obj)
            offset += _crossing_frames(obj, scene) / 2
        return objs
    if kind == "large":
        obj = _walker(rng, scene, size_factor=rng.uniform(*_LARGE))
        obj.vx = rng.uniform(0.75, 1.0) * scene.ux  # normal speed, brisk enough to cross in time
        return [obj]
    if kind != "wrong_way":
        raise UserError(
            f"synthetic anomaly must be one of none, fast, large, wrong_way, got {kind!r}"
        )
    obj = _walker(rng, scene)
    obj.vx = rng.uniform(0.75, 1.0) * scene.ux
    if rng.uniform() < 0.5:  # against the traffic
        obj.x, obj.vx = float(scene.width), -obj.vx
        return [obj]
    # Straight across the road, entering at the top or the bottom.
    down = rng.uniform() < 0.5
    obj.vy = (1.0 if down else -1.0) * obj.vx * scene.uy / scene.ux
    obj.vx, obj.wobble = 0.0, False
    obj.x = rng.uniform(0.2 * scene.width, 0.8 * scene.width - obj.w)
    obj.y = -obj.h if down else float(scene.height)
    return [obj]


def _schedule(objs: list[_Object], rng: np.random.Generator, scene: _Scene, n_frames: int) -> None:
    """Shift the event to a random start that keeps it clear of the first and last 8 frames."""
    if not objs:
        return
    length = max(o.spawn + _crossing_frames(o, scene) for o in objs)
    lo = max(8, n_frames // 12)
    hi = max(lo, int(n_frames - length - 8))
    start = int(rng.integers(lo, hi + 1))
    for obj in objs:
        obj.spawn += start


def _runs(mask: np.ndarray) -> list[list[int]]:
    """0-based inclusive [first, last] ranges of the True runs of a 1-D mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [[int(a), int(b) - 1] for a, b in zip(edges[::2], edges[1::2])]


def _paint(image: np.ndarray, obj: _Object, scene: _Scene) -> float:
    """Composite the object over ``image`` in place; returns the pixel area it covers."""
    cover = _coverage(obj, scene)
    image *= 1.0 - cover
    image += obj.level * cover
    return float(cover.sum())


def render_video(
    cfg: SyntheticConfig, split: str, index: int
) -> tuple[np.ndarray, list[list[int]] | None]:
    """Video ``index`` of ``split`` ("train" or "test"): frames (N, H, W) uint8 and the abnormal
    ranges (0-based inclusive; ``[]`` for a clean test video, None for training videos)."""
    kind = anomaly_kind(index) if split == "test" else "none"
    frames, ranges = render_scene(cfg, split, index, kind)
    return frames, (ranges if split == "test" else None)


def render_scene(
    cfg: SyntheticConfig, split: str, index: int, anomaly: str
) -> tuple[np.ndarray, list[list[int]]]:
    """The scene of video ``index`` of ``split`` with the given anomaly ("none", "fast", "large",
    "wrong_way") instead of its own: the background and the normal traffic stay identical, so
    ``render_scene(..., "none")`` shows a test video as it would be without its anomaly."""
    if split not in _SPLIT_CODES:
        raise UserError(f"synthetic split must be 'train' or 'test', got {split!r}")
    count = cfg.train_videos if split == "train" else cfg.test_videos
    if not 0 <= index < count:
        raise UserError(f"synthetic {split} video index must be in [0, {count}), got {index}")
    rng, event_rng = _rngs(cfg, split, index)
    (height, width), n_frames = cfg.size, cfg.frames_per_video
    scene, background = _scene(rng, height, width)
    traffic = _traffic(rng, scene)
    pending = _event_objects(anomaly, event_rng, scene, n_frames)
    _schedule(pending, event_rng, scene, n_frames)
    frames = np.empty((n_frames, height, width), dtype=np.uint8)
    abnormal = np.zeros(n_frames, dtype=bool)
    active: list[_Object] = []
    for t in range(n_frames):
        active += [o for o in pending if o.spawn == t]
        image = background.copy()  # (H, W) float64 grey levels
        for obj in traffic:
            _paint(image, obj, scene)
        for obj in active:
            abnormal[t] |= _paint(image, obj, scene) >= 1.0
        image += rng.integers(-2, 3, size=(height, width))  # sensor noise
        frames[t] = np.clip(np.floor(image + 0.5), 0, 255)
        for obj in traffic:
            _step(obj, rng, scene)
        _refill(traffic, rng, scene)
        for obj in active:
            _step(obj, event_rng, scene)
        active = [o for o in active if _on_screen(o, scene)]
    return frames, _runs(abnormal)


def synthetic_videos(cfg: SyntheticConfig) -> list:
    """VideoSpecs of the whole set (training videos first); each renders lazily where it runs."""
    from memae_dist.data.writer import VideoSpec  # the writer pulls in Ray: import it on use

    specs = []
    for split, count in (("train", cfg.train_videos), ("test", cfg.test_videos)):
        digits = max(2, len(str(count)))
        for i in range(count):
            load = functools.partial(render_video, cfg, split, i)
            specs.append(VideoSpec(split=split, name=f"{i + 1:0{digits}d}", load=load))
    return specs


def generate_synthetic(
    dst: str, cfg: SyntheticConfig, workers: int | None = None, *, progress: bool = True,
    storage_cfg: StorageConfig | None = None,
) -> dict:
    """Render the set and store it at ``dst`` in the frames format; returns the manifest.
    ``storage_cfg``: S3 endpoint and region (unset: the AWS_* environment)."""
    from memae_dist.data.writer import write_dataset

    return write_dataset(
        synthetic_videos(cfg),
        dst,
        cfg.size,
        name="synthetic",
        source="synthetic",
        workers=workers,
        progress=progress,
        storage_cfg=storage_cfg,
    )
