"""``score`` with Ray Data: N actors give exactly the scores of one process, in the right place."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memae_dist.cli import main
from memae_dist.data.manifest import load_manifest
from memae_dist.errors import UserError
from memae_dist.evaluate.batch_score import (
    META_KEY,
    SCHEMA,
    ScoreConfig,
    read_scores,
    score_dataset,
    video_scores,
)
from memae_dist.evaluate.score import load_model, score_split
from tests.evaluate.conftest import make_checkpoint, write_scores_file


def test_two_workers_score_exactly_like_one_process(segmented_data, tiny_checkpoint, s3_bucket,
                                                    tmp_path):
    local = score_dataset(tiny_checkpoint, segmented_data, str(tmp_path / "local.parquet"),
                          ScoreConfig(workers=0, batch_size=4, cpus_per_worker=1, progress=False))
    out = f"{s3_bucket}/scores/test.parquet"
    dist = score_dataset(tiny_checkpoint, segmented_data, out,
                         ScoreConfig(workers=2, batch_size=4, cpus_per_worker=1, progress=False))
    # Bit-identical, not merely close: same batch composition and the same threads per process
    # on every path (with another thread count, CPU convolutions may sum in another order).
    assert dist.table.equals(local.table)
    back, meta = read_scores(out)
    assert back.schema.equals(SCHEMA) and back.equals(local.table)
    assert meta["checkpoint"] == tiny_checkpoint and meta["data"] == segmented_data
    assert meta["workers"] == 2 and meta["split"] == "test" and meta["frame_size"] == [16, 16]

    # The in-process reference path (used by the foundation's evaluate) agrees too.
    reference = score_split(load_model(tiny_checkpoint), segmented_data, batch_size=4)
    got = video_scores(back)
    assert [v.name for v in got] == [v.name for v in reference] == ["01", "02", "03"]
    for g, r in zip(got, reference):
        np.testing.assert_array_equal(g.frames, r.frames)
        np.testing.assert_array_equal(g.scores, r.scores)

    # Every scored frame: 8 .. N-8 of each video, labels from the manifest, regularity in [0, 1].
    manifest = load_manifest(segmented_data)
    assert manifest.segment_frames == 24  # several segments per video
    rows = back.to_pydict()
    for video in manifest.videos("test"):
        sel = np.array(rows["video"]) == video.name
        frames = np.array(rows["frame"])[sel]
        np.testing.assert_array_equal(frames, np.arange(8, video.num_frames - 7))
        labels = np.array(rows["label"])[sel]
        np.testing.assert_array_equal(labels, manifest.frame_labels(video)[frames])
        reg = np.array(rows["regularity"])[sel]
        assert reg.min() == 0.0 and reg.max() == 1.0
        score = np.array(rows["score"])[sel]
        assert np.all(score > 0) and np.argmax(score) == np.argmin(reg)
    assert sum(rows["label"]) > 0  # the synthetic anomalies are in there


def test_batch_size_changes_nothing_but_speed(segmented_data, tiny_checkpoint):
    """Scores agree across batch sizes to float32 rounding (only the last bits may move)."""
    a = score_dataset(tiny_checkpoint, segmented_data, None,
                      ScoreConfig(workers=0, batch_size=1, progress=False))
    b = score_dataset(tiny_checkpoint, segmented_data, None,
                      ScoreConfig(workers=0, batch_size=16, progress=False))
    np.testing.assert_allclose(a.table.column("score").to_numpy(),
                               b.table.column("score").to_numpy(), rtol=1e-5)


def test_window_error_defaults_to_the_checkpoints_recipe(segmented_data, tiny_checkpoint,
                                                         tmp_path):
    """A recipe's eval.error (the Ped2 recipes say mae) is how its checkpoints are scored unless
    the caller names an error."""
    mae_ckpt = make_checkpoint(tmp_path / "checkpoint_epoch_0001", segmented_data,
                               "eval.error=mae")
    plain = ScoreConfig(workers=0, batch_size=8, progress=False)
    by_recipe = score_dataset(mae_ckpt, segmented_data, None, plain)
    named_mae = score_dataset(tiny_checkpoint, segmented_data, None,
                              ScoreConfig(workers=0, batch_size=8, error="mae", progress=False))
    named_mse = score_dataset(mae_ckpt, segmented_data, None,
                              ScoreConfig(workers=0, batch_size=8, error="mse", progress=False))
    default = score_dataset(tiny_checkpoint, segmented_data, None, plain)
    assert by_recipe.meta["error"] == "mae" and default.meta["error"] == "mse"
    # Same weights (same seed), so the recipe's default equals naming the error.
    assert by_recipe.table.equals(named_mae.table)
    assert named_mse.table.equals(default.table)
    assert not by_recipe.table.equals(default.table)


def test_data_at_another_frame_size_than_training_is_refused(tmp_path, segmented_data):
    """The checkpoint records its training frame size; data prepared at another size would be
    scored at a scale the memory never saw, so it is refused before any scoring."""
    m = load_manifest(segmented_data)
    h, w = m.size
    other = make_checkpoint(tmp_path / "other" / "checkpoint_epoch_0001", segmented_data,
                            trained_on={"size": [2 * h, 2 * w]})
    with pytest.raises(UserError, match=rf"dataset {segmented_data} has {h}x{w} frames, but the "
                       rf"checkpoint was trained on {2 * h}x{2 * w}: prepare the data again "
                       rf"with --size {2 * h} {2 * w}$"):
        score_dataset(other, segmented_data, None, ScoreConfig(workers=0, progress=False))
    same = make_checkpoint(tmp_path / "same" / "checkpoint_epoch_0001", segmented_data,
                           trained_on={"size": [h, w]})
    result = score_dataset(same, segmented_data, None, ScoreConfig(workers=0, progress=False))
    assert result.table.num_rows > 0


def test_settings_and_files_are_checked(tmp_path, tiny_checkpoint, segmented_data):
    with pytest.raises(UserError, match="score.batch_size"):
        ScoreConfig(batch_size=0)
    with pytest.raises(UserError, match="score.gpus_per_worker"):
        ScoreConfig(gpus_per_worker=-1)
    with pytest.raises(UserError, match="score.precision"):
        ScoreConfig(precision="fp16")
    with pytest.raises(UserError, match="split 'val'"):
        score_dataset(tiny_checkpoint, segmented_data, None,
                      ScoreConfig(workers=0, split="val", progress=False))
    with pytest.raises(UserError, match="no checkpoint found"):
        score_dataset(str(tmp_path / "nothing"), segmented_data, None, ScoreConfig(workers=0))
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1]}), plain)
    with pytest.raises(UserError, match="not a memae-dist scores file"):
        read_scores(str(plain))
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(UserError, match=r"junk\.parquet is not a scores file: not Parquet \("):
        read_scores(str(tmp_path / "junk.parquet"))


def test_malformed_scores_files_are_refused_in_one_line(tmp_path, capsys):
    good = write_scores_file(tmp_path / "good.parquet")
    table = pq.read_table(good)
    meta = json.loads(table.schema.metadata[META_KEY])
    scores = table.column("score").to_pylist()

    def with_meta(**changes):
        return table.replace_schema_metadata({META_KEY: json.dumps({**meta, **changes})})

    cases = {
        "not_json": (table.replace_schema_metadata({META_KEY: b"{not json"}),
                     "its 'memae_dist' metadata is not valid JSON"),
        "not_an_object": (table.replace_schema_metadata({META_KEY: b"[1]"}),
                          "is not a memae-dist scores file"),
        "string_scores": (table.set_column(2, "score", pa.array([str(s) for s in scores])),
                          "column 'score' holds string, expected double"),
        "missing_score": (table.set_column(2, "score", pa.array([None] + scores[1:],
                                                                pa.float64())),
                          "column 'score' has missing values"),
        "newer": (with_meta(format_version=99), "written by a newer memae-dist (scores "
                  "format_version 99; this one reads up to 1): upgrade memae-dist"),
        "no_version": (with_meta(format_version=None), "unknown scores format_version None"),
        "numeric_checkpoint": (with_meta(checkpoint=5), "metadata is damaged ('checkpoint' is "
                               "int, not text)"),
        "label_5": (table.set_column(table.column_names.index("label"), "label",
                                     pa.array([5] + table.column("label").to_pylist()[1:],
                                              table.schema.field("label").type)),
                    "column 'label' holds 5; labels are 0 (normal), 1 (abnormal) or missing"),
    }
    out = tmp_path / "out"
    for name, (bad, why) in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(bad, path)
        with pytest.raises(UserError, match=r"^" + str(path)) as caught:
            read_scores(str(path))
        assert why in str(caught.value), name
        for verb in ("evaluate", "report"):
            assert main([verb, "--scores", str(path), "--out", str(out)]) == 2, (name, verb)
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and why in err, (name, verb, err)
    assert not out.exists()
    # The file these were made from reads, with its labels.
    read, read_meta = read_scores(good)
    assert read.num_rows == 24 and read_meta == meta
    assert [v.labels.sum() for v in video_scores(read, labelled_only=True)] == [6, 6]


def test_scores_never_overwrite_the_dataset_they_read(tmp_path, tiny_checkpoint, segmented_data,
                                                      capsys):
    data = shutil.copytree(segmented_data, tmp_path / "data")
    shard = next(data.glob("test/*.parquet"))
    before = shard.read_bytes()
    for out in (shard, data / "manifest.json"):
        assert main(["score", "--checkpoint", tiny_checkpoint, "--data", str(data), "--out",
                     str(out), "--workers", "0"]) == 2
        err = capsys.readouterr().err
        assert f"would overwrite a file of the dataset {data}" in err, err
    assert shard.read_bytes() == before
    # A scores file beside the dataset's own files is no harm to it, and may be replaced.
    for _ in range(2):
        assert main(["score", "--checkpoint", tiny_checkpoint, "--data", str(data), "--out",
                     str(data / "scores.parquet"), "--workers", "0", "--no-progress"]) == 0


def test_a_run_still_training_is_scored_though_it_prunes_what_was_read(
        segmented_data, tmp_path, monkeypatch):
    """`--checkpoint STORAGE/NAME` while the run trains: its latest checkpoint can be pruned
    between being found and being read (the driver), or after (each Ray actor read it again:
    "no checkpoint found at RUN/checkpoint_epoch_0002", with the actors' tracebacks)."""
    from memae_dist.evaluate import batch_score, score

    run = tmp_path / "run"
    for epoch in (1, 2):
        make_checkpoint(run / f"checkpoint_epoch_{epoch:04d}", segmented_data)
    real_config, real_state = score.read_checkpoint_config, batch_score.read_model_state

    def next_epoch_then_prune(ckpt, storage=None):  # the trainer between the two reads
        if ckpt.endswith("checkpoint_epoch_0002"):
            shutil.copytree(ckpt, run / "checkpoint_epoch_0003")
            # Pruning deletes the files in no fixed order: here config.json went first.
            (run / "checkpoint_epoch_0002" / "config.json").unlink()
        return real_config(ckpt, storage)

    monkeypatch.setattr(score, "read_checkpoint_config", next_epoch_then_prune)
    assert score.read_model_state(str(run))[0].endswith("checkpoint_epoch_0003")
    shutil.rmtree(run / "checkpoint_epoch_0002")

    def read_then_prune(uri, storage=None):  # pruned once the driver has read it
        found = real_state(uri, storage)
        shutil.rmtree(found[0])
        return found

    monkeypatch.setattr(batch_score, "read_model_state", read_then_prune)
    result = score_dataset(str(run), segmented_data, None,
                           ScoreConfig(workers=1, batch_size=8, progress=False))
    assert result.meta["checkpoint"].endswith("checkpoint_epoch_0003")
    assert len(result.table) > 0 and not (run / "checkpoint_epoch_0003").exists()
