import os
import stat

import pytest

from memae_dist.data.atomic import atomic_local
from memae_dist.data.storage import write_bytes_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test and put the caller's back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def test_files_get_the_permissions_open_would_give(tmp_path, umask):
    # mkstemp's 0600 made shared results unreadable to the rest of a team.
    write_bytes_atomic(str(tmp_path / "shared.json"), b"{}")
    assert _mode(tmp_path / "shared.json") == 0o644
    umask(0o077)
    with atomic_local(tmp_path / "private.txt", "w") as f:
        f.write("mine")
    assert _mode(tmp_path / "private.txt") == 0o600
    assert (tmp_path / "private.txt").read_text() == "mine"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    write_bytes_atomic(str(target), b"old")
    with pytest.raises(RuntimeError), atomic_local(target) as f:
        f.write(b"half of the ne")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]
