"""``memae-dist export``: ONNX, pt2 and TorchScript models give the PyTorch outputs (< 1e-4)."""

import json
import shutil
from pathlib import Path

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
    import onnx  # the export extra, which `make test` installs
    import onnxruntime as ort
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


def test_export_takes_the_size_the_checkpoint_recorded(tmp_path, capsys):
    """A trained checkpoint records its frame size, so it exports without --size even where
    its training data is out of reach; an older one without the record needs --size."""
    gone = str(tmp_path / "gone")
    ckpt = make_checkpoint(tmp_path / "new" / "checkpoint_epoch_0001", gone,
                           trained_on={"size": [32, 48]})
    out = tmp_path / "model.pt2"
    assert main(["export", "--checkpoint", ckpt, "--format", "pt2", "--out", str(out)]) == 0
    assert "16x32x48 clips" in capsys.readouterr().out
    # Another size is refused, as scoring refuses it: the model was never trained on it.
    assert main(["export", "--checkpoint", ckpt, "--format", "pt2", "--out", str(out),
                 "--size", "32", "32"]) == 2
    assert capsys.readouterr().err.strip() == (
        "memae-dist: error: --size 32 32: the checkpoint was trained on 32x48 frames; drop "
        "--size or give 32 48")
    old = make_checkpoint(tmp_path / "old" / "checkpoint_epoch_0001", gone)
    assert main(["export", "--checkpoint", old, "--format", "pt2", "--out",
                 str(tmp_path / "old.pt2")]) == 2
    assert "--size H W is needed" in capsys.readouterr().err


def test_export_refuses_bad_settings(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", tiny_checkpoint, "--format", "onnx", "--out",
                 str(out), "--size", "20", "20"]) == 2
    assert "--size must be two multiples of 16" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--format", "onnx",
                 "--out", str(out)]) == 2
    assert "no checkpoint found" in capsys.readouterr().err
    assert not out.exists()


def test_what_is_not_a_checkpoint_is_refused_in_one_line(tiny_checkpoint, tiny_data, tmp_path,
                                                         capsys, monkeypatch):
    config = (Path(tiny_checkpoint) / "config.json").read_text()
    bad = {}
    for name, foreign in (("linear", torch.nn.Linear(2, 2).state_dict()), ("dict", {"a": 1}),
                          ("no_weights", {"model": 1})):
        folder = tmp_path / name
        folder.mkdir()
        torch.save(foreign, folder / "state.pt")
        (folder / "config.json").write_text(config)
        bad[str(folder)] = f"{folder / 'state.pt'} is not a memae-dist checkpoint"
    scripted = tmp_path / "scripted"  # an exported model copied in as the state file
    scripted.mkdir()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted / "state.pt")
    (scripted / "config.json").write_text(config)
    bad[str(scripted)] = "an exported model (TorchScript or pt2), not a checkpoint"
    half = tmp_path / "half"  # a copy cut short: state.pt is the last file written
    half.mkdir()
    (half / "config.json").write_text(config)
    bad[str(half)] = "it has config.json but no state.pt: an incomplete checkpoint"
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "state.pt").write_bytes((Path(tiny_checkpoint) / "state.pt").read_bytes())
    what = "give a checkpoint folder (with state.pt and config.json), its state.pt, or a run"
    bad[str(lone)] = f"{lone} has state.pt but no config.json, so it is not a complete checkpoint"
    bad[str(lone / "state.pt")] = bad[str(lone)]
    (tmp_path / "model.pt").write_bytes(b"")
    bad[str(tmp_path / "model.pt")] = f"{tmp_path / 'model.pt'} is a file, not a checkpoint"
    edited = tmp_path / "edited"  # its config.json changed by hand after training
    edited.mkdir()
    (edited / "state.pt").write_bytes((Path(tiny_checkpoint) / "state.pt").read_bytes())
    tree = json.loads(config)
    tree["model"]["num_slots"] = 7
    (edited / "config.json").write_text(json.dumps(tree))
    bad[str(edited)] = (f"{edited}: weights do not fit its config.json (size mismatch for "
                        "memory.memory: copying a param with shape")
    out = tmp_path / "out"
    for ckpt, why in bad.items():
        for argv in (["export", "--checkpoint", ckpt, "--format", "onnx",
                      "--out", str(out / "m.onnx")],
                     ["evaluate", "--checkpoint", ckpt, "--data", tiny_data, "--workers", "0",
                      "--out", str(out)]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and why in err, (argv, err)
            if not any(k in why for k in ("is not a memae-dist", "do not fit", "exported",
                                          "an incomplete")):
                assert what in err  # where the path was no checkpoint: say what one is
    assert not out.exists()
    # A checkpoint's own state.pt names it, also as a bare file name.
    monkeypatch.chdir(tiny_checkpoint)
    assert load_model("state.pt").checkpoint_uri == "."


@pytest.mark.parametrize(("arch", "shape"), [("image", (3, 1, 28, 28)), ("mlp", (3, 784))])
def test_image_and_mlp_checkpoints_export_with_their_input_shape(arch, shape, tmp_path, capsys):
    """The image net takes 28x28 only, so its size needs no training data; the MLP takes H*W."""
    ckpt = make_checkpoint(tmp_path / "checkpoint_epoch_0001", str(tmp_path / "gone"),
                           f"model.arch={arch}", "data.window=1", "model.memory_query=flatten")
    out = tmp_path / "model.pt2"
    size = [] if arch == "image" else ["--size", "28", "28"]
    assert main(["export", "--checkpoint", ckpt, "--format", "pt2", "--out", str(out),
                 *size]) == 0
    printed = capsys.readouterr().out
    assert "exported pt2 for 28x28 images" in printed and f"checkpoint: {ckpt}\n" in printed
    program = torch.export.load(str(out)).module()
    clips = random_clips(3, 1, (28, 28), seed=5, arch=arch)
    assert clips.shape == shape
    with torch.no_grad():
        recon, error = (t.numpy() for t in program(clips))
    want_recon, want_error = pytorch_outputs(ckpt, clips)
    assert recon.shape == shape and np.abs(recon - want_recon).max() < 1e-4
    assert np.abs(error - want_error).max() < 1e-4
    if arch == "mlp":  # a size that is not the MLP's input length is refused
        assert main(["export", "--checkpoint", ckpt, "--format", "pt2", "--out",
                     str(tmp_path / "bad.pt2"), "--size", "20", "20"]) == 2
        assert ("--size 20 20 is 400 values; the MLP takes model.input_dim=784"
                in capsys.readouterr().err)


def test_export_never_writes_over_the_checkpoint_it_reads(tiny_checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(Path(tiny_checkpoint).parent, run)
    ckpt = run / Path(tiny_checkpoint).name
    before = {p: p.read_bytes() for p in ckpt.iterdir()}
    for source, out in ((ckpt, ckpt / "state.pt"), (run, ckpt / "state.pt"),
                        (ckpt, ckpt / "config.json"), (ckpt / "state.pt", ckpt / "config.json")):
        fmt = "pt2" if out.name == "config.json" else "torchscript"
        assert main(["export", "--checkpoint", str(source), "--format", fmt,
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "would overwrite a file of the checkpoint" in err or "is the input file" in err
    assert {p: p.read_bytes() for p in ckpt.iterdir()} == before
    # A model beside the checkpoint's own files is no harm, and may be replaced.
    for _ in range(2):
        assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript",
                     "--out", str(ckpt / "model.ts")]) == 0
    assert main(["export", "--checkpoint", str(run), "--format", "torchscript",
                 "--out", str(ckpt / "model.ts")]) == 2  # inside a checkpoint of the run
