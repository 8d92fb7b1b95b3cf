"""``memae-dist export``: a checkpoint as a self-contained ONNX, pt2 or TorchScript model.

The exported graph takes ``clip``: float32 ``(B, 1, L, H, W)`` in [-1, 1] (uint8 frames / 127.5
- 1, L = 16 frames; the image net: ``(B, 1, H, W)``, the MLP: ``(B, H*W)``) and returns
``recon`` (same shape) and ``error`` ``(B,)``: the window's reconstruction error (mean squared
error, or mean absolute error with ``error="mae"``). The batch size is free; H and W are fixed
to the training frame size. Every export is checked
against the PyTorch model on random clips (with a batch size other than the traced one) and
refused when any output differs by ``tol`` or more. Usage: docs/EXPORT.md.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from memae_dist.data.storage import StorageConfig, absolute, write_bytes_atomic
from memae_dist.errors import UserError
from memae_dist.evaluate.ingest import check_trained_size, checkpoint_frame_size
from memae_dist.evaluate.score import load_model
from memae_dist.models.build import arrange

FORMATS = ("onnx", "pt2", "torchscript")
META_NAME = "memae_dist.json"  # ONNX metadata key / pt2 and TorchScript extra file
ONNX_OPSET = 17


class ScoringModel(nn.Module):
    """MemAE plus its window error, as one graph: ``clip -> (recon, error)``."""

    def __init__(self, model: nn.Module, error: str = "mse") -> None:
        super().__init__()
        if error not in ("mse", "mae"):
            raise UserError(f"error must be 'mse' or 'mae', got {error!r}")
        self.model = model
        self.squared = error == "mse"

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon = self.model(clip).recon  # the shape of clip
        diff = recon - clip
        err = diff * diff if self.squared else diff.abs()
        return recon, err.flatten(1).mean(1)  # (B,)


@dataclass
class ExportResult:
    path: str
    format: str
    size: tuple[int, int]
    arch: str
    window: int
    max_abs_diff: float  # largest |exported - PyTorch| over both outputs of the check clips
    seconds: float
    checkpoint: str = ""  # the checkpoint a run URI resolved to


INPUTS = {"video": "clip: float32 (B, 1, L, H, W) = uint8 / 127.5 - 1",
          "image": "clip: float32 (B, 1, H, W) = uint8 / 127.5 - 1",
          "mlp": "clip: float32 (B, H*W) = uint8 / 127.5 - 1, rows of the image"}


def random_clips(batch: int, window: int, size: tuple[int, int], seed: int,
                 arch: str = "video") -> torch.Tensor:
    """Uniform float32 inputs in [-1, 1] of an ``arch`` net, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return arrange(torch.rand((batch, window, *size), generator=gen) * 2 - 1, arch)


def check_size(arch: str, size: tuple[int, int], input_dim: int) -> None:
    """The frame size an ``arch`` net takes (video: multiples of 16; image: 28x28; mlp: H*W)."""
    if arch == "video" and (min(size) < 16 or size[0] % 16 or size[1] % 16):
        raise UserError(f"--size must be two multiples of 16 (>= 16), got {size[0]} {size[1]}")
    if arch == "image" and tuple(size) != (28, 28):
        raise UserError(f"the image net takes 28x28 images, got --size {size[0]} {size[1]}")
    if arch == "mlp" and size[0] * size[1] != input_dim:
        raise UserError(f"--size {size[0]} {size[1]} is {size[0] * size[1]} values; the MLP "
                        f"takes model.input_dim={input_dim}")


def export_model(checkpoint: str, fmt: str, out: str, *, size: tuple[int, int] | None = None,
                 error: str | None = None, tol: float = 1e-4, check_batch: int = 3,
                 storage: StorageConfig | None = None) -> ExportResult:
    """Export, verify against PyTorch, then write ``out`` atomically (path or s3:// URI)."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    t0 = time.perf_counter()
    loaded = load_model(absolute(checkpoint), storage)  # recorded as scores files record it
    arch = loaded.config.model.arch
    check_trained_size(size, loaded.trained_on)  # scoring holds the model to it too
    size = size or checkpoint_frame_size(loaded.config.to_dict(), storage,
                                         loaded.trained_on) or (
        (28, 28) if arch == "image" else None)  # the image net takes nothing else
    if size is None:
        raise UserError("--size H W is needed: the checkpoint's training data (for its frame "
                        "size) is not reachable from here")
    check_size(arch, size, loaded.config.model.input_dim)
    window = loaded.config.data.window
    error = error or loaded.config.eval.error
    wrapper = ScoringModel(loaded.model, error).eval()
    meta = {"checkpoint": loaded.checkpoint_uri, "arch": arch, "frame_size": list(size),
            "window": window, "error": error, "input": INPUTS[arch],
            "outputs": ["recon: the shape of clip", "error: (B,) window score"],
            "variant": loaded.config.model.variant}
    example = random_clips(2, window, size, seed=0, arch=arch)
    with tempfile.TemporaryDirectory(prefix="memae-export-") as tmp:
        path = Path(tmp) / f"model.{fmt}"  # a scratch name: the file is written to ``out``
        exporter = {"onnx": _export_onnx, "pt2": _export_program,
                    "torchscript": _export_torchscript}[fmt]
        run = exporter(wrapper, example, path, meta)
        check = random_clips(check_batch, window, size, seed=1, arch=arch)
        with torch.no_grad():
            expected = [t.numpy() for t in wrapper(check)]
        got = run(check.numpy())
        diff = max(float(np.abs(a - b).max()) for a, b in zip(got, expected))
        if not diff < tol:
            raise RuntimeError(f"exported {fmt} model differs from PyTorch by {diff:.3g} "
                               f"(tolerance {tol:g}); not writing {out}")
        write_bytes_atomic(out, path.read_bytes(), storage)
    return ExportResult(out, fmt, tuple(size), arch, window, diff, time.perf_counter() - t0,
                        loaded.checkpoint_uri)


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path, meta: dict):
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs the 'export' extra: pip install "
                        "'memae-dist[export]' (onnx, onnxruntime)") from None
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter: it handles the memory module's shape arithmetic
        # without tracing through torch.export; its deprecation notice is not for the user.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["clip"], output_names=["recon", "error"],
            dynamic_axes={"clip": {0: "batch"}, "recon": {0: "batch"}, "error": {0: "batch"}},
        )
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = META_NAME, json.dumps(meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda clips: session.run(["recon", "error"], {"clip": clips})


def _export_program(wrapper: nn.Module, example: torch.Tensor, path: Path, meta: dict):
    # torch.export's ExportedProgram: TorchScript's successor upstream, loadable with
    # torch.export.load and compilable ahead of time (AOTInductor). The batch size stays free.
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(wrapper, (example,), dynamic_shapes={"clip": {0: batch}})
    torch.export.save(program, str(path), extra_files={META_NAME: json.dumps(meta)})
    return _numpy_runner(torch.export.load(str(path)).module())


def _export_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path, meta: dict):
    # TorchScript is deprecated upstream but still what many C++/mobile runtimes load; the
    # warnings would only tell the user what docs/EXPORT.md already says.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={META_NAME: json.dumps(meta)})
        loaded = torch.jit.load(str(path), map_location="cpu")
    return _numpy_runner(loaded)


def _numpy_runner(module):
    """The reloaded file as the check calls it: float32 clips in, numpy outputs back."""
    def run(clips: np.ndarray):
        with torch.no_grad():
            return [t.numpy() for t in module(torch.from_numpy(clips))]

    return run
