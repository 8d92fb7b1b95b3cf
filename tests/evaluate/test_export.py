"""``memae-dist export``: ONNX, pt2 and TorchScript models give the PyTorch outputs (< 1e-4)."""

import json

import numpy as np
import pytest
import torch

from memae_dist.cli import main
from memae_dist.evaluate.export import META_NAME, ScoringModel, random_clips
from memae_dist.evaluate.score import load_model
from tests.evaluate.conftest import make_checkpoint


def pytorch_outputs(checkpoint, clips):
    model = ScoringModel(load_model(checkpoint).model).eval()
    with torch.no_grad():
        return [t.numpy() for t in model(clips)]


def test_onnx_export_matches_pytorch(tiny_checkpoint, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", tiny_checkpoint, "--format", "onnx",
                 "--out", str(out)]) == 0
    assert "16x16x16 clips" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["clip"]
    # A batch size the exporter never traced, and clips of a seed it never saw.
    clips = random_clips(5, 16, (16, 16), seed=42)
    recon, error = session.run(["recon", "error"], {"clip": clips.numpy()})
    want_recon, want_error = pytorch_outputs(tiny_checkpoint, clips)
    assert recon.shape == (5, 1, 16, 16, 16) and error.shape == (5,)
    assert np.abs(recon - want_recon).max() < 1e-4
    assert np.abs(error - want_error).max() < 1e-4
    np.testing.assert_allclose(error, ((recon - clips.numpy()) ** 2).reshape(5, -1).mean(1),
                               rtol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    info = json.loads(meta[META_NAME])
    assert info["frame_size"] == [16, 16] and info["checkpoint"] == tiny_checkpoint


def test_torchscript_export_matches_pytorch(tiny_checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", tiny_checkpoint, "--format", "torchscript",
                 "--out", str(out), "--error", "mae"]) == 0
    extra = {META_NAME: ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra[META_NAME])["error"] == "mae"
    clips = random_clips(4, 16, (16, 16), seed=7)
    with torch.no_grad():
        recon, error = (t.numpy() for t in scripted(clips))
    model = ScoringModel(load_model(tiny_checkpoint).model, "mae").eval()
    with torch.no_grad():
        want_recon, want_error = (t.numpy() for t in model(clips))
    assert np.abs(recon - want_recon).max() < 1e-4
    assert np.abs(error - want_error).max() < 1e-4


def test_pt2_export_matches_pytorch_at_any_batch_size(tiny_checkpoint, tmp_path):
    out = tmp_path / "model.pt2"
    assert main(["export", "--checkpoint", tiny_checkpoint, "--format", "pt2",
                 "--out", str(out)]) == 0
    extra = {META_NAME: ""}
    program = torch.export.load(str(out), extra_files=extra).module()
    info = json.loads(extra[META_NAME])
    assert info["error"] == "mse" and info["frame_size"] == [16, 16]
    for batch in (1, 6):  # neither is the batch size the program was exported with
        clips = random_clips(batch, 16, (16, 16), seed=batch)
        with torch.no_grad():
            recon, error = (t.numpy() for t in program(clips))
        want_recon, want_error = pytorch_outputs(tiny_checkpoint, clips)
        assert recon.shape == (batch, 1, 16, 16, 16) and error.shape == (batch,)
        assert np.abs(recon - want_recon).max() < 1e-4
        assert np.abs(error - want_error).max() < 1e-4


def test_export_computes_the_recipes_window_error_by_default(tiny_data, tmp_path):
    ckpt = make_checkpoint(tmp_path / "checkpoint_epoch_0001", tiny_data, "eval.error=mae")
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", ckpt, "--format", "torchscript",
                 "--out", str(out)]) == 0
    extra = {META_NAME: ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra[META_NAME])["error"] == "mae"
    clips = random_clips(2, 16, (16, 16), seed=3)
    with torch.no_grad():
        recon, error = scripted(clips)
    np.testing.assert_allclose(error.numpy(), (recon - clips).abs().flatten(1).mean(1).numpy(),
                               rtol=1e-5)


def test_export_refuses_bad_settings(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", tiny_checkpoint, "--format", "onnx", "--out",
                 str(out), "--size", "20", "20"]) == 2
    assert "--size must be two multiples of 16" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--format", "onnx",
                 "--out", str(out)]) == 2
    assert "no checkpoint found" in capsys.readouterr().err
    assert not out.exists()
