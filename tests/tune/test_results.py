"""How a trial's row reads what Tune recorded of it."""

from types import SimpleNamespace

from memae_dist.tune.results import COMPLETED, INTERRUPTED, PENDING, STOPPED_EARLY, _status


def test_a_trial_cut_off_before_its_first_report_is_interrupted_not_pending():
    # Tune records a running trial as PENDING when the sweep stops; its run folder says it ran.
    pending = SimpleNamespace(status="PENDING")
    assert _status(pending, {}, 2, started=False) == (PENDING, "")
    assert _status(pending, {}, 2, started=True) == (INTERRUPTED, "")
    assert _status(SimpleNamespace(status="RUNNING"), {"epoch": 1}, 2, True) == (INTERRUPTED, "")
    done = SimpleNamespace(status="TERMINATED")
    assert _status(done, {"epoch": 2}, 2, True) == (COMPLETED, "")
    assert _status(done, {"epoch": 1}, 2, True) == (STOPPED_EARLY, "")
