"""Pictures that need the model: why a frame scored high, and what the memory has learned.

- Triptychs: for a scored frame f, the window starting at f - 8 is reconstructed (a still image:
  the image itself); the input frame, its reconstruction and the squared-error heatmap show
  *where* the model failed.
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
from memae_dist.evaluate.protocol import target_offset_for
from memae_dist.models import MemAE
from memae_dist.models.build import model_input
from memae_dist.models.memory import slot_mass


@dataclass
class Reconstruction:
    clip: np.ndarray  # (L, H, W) float32 in [-1, 1]
    recon: np.ndarray  # (L, H, W) float32
    mass: np.ndarray | None  # (N,) attention mass per slot; None without memory


@torch.no_grad()
def reconstruct(model: MemAE, frames: np.ndarray, start: int, window: int,
                arch: str = "video") -> Reconstruction:
    """Reconstruct the window ``frames[start:start + window]`` of a (N, H, W) uint8 video."""
    clip = torch.from_numpy(np.ascontiguousarray(frames[start:start + window]))  # (L, H, W)
    out = model(model_input(clip[None], arch))
    mass = None if out.attention is None else slot_mass(out.attention).numpy()
    # Every net's output holds the clip's L x H x W values, whatever its own shape.
    recon = out.recon[0].float().reshape(clip.shape).numpy()
    return Reconstruction(clip.float().div(127.5).sub(1.0).numpy(), recon, mass)


def triptych(model: MemAE, frames: np.ndarray, frame: int, window: int, path: Path,
             title: str, arch: str = "video") -> tuple[Path, np.ndarray | None]:
    """Triptych PNG of scored frame ``frame``; also returns that window's slot mass."""
    offset = target_offset_for(window)
    start = frame - offset
    if not 0 <= start <= len(frames) - window:
        raise ValueError(f"frame {frame} has no score (needs a full window around it)")
    rec = reconstruct(model, frames, start, window, arch)
    png = plot_triptych(rec.clip[offset], rec.recon[offset], path, title)
    return png, rec.mass


@torch.no_grad()
def decode_slots(model: MemAE, slots: np.ndarray, size: tuple[int, int],
                 window: int, arch: str = "video") -> np.ndarray:
    """(K, H, W): the scored frame decoded from a code made of one memory slot each."""
    height, width = size
    blank = torch.zeros(1, window, height, width, dtype=torch.uint8)
    code = model.encoder(model_input(blank, arch)).shape[1:]  # (C, *spatial) or (D,)
    vectors = model.memory.memory[torch.as_tensor(slots, dtype=torch.long)]  # (K, F)
    if model.flatten_query or len(code) == 1:  # a slot is a whole code (flatten, mlp)
        z = vectors.reshape(len(vectors), *code)
    else:  # one query per position: every position gets the slot
        z = vectors.reshape(*vectors.shape, *[1] * (len(code) - 1)).expand(-1, *code)
    out = model.decoder(z.contiguous())  # (K, 1, L, H, W), (K, 1, H, W) or (K, H*W)
    return out.float().reshape(len(vectors), window, height, width)[
        :, target_offset_for(window)].numpy()


def memory_picture(model: MemAE, mass: np.ndarray | None, size: tuple[int, int], window: int,
                   path: Path, count: int = 32, arch: str = "video") -> Path | None:
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
    images = decode_slots(model, order, size, window, arch)
    return plot_slots(images, captions, path, title)


def sample_starts(num_frames: int, window: int, count: int) -> list[int]:
    """``count`` window starts spread evenly over a video (for the slot-usage estimate)."""
    last = num_frames - window
    if last < 0 or count < 1:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, last, count)})


@torch.no_grad()
def usage_mass(model: MemAE, frames: np.ndarray, starts: list[int], window: int,
               arch: str = "video") -> np.ndarray | None:
    """Summed attention per slot over the windows at ``starts`` (None without memory)."""
    if model.memory is None or not starts:
        return None
    clips = np.stack([frames[s:s + window] for s in starts])  # (B, L, H, W)
    attention = model(model_input(torch.from_numpy(clips), arch)).attention
    return slot_mass(attention).numpy()
