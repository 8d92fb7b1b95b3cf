"""What a worker says when the checkpoint it writes cannot be stored."""

import errno

import pytest

from memae_dist.config import load_config
from memae_dist.errors import UserError
from memae_dist.train.loop import checkpoint_upload


@pytest.mark.parametrize("first, then", [
    (True, "the run has no checkpoint yet: the same command, rerun, starts it again"),
    (False, "the previous checkpoint is kept: rerun the same command to resume from it"),
])
def test_a_failed_checkpoint_says_what_a_rerun_starts_from(tmp_path, first, then):
    target = str(tmp_path / "run" / "checkpoint_epoch_0001")
    with pytest.raises(UserError) as caught:
        with checkpoint_upload(target, load_config(None, []), first=first):
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(caught.value)
    assert message.startswith(f"cannot write checkpoint {target}") and message.endswith(then)
