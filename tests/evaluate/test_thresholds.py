"""Deployment thresholds on the raw error: each one checked against counting frames directly."""

import numpy as np
import pytest

from memae_dist.evaluate.thresholds import TARGET_FPRS, deployment_thresholds


def _rates(labels, scores, threshold):
    flagged = scores >= threshold
    fpr = flagged[~labels].mean()
    tpr = flagged[labels].mean()
    tp, fp = (flagged & labels).sum(), (flagged & ~labels).sum()
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * tpr / (precision + tpr) if precision + tpr else 0.0
    return fpr, tpr, precision, f1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_match_counting_flagged_frames(seed):
    rng = np.random.default_rng(seed)
    # Scores rounded to a grid: ties between normal and abnormal frames, as real errors have.
    normal = np.round(rng.gamma(4.0, 1.0, 3000), 1)
    abnormal = np.round(rng.gamma(4.0, 1.0, 400) + 3.0, 1)
    scores = np.concatenate([normal, abnormal])
    labels = np.r_[np.zeros(normal.size, bool), np.ones(abnormal.size, bool)]
    found = deployment_thresholds(labels.astype(np.uint8), scores)
    candidates = np.unique(scores)
    rates = {t: _rates(labels, scores, t) for t in candidates}
    assert [p["target_fpr"] for p in found["at_fpr"]] == list(TARGET_FPRS)
    for point in found["at_fpr"]:
        # The lowest threshold that keeps the false-positive rate within the budget.
        within = [t for t in candidates if rates[t][0] <= point["target_fpr"]]
        want = min(within)
        assert point["threshold"] == want
        assert point["fpr"] == pytest.approx(rates[want][0])
        assert point["tpr"] == pytest.approx(rates[want][1])
    best = max(candidates, key=lambda t: rates[t][3])
    f1 = found["best_f1"]
    assert f1["f1"] == pytest.approx(rates[best][3])
    assert rates[f1["threshold"]][3] == pytest.approx(rates[best][3])
    assert f1["precision"] == pytest.approx(rates[f1["threshold"]][2])
    assert f1["recall"] == pytest.approx(rates[f1["threshold"]][1])


@pytest.mark.parametrize("seed", [0, 1])
def test_a_normal_only_split_gives_the_budgets_by_counting_flagged_frames(seed):
    # Held-out normal footage: what most deployments have to calibrate on.
    scores = np.round(np.random.default_rng(seed).gamma(4.0, 1.0, 2500), 1)  # ties, as real
    found = deployment_thresholds(np.zeros(scores.size, np.uint8), scores)
    assert found["best_f1"] is None
    for point in found["at_fpr"]:
        within = [t for t in np.unique(scores) if (scores >= t).mean() <= point["target_fpr"]]
        assert point["threshold"] == min(within)
        assert point["fpr"] == pytest.approx((scores >= min(within)).mean())
        assert point["tpr"] is None
    # A top score shared by more frames than a budget allows: no threshold meets it.
    tied = deployment_thresholds([0] * 4, [1.0, 5.0, 5.0, 5.0])
    assert [p["threshold"] for p in tied["at_fpr"]] == [None, None, None]


def test_no_thresholds_without_normal_frames_and_none_below_a_tied_top():
    assert deployment_thresholds([1, 1], [1.0, 2.0]) is None
    # Every normal frame ties with the highest abnormal one: no threshold flags anything
    # without flagging every normal frame, so no budget under 100% can be met.
    tied = deployment_thresholds([0, 0, 0, 1], [5.0, 5.0, 5.0, 5.0])
    assert all(p["threshold"] is None and p["tpr"] == 0.0 for p in tied["at_fpr"])
