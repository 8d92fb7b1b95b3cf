"""Training through Ray Train: debug mode, DDP workers, checkpoints, exact resumption."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from memae_dist.config import load_config
from memae_dist.errors import UserError
from memae_dist.layout import RUN_FILES
from memae_dist.train.checkpoint import RAY_SNAPSHOT, STATE_FILE, latest_checkpoint
from memae_dist.train.trainer import check_same_model, fit

TINY = [
    "model.num_slots=50", "model.shrink_threshold=0.02", "data.shuffle_buffer=16",
    "train.batch_size=8", "train.lr=1e-3",
]


def tiny_config(data: str, storage: Path, *extra: str):
    return load_config(None, [*TINY, f"data.path={data}", f"run.storage={storage}", *extra])


def weights(ckpt_uri: str) -> dict:
    return checkpoint_state(ckpt_uri)["model"]


def checkpoint_state(ckpt_uri: str) -> dict:
    return torch.load(Path(ckpt_uri) / STATE_FILE, map_location="cpu", weights_only=True)


def differences(a, b, where: str = "") -> list[str]:
    """Where two checkpoint payloads differ, bit for bit (tensors, arrays, numbers, text)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{where}: tensors differ"]
    return [] if type(a) is type(b) and a == b else [f"{where}: {a!r:.60} != {b!r:.60}"]


def test_data_the_model_cannot_train_on_is_refused_before_training(tiny_data, tmp_path):
    small = tiny_config(tiny_data, tmp_path, "train.workers=0", "train.batch_size=4096",
                        "run.name=small")
    with pytest.raises(UserError, match=r"split train of .* has \d+ clips \(16-frame windows "
                                        r"at stride 1\), fewer than one batch "
                                        r"\(train.batch_size=4096\): lower train.batch_size"):
        fit(small)  # before: no step at all, a 0/0 loss and a false memory-collapse warning
    colour = tiny_config(tiny_data, tmp_path, "train.workers=0", "model.in_channels=3",
                         "run.name=colour")
    with pytest.raises(UserError, match=r"model.in_channels=3 does not fit dataset .*: "
                                        r"prepared frames are grey \(1 channel\)"):
        fit(colour)
    assert not (tmp_path / "small").exists() and not (tmp_path / "colour").exists()
    # Windows longer than every training video: the window is named, not "0 clips".
    from memae_dist.data.importers.folder import import_folder
    from tests.data.videos import write_frames

    write_frames(tmp_path / "cams" / "train" / "a", 10)
    short = str(tmp_path / "short")
    import_folder(tmp_path / "cams", short, (16, 16), workers=1, progress=False)
    with pytest.raises(UserError, match=r"^data.window=16 is longer than the shortest training "
                                        r"video \(10 frames\) in .*short$"):
        fit(tiny_config(short, tmp_path, "train.workers=0", "run.name=shortrun"))
    assert not (tmp_path / "shortrun").exists()


def test_debug_mode_trains_in_process_and_stays_resumable(tiny_data, tmp_path, caplog):
    cfg = tiny_config(tiny_data, tmp_path, "train.workers=0", "train.epochs=1",
                      "train.max_steps_per_epoch=3", "run.name=debug", "data.val_split=test",
                      "train.checkpoint_metric=val_auc")
    result = fit(cfg)
    assert result.checkpoint_uri.endswith("checkpoint_epoch_0001")
    assert result.completed and result.epochs_done == 1
    assert [row["epoch"] for row in result.history] == [1]
    row = result.history[0]
    assert row["step"] == 3 and row["clips"] == 24 and row["run_starts"] == 1
    assert 0 < row["loss"] < 10 and 0 <= row["data_wait_frac"] <= 1
    assert row["slots_used"] >= 1 and row["checkpoint_s"] > 0
    # Validation on the labelled test split: 2 videos x 25 stride-1 windows.
    assert row["val_windows"] == 50 and row["val_recon"] > 0 and 0 <= row["val_auc"] <= 1
    assert result.best_checkpoint_uri.endswith("best/checkpoint_epoch_0001")
    # The checkpoint records what it was trained on (scoring and export read it back).
    state = torch.load(Path(result.checkpoint_uri) / STATE_FILE, weights_only=True)
    assert state["data"] == {"size": [16, 16]}
    history = json.loads((tmp_path / "debug" / "history.json").read_text())
    assert history == result.history
    assert (tmp_path / "debug" / "history.csv").read_text().startswith("epoch,step,loss")
    assert list((tmp_path / "debug" / "tensorboard").glob("events.out.tfevents.*"))
    # The files a run keeps at its top level are those the CLI refuses to write over.
    top = {p.name for p in (tmp_path / "debug").iterdir() if p.is_file()}
    assert {"history.json", "history.csv", "best.json"} <= top <= set(RUN_FILES)
    # The same command once more: the run is finished, nothing trains, the result is the same.
    again = fit(cfg)
    assert again.history == result.history and again.checkpoint_uri == result.checkpoint_uri
    # Resumed with another model, its weights would not load: refused, naming the change.
    changed = tiny_config(tiny_data, tmp_path, "train.workers=0", "train.epochs=2",
                          "train.max_steps_per_epoch=3", "run.name=debug", "model.num_slots=20")
    with pytest.raises(UserError, match=r"debug was started with model.num_slots=50 \(now 20\); "
                                        "a run keeps its model when it resumes"):
        fit(changed)
    # So are the clips it sees: another window, or frames of another size.
    other = tiny_config(tiny_data, tmp_path, "train.workers=0", "train.epochs=2",
                        "train.max_steps_per_epoch=3", "run.name=debug", "data.window=8")
    with pytest.raises(UserError, match=r"started with data.window=16 \(now 8\); a run keeps"):
        fit(other)
    with pytest.raises(UserError, match=r"started with 16x16 frames \(now 32x32 in .*\); a run"):
        check_same_model(str(tmp_path / "debug"), cfg, (32, 32))
    assert latest_checkpoint(str(tmp_path / "debug")).endswith("checkpoint_epoch_0001")
    # The same data moved (another folder, a bucket): resumed, and said.
    moved = shutil.copytree(tiny_data, tmp_path / "moved")
    # Another learning rate from here on: resumed too, and the mix of recipes said.
    longer = tiny_config(str(moved), tmp_path, "train.workers=0", "train.epochs=2",
                         "train.max_steps_per_epoch=3", "run.name=debug", "train.lr=0.0005")
    with caplog.at_level(logging.WARNING, logger="memae_dist.train"):
        assert fit(longer).epochs_done == 2
    assert f"resumes on {moved}; it was trained on {tiny_data} until now" in caplog.text
    assert "resumes with train.lr=0.001 (now 0.0005): its history from here on" in caplog.text


def test_two_ddp_workers_report_one_history(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path, "train.workers=2", "train.cpus_per_worker=1",
                      "train.epochs=2", "train.max_steps_per_epoch=2", "run.name=ddp")
    result = fit(cfg)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert all(row["workers"] == 2 for row in result.history)
    # Two workers, 2 steps each epoch, global batch 8 -> 16 clips per epoch.
    assert [row["clips"] for row in result.history] == [16, 16]
    for row in result.history:
        assert row["clips_per_s"] > 0 and row["data_wait_s"] >= 0 and row["checkpoint_s"] > 0
    assert result.history[1]["prev_checkpoint_s"] > 0 and result.best_checkpoint_uri is None
    assert latest_checkpoint(str(tmp_path / "ddp")).endswith("checkpoint_epoch_0002")


def test_resume_continues_exactly(tiny_data, tmp_path):
    """2 epochs in one go == 1 epoch, stop, rerun the same command for 2 epochs."""
    common = ["train.workers=1", "train.deterministic=true", "train.max_steps_per_epoch=3",
              "data.augment=true", "train.lr_schedule=cosine", "train.precise_bn_batches=2"]
    straight = fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=2",
                               "run.name=straight"))
    fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=1", "run.name=resumed"))
    resumed = fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=2",
                              "run.name=resumed"))
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    # Everything a checkpoint holds is the straight run's, to the bit: weights, Adam's moments,
    # the step, every generator (torch, numpy, Python), the data position and the best so far.
    whole, cut = checkpoint_state(straight.checkpoint_uri), checkpoint_state(resumed.checkpoint_uri)
    assert (whole["epoch"], whole["step"], whole["starts"], cut["starts"]) == (2, 6, 1, 2)
    assert whole["optimizer"]["state"] and whole["rng"].keys() >= {"torch", "numpy", "python"}
    assert differences({k: v for k, v in whole.items() if k != "starts"},
                       {k: v for k, v in cut.items() if k != "starts"}) == []
    a = whole["model"]
    assert resumed.history[1]["loss"] == straight.history[1]["loss"]
    # The cosine schedule is a function of the epoch: the rerun picks up the same curve.
    assert [row["lr"] for row in resumed.history] == [row["lr"] for row in straight.history]
    assert [row["lr"] for row in straight.history] == [1e-3, 5e-4]
    # BatchNorm statistics saved are those of the epoch's last 2 batches, not the running
    # average of its 3 steps (or of all 6).
    assert [row["precise_bn_batches"] for row in straight.history] == [2, 2]
    tracked = {int(v) for k, v in a.items() if k.endswith("num_batches_tracked")}
    assert tracked == {2}
    # Cut off before Ray wrote its record of the checkpoint (an early Ctrl-C), or started in
    # debug mode: Ray restores nothing, the workers fetch the checkpoint themselves.
    fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=1", "run.name=unrecorded"))
    (tmp_path / "unrecorded" / RAY_SNAPSHOT).unlink()
    unrecorded = fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=2",
                                 "run.name=unrecorded"))
    assert [row["run_starts"] for row in unrecorded.history] == [1, 2]
    assert differences(a, weights(unrecorded.checkpoint_uri)) == []


def test_debug_mode_is_deterministic_and_resumes_exactly_too(tiny_data, tmp_path):
    """--workers 0 reads the dataset without Ray Train's data config: the same order all the
    same, run to run and across a resume."""
    common = ["train.workers=0", "train.deterministic=true", "train.max_steps_per_epoch=3",
              "data.augment=true"]
    runs = [fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=2", f"run.name={n}"))
            for n in ("straight", "again")]
    fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=1", "run.name=resumed"))
    runs.append(fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=2",
                                "run.name=resumed")))
    a = weights(runs[0].checkpoint_uri)
    for run in runs[1:]:
        assert [row["loss"] for row in run.history] == [row["loss"] for row in runs[0].history]
        b = weights(run.checkpoint_uri)
        assert all(torch.equal(a[key], b[key]) for key in a), run.checkpoint_uri


def test_a_debug_run_resumes_on_ray_workers(tiny_data, tmp_path):
    common = ["train.max_steps_per_epoch=2", "run.name=moved"]
    first = fit(tiny_config(tiny_data, tmp_path, *common, "train.workers=0", "train.epochs=1"))
    second = fit(tiny_config(tiny_data, tmp_path, *common, "train.workers=1", "train.epochs=2"))
    assert [(r["epoch"], r["step"], r["run_starts"]) for r in second.history] == [
        (1, 2, 1), (2, 4, 2)]
    assert second.history[0]["loss"] == first.history[0]["loss"]
    # And back and forth: the debug run's epoch 3, which Ray's own record never saw, is where
    # the next Ray run goes on from (it is not trained again, nor its checkpoint rewritten).
    third = fit(tiny_config(tiny_data, tmp_path, *common, "train.workers=0", "train.epochs=3"))
    fourth = fit(tiny_config(tiny_data, tmp_path, *common, "train.workers=1", "train.epochs=4"))
    assert [(r["epoch"], r["run_starts"]) for r in fourth.history] == [(1, 1), (2, 2), (3, 3),
                                                                        (4, 4)]
    assert fourth.history[2]["loss"] == third.history[2]["loss"]


def test_keep_checkpoints_holds_across_debug_and_ray_attempts(tiny_data, tmp_path):
    # Ray prunes only the checkpoints it recorded; those a debug run (or a cut-off attempt)
    # wrote are the run's to prune.
    common = ["train.max_steps_per_epoch=2", "run.name=keep"]
    run = tmp_path / "keep"

    def kept():
        return sorted(p.name for p in run.glob("checkpoint_epoch_*"))

    fit(tiny_config(tiny_data, tmp_path, *common, "train.workers=1", "train.epochs=2"))
    fit(tiny_config(tiny_data, tmp_path, *common, "train.workers=0", "train.epochs=4"))
    assert kept() == ["checkpoint_epoch_0003", "checkpoint_epoch_0004"]
    # Ray's record names the pruned epochs 1 and 2: it is dropped (Ray used to refuse the
    # run as a "corrupted run directory" here), and the run goes on from epoch 4.
    last = fit(tiny_config(tiny_data, tmp_path, *common, "train.workers=1", "train.epochs=6"))
    assert [r["epoch"] for r in last.history] == [1, 2, 3, 4, 5, 6]
    assert kept() == ["checkpoint_epoch_0005", "checkpoint_epoch_0006"]
    # A debug run's checkpoints, then Ray's: Ray prunes its own, the run the debug run's.
    fit(tiny_config(tiny_data, tmp_path, "train.max_steps_per_epoch=2", "run.name=mixed",
                    "train.workers=0", "train.epochs=2"))
    fit(tiny_config(tiny_data, tmp_path, "train.max_steps_per_epoch=2", "run.name=mixed",
                    "train.workers=1", "train.epochs=4"))
    assert sorted(p.name for p in (tmp_path / "mixed").glob("checkpoint_epoch_*")) == [
        "checkpoint_epoch_0003", "checkpoint_epoch_0004"]


def test_a_new_checkpoint_metric_on_resume_chooses_the_best_afresh(tiny_data, tmp_path, caplog):
    common = ["train.workers=0", "train.max_steps_per_epoch=2", "run.name=metric",
              "data.val_split=test"]
    fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=2",
                    "train.checkpoint_metric=loss"))
    with caplog.at_level(logging.WARNING, logger="memae_dist.train"):
        result = fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=4",
                                 "train.checkpoint_metric=val_recon"))
    assert "resumes with train.checkpoint_metric='val_recon', checkpoint_mode='auto' (was " \
           "'loss', 'auto'): its best checkpoint (RUN/best) is chosen afresh" in caplog.text
    pointer = json.loads((tmp_path / "metric" / "best.json").read_text())
    # Not held against the best loss of epochs 1-2: the best val_recon since the change.
    best = min(result.history[2:], key=lambda row: row["val_recon"])["epoch"]
    assert (pointer["metric"], pointer["epoch"]) == ("val_recon", best)
    assert result.best_checkpoint_uri.endswith(f"best/checkpoint_epoch_{best:04d}")
    # Turned off: RUN/best is left as it was, and is no longer the run's best.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memae_dist.train"):
        result = fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=5",
                                 "train.checkpoint_metric="))
    assert "resumes without train.checkpoint_metric (was 'val_recon'): its best checkpoint " \
           "(RUN/best) stays as that metric chose it, and is no longer updated" in caplog.text
    assert "chosen afresh" not in caplog.text and result.best_checkpoint_uri is None
    assert json.loads((tmp_path / "metric" / "best.json").read_text()) == pointer


def test_a_damaged_checkpoint_is_named_before_any_worker_restores_it(tiny_data, tmp_path):
    common = ["train.workers=0", "train.max_steps_per_epoch=2", "run.name=dmg"]
    fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=2"))
    ckpt = tmp_path / "dmg" / "checkpoint_epoch_0002"
    state = ckpt / STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(UserError) as err:
        fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=3"))
    assert str(err.value).startswith(f"cannot read checkpoint {state}: ")  # not a temp copy
    assert str(err.value).endswith(f"; the run resumes from its newest checkpoint: delete {ckpt} "
                                   "to resume from the one before it, or start a new run with "
                                   "another --name")
    shutil.rmtree(ckpt)  # as the message says
    resumed = fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=3"))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]


def test_training_on_labelled_anomalies_or_the_scored_split_is_warned(tiny_data, tmp_path):
    from memae_dist.data.manifest import load_manifest
    from memae_dist.train.trainer import training_split_warnings

    manifest = load_manifest(tiny_data)
    assert training_split_warnings(tiny_config(tiny_data, tmp_path), manifest) == []
    on_test = tiny_config(tiny_data, tmp_path, "data.train_split=test")
    abnormal = sum(int(manifest.frame_labels(v).sum()) for v in manifest.videos("test"))
    first, second = training_split_warnings(on_test, manifest)
    assert first == (f"data.train_split='test' of {tiny_data} holds {abnormal} abnormal frames "
                     "in 2 of its 2 videos: the model learns them as normal; train on a split "
                     "of normal footage")
    assert second == ("data.train_split='test' is also eval.split: the model would be scored "
                      "on the frames it trained on")


def test_checkpoints_left_by_a_cut_off_attempt_are_pruned_by_the_next(tiny_data, tmp_path):
    # A stopped attempt never reaches its pruning: here, a run that kept 3 is rerun keeping
    # fewer, as a rerun after Ctrl-C finds the extra checkpoints of the attempt it resumes.
    common = ["train.max_steps_per_epoch=2", "run.name=cut", "train.workers=0"]
    fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=3", "train.keep_checkpoints=3"))

    def kept():
        return sorted(p.name for p in (tmp_path / "cut").glob("checkpoint_epoch_*"))

    assert kept() == [f"checkpoint_epoch_000{i}" for i in (1, 2, 3)]
    fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=3", "train.keep_checkpoints=1"))
    assert kept() == ["checkpoint_epoch_0003"]  # finished already: pruned all the same
    last = fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=4",
                           "train.keep_checkpoints=1"))
    assert [r["epoch"] for r in last.history] == [1, 2, 3, 4]
    assert kept() == ["checkpoint_epoch_0004"]


def test_damaged_histories_and_cut_off_uploads_are_handled_by_the_next_run(tiny_data, tmp_path,
                                                                           caplog):
    common = ["train.workers=0", "train.max_steps_per_epoch=2", "run.name=cut2"]
    fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=2"))
    run, ckpt = tmp_path / "cut2", tmp_path / "cut2" / "checkpoint_epoch_0002"
    # A worker killed while it streamed a file leaves its temporary name in a kept folder.
    stray = ckpt / f"{STATE_FILE}.tmp-{'a3' * 16}"
    stray.write_bytes(b"half a state")
    # A run-level history cut off mid-write: the finished run reads the checkpoint's copy.
    (run / "history.json").write_text('[{"epo')
    with caplog.at_level(logging.WARNING, logger="memae_dist.train"):
        done = fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=2", "train.lr=1e-2"))
    assert [r["epoch"] for r in done.history] == [1, 2] and not stray.exists()
    assert "not valid JSON (truncated?): reading the history from the checkpoint" in caplog.text
    assert "resumes with" not in caplog.text  # nothing resumed: no changed-settings warning
    # The checkpoint's own history cut off, or its configuration damaged: one line before any
    # worker restores it, with the same advice.
    advice = (f"; the run resumes from its newest checkpoint: delete {ckpt} to resume from the "
              "one before it, or start a new run with another --name")
    history = ckpt / "history.json"
    for path, text, said in (
            (history, '[{"epoch": 1',
             f"cannot read checkpoint {history}: not a JSON list of epochs (truncated?)"),
            (ckpt / "config.json", "[]",
             f"{ckpt / 'config.json'} is not a run configuration (a JSON object), but a JSON "
             "list")):
        path.write_text(text)
        with pytest.raises(UserError) as err:
            fit(tiny_config(tiny_data, tmp_path, *common, "train.epochs=3"))
        assert str(err.value) == said + advice
