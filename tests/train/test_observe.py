"""The per-epoch log line a person watches while a run is going."""

import logging

from memae_dist.train.observe import log_epoch


def test_the_epoch_line_always_shows_the_data_timers(caplog):
    row = {"epoch": 3, "loss": 0.012345678, "entropy": 0.25, "slots_used": 480,
           "clips_per_s": 17.25, "time_to_first_batch_s": 2.345, "data_wait_s": 12.34,
           "data_wait_frac": 0.2, "memory_collapse": False, "lr": 0.0003, "val_auc": None}
    # The ae variant has no memory: no slot count, and its entropy term is no measurement.
    no_memory = {k: v for k, v in row.items() if k not in ("slots_used", "memory_collapse")}
    with caplog.at_level(logging.INFO, "memae_dist.train"):
        log_epoch(row, epochs=40)
        log_epoch({**row, "memory_collapse": True}, epochs=40)
        log_epoch({**no_memory, "entropy": 0.0}, epochs=40)
    quiet, collapsed, ae = caplog.messages
    assert quiet == ("epoch 3/40  loss 0.01235  entropy 0.2500  slots_used 480  "
                     "clips_per_s 17.2  time_to_first_batch_s 2.35  data_wait_s 12.3  "
                     "data_wait_frac 0.20  lr 0.0003")
    assert collapsed == quiet + "  MEMORY COLLAPSE"
    assert ae == quiet.replace("  entropy 0.2500  slots_used 480", "")


def test_an_upload_cut_off_keeps_the_events_written_before(tmp_path, monkeypatch):
    import pyarrow.fs as pafs
    import pytest

    from memae_dist.data import storage
    from memae_dist.train.observe import TensorBoard

    board = TensorBoard(str(tmp_path / "run"))
    board.write({"epoch": 1, "loss": 0.5})
    (events,) = (tmp_path / "run" / "tensorboard").iterdir()
    first = events.read_bytes()
    real_open = pafs.LocalFileSystem.open_output_stream

    class Dying(pafs.LocalFileSystem):  # the process killed in the middle of the copy
        def open_output_stream(self, path, *args, **kwargs):
            stream = real_open(self, path, *args, **kwargs)
            stream.write(b"half")
            raise OSError("killed mid-copy")

    monkeypatch.setattr(storage, "pyarrow_fs", lambda uri, cfg=None: (Dying(), uri))
    with pytest.raises(OSError, match="killed"):
        board.write({"epoch": 2, "loss": 0.25})
    assert [p.name for p in events.parent.iterdir()] == [events.name]
    assert events.read_bytes() == first and len(first) > 0
    board.close()
