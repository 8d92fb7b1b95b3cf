"""One worker's epoch: a run stopped by a non-finite loss releases its data stream at once."""

import threading

import pytest
import torch

from memae_dist.config import load_config
from memae_dist.data.stream import window_dataset
from memae_dist.models import build_model
from memae_dist.train.checkpoint import TrainState
from memae_dist.train.precision import Precision
from memae_dist.train.step import NonFiniteLoss, Worker, train_epoch


def executor_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate()
            if t.name.startswith("StreamingExecutor") and t.is_alive()}


def test_nonfinite_stop_shuts_the_data_stream_down_before_raising(tiny_data):
    # lr=1e30 blows the weights up on the first step, so the second batch's loss is not finite.
    cfg = load_config(None, [f"data.path={tiny_data}", "model.num_slots=20", "train.lr=1e30",
                             "train.batch_size=4", "data.shuffle_buffer=0"])
    model, cpu = build_model(cfg.model), torch.device("cpu")
    worker = Worker(cfg=cfg, model=model, net=model, precision=Precision(cfg.train, cpu),
                    optimizer=torch.optim.Adam(model.parameters(), lr=cfg.train.lr),
                    device=cpu, memory_format=torch.contiguous_format)
    before = executor_threads()
    with pytest.raises(NonFiniteLoss) as info:
        train_epoch(worker, window_dataset(tiny_data, cfg.data).iterator(), 0, TrainState())
    # While the error travels up, its traceback keeps the epoch's frames (and an unclosed
    # iterator) alive; left to the garbage collector, the iterator may be finalised on its own
    # executor thread, which cannot join itself and prints a traceback under the CLI's error.
    assert info.value.__traceback__ is not None
    assert not executor_threads() - before
