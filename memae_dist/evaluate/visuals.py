"""Pictures that need the model: why a frame scored high, and what the memory has learned.

- Triptychs: for a scored frame f, the window starting at f - 8 is reconstructed; the input
  frame, its reconstruction and the squared-error heatmap show *where* the model failed.
- Memory slots: MemAE rebuilds every input from a few learned prototypes. Decoding one slot
  alone (the code every memory query would get with all attention on that slot) shows the
  normal pattern it stands for. The slots shown are those with the most attention over a sample
  of windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memae_dist.evaluate.plots import plot_slots, plot_triptych
from memae_dist.evaluate.protocol import TARGET_OFFSET
from memae_dist.models import MemAE
from memae_dist.models.memory import slot_mass


@dataclass
class Reconstruction:
    clip: np.ndarray  # (L, H, W) float32 in [-1, 1]
    recon: np.ndarray  # (L, H, W) float32
    mass: np.ndarray | None  # (N,) attention mass per slot; None without memory


@torch.no_grad()
def reconstruct(model: MemAE, frames: np.ndarray, start: int, window: int) -> Reconstruction:
    """Reconstruct the window ``frames[start:start + window]`` of a (N, H, W) uint8 video."""
    clip = torch.from_numpy(np.ascontiguousarray(frames[start:start + window]))
    x = clip.float().div_(127.5).sub_(1.0)[None, None]  # (1, 1, L, H, W)
    out = model(x)
    mass = None if out.attention is None else slot_mass(out.attention).numpy()
    return Reconstruction(x[0, 0].numpy(), out.recon[0, 0].float().numpy(), mass)


def triptych(model: MemAE, frames: np.ndarray, frame: int, window: int, path: Path,
             title: str) -> tuple[Path, np.ndarray | None]:
    """Triptych PNG of scored frame ``frame``; also returns that window's slot mass."""
    start = frame - TARGET_OFFSET
    if not 0 <= start <= len(frames) - window:
        raise ValueError(f"frame {frame} has no score (needs a full window around it)")
    rec = reconstruct(model, frames, start, window)
    png = plot_triptych(rec.clip[TARGET_OFFSET], rec.recon[TARGET_OFFSET], path, title)
    return png, rec.mass


@torch.no_grad()
def decode_slots(model: MemAE, slots: np.ndarray, size: tuple[int, int],
                 window: int) -> np.ndarray:
    """(K, H, W): the frame at offset 8 decoded from a code made of one memory slot each."""
    height, width = size
    enc = model.encoder(torch.zeros(1, 1, window, height, width))  # (1, C, T', H', W')
    vectors = model.memory.memory[torch.as_tensor(slots, dtype=torch.long)]  # (K, C)
    z = vectors[:, :, None, None, None].expand(-1, -1, *enc.shape[2:])  # (K, C, T', H', W')
    out = model.decoder(z.contiguous())  # (K, 1, L, H, W)
    return out[:, 0, TARGET_OFFSET].float().numpy()


def memory_picture(model: MemAE, mass: np.ndarray | None, size: tuple[int, int], window: int,
                   path: Path, count: int = 32) -> Path | None:
    """Grid of the ``count`` most used slots (by ``mass``; the first ones if no mass)."""
    if model.memory is None:
        return None
    n = model.memory.num_slots
    count = max(1, min(count, n))
    if mass is not None and mass.sum() > 0:
        order = np.argsort(-mass, kind="stable")[:count]
        share = mass[order] / mass.sum()
        captions = [f"slot {i} ({100 * s:.1f}%)" for i, s in zip(order, share)]
        title = f"{count} most used of {n} memory slots, decoded (share of attention)"
    else:
        order = np.arange(count)
        captions = [f"slot {i}" for i in order]
        title = f"first {count} of {n} memory slots, decoded"
    images = decode_slots(model, order, size, window)
    return plot_slots(images, captions, path, title)


def sample_starts(num_frames: int, window: int, count: int) -> list[int]:
    """``count`` window starts spread evenly over a video (for the slot-usage estimate)."""
    last = num_frames - window
    if last < 0 or count < 1:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, last, count)})


@torch.no_grad()
def usage_mass(model: MemAE, frames: np.ndarray, starts: list[int], window: int
               ) -> np.ndarray | None:
    """Summed attention per slot over the windows at ``starts`` (None without memory)."""
    if model.memory is None or not starts:
        return None
    clips = np.stack([frames[s:s + window] for s in starts])  # (B, L, H, W)
    x = torch.from_numpy(clips).float().div_(127.5).sub_(1.0).unsqueeze(1)
    attention = model(x).attention
    return slot_mass(attention).numpy()
