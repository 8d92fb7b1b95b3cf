import os
import stat

import pytest

from memae_dist.data.atomic import atomic_local
from memae_dist.data.storage import write_bytes_atomic
from memae_dist.errors import UserError


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


def test_a_link_is_written_through_and_a_special_file_refused(tmp_path):
    target = tmp_path / "target.csv"
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    with atomic_local(link, "w") as f:
        f.write("new")
    assert link.is_symlink() and target.read_text() == "new"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # Renaming over it would have replaced the pipe (or, as root, a device) with a plain file.
    with pytest.raises(UserError, match=r"fifo: is not a regular file"), atomic_local(fifo) as f:
        f.write(b"x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.csv", "target.csv"]
