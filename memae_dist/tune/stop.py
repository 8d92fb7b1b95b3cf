"""SIGTERM stops a sweep the way Ctrl-C does: through Tune's own orderly stop.

Ctrl-C makes Tune save its experiment state one last time and return. A SIGTERM raised out of
``tuner.fit()`` skips that: the table, and the resume, would read a snapshot up to a minute old,
in which a trial that had finished (or that ASHA had stopped) is still running, so the rerun
trains it again. Tune takes SIGUSR1 as it takes Ctrl-C, so a SIGTERM is passed on as one.

Not when the SIGTERM went to the whole process group (``timeout``, systemd, a CI cancel): the
local Ray this process started stops with it, and Tune's last save would call into a Ray that
is gone (a minute's wait, then an abort with the sweep's lock held). The signal is then raised
as before, out of Tune. Whether Ray went too shows a moment after the signal, so the choice is
made then, and watched until the sweep has stopped.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from memae_dist.runtime import local_ray_gone

# Time for a local Ray signalled with this process to show it (its dashboard and log monitor
# exit at once), and how often to look again while Tune stops.
SETTLE_S = 0.5
POLL_S = 0.25


class OrderlyStop:
    """Set while ``orderly_sigterm`` is active: whether a SIGTERM asked Tune to stop."""

    def __init__(self) -> None:
        self.requested = False
        self.done = threading.Event()


def _not_tune_yet(signum, frame) -> None:
    """SIGUSR1 before Tune installed its handler: nothing to stop in order."""


@contextmanager
def orderly_sigterm() -> Iterator[OrderlyStop]:
    """Within: a first SIGTERM stops Tune in order, unless the local Ray went with it; a
    second one, or a Ray found gone, raises as the outer handler does."""
    stop = OrderlyStop()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers belong to the main thread: the outer handling stays
        return
    outer = signal.getsignal(signal.SIGTERM)
    outer_usr1 = signal.signal(signal.SIGUSR1, _not_tune_yet)

    def on_sigterm(signum, frame) -> None:
        signal.signal(signal.SIGTERM, outer)  # a second SIGTERM: straight out
        threading.Thread(target=_decide, args=(stop,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield stop
    finally:
        stop.done.set()
        signal.signal(signal.SIGTERM, outer)
        signal.signal(signal.SIGUSR1, outer_usr1)


def _decide(stop: OrderlyStop) -> None:
    """Tune's stop (SIGUSR1) while the local Ray lives; the outer SIGTERM once it is gone."""
    if stop.done.wait(SETTLE_S):
        return
    if not local_ray_gone() and signal.getsignal(signal.SIGUSR1) is not _not_tune_yet:
        stop.requested = True
        os.kill(os.getpid(), signal.SIGUSR1)
        while not stop.done.wait(POLL_S):
            if local_ray_gone():
                break
        else:
            return
    os.kill(os.getpid(), signal.SIGTERM)
