"""What the evaluation numbers mean, and the ``--protocol`` families: plain data, no imports.

Kept apart from ``protocol.py`` (numpy, scikit-learn) so the CLI can show them in ``--help``
without paying for those imports on every command.
"""

# What each number of ``evaluate_videos`` means; printed by ``memae-dist evaluate`` and stored in
# metrics.json, so a reader of the numbers never has to guess the protocol.
METRICS = {
    "auc_paper": "frame-level ROC AUC over the pooled frames of all videos, each video's errors "
                 "min-max normalised to [0, 1] first (the MemAE paper's number)",
    "auc_micro": "frame-level ROC AUC over the pooled raw errors (no per-video normalisation; "
                 "penalises scores that are not comparable across videos)",
    "auc_per_video_mean": "mean of the per-video ROC AUCs (videos with one class only are "
                          "left out)",
    "average_precision": "average precision (area under precision-recall, abnormal = positive) "
                         "over the pooled per-video normalised scores",
    "average_precision_micro": "average precision over the pooled raw errors",
    "ap_per_video_mean": "mean of the per-video average precisions (videos with one class "
                         "only are left out)",
    "eer": "equal-error rate (where false-positive rate = miss rate) over the pooled per-video "
           "normalised scores; lower is better",
    "eer_micro": "equal-error rate over the pooled raw errors; lower is better",
    "eer_per_video_mean": "mean of the per-video equal-error rates; lower is better",
    "n_frames_scored": "frames with a score: every frame but the first L // 2 and the last "
                       "L - L // 2 - 1 of a video, for L-frame windows (8 and 7 for 16); "
                       "every image of a still-image set",
    "n_abnormal": "scored frames labelled abnormal",
}


def units(content: str | None) -> tuple[str, str]:
    """What a scores file's "video" and "frame" are: for a still-image set (``content``
    "images") a group of images, stored together, and an image."""
    return ("group", "image") if content == "images" else ("video", "frame")


# ``--protocol``: which family of numbers is the headline (``auc``, ``ap``, ``eer`` keys).
PROTOCOLS = {
    "paper": ("auc_paper", "average_precision", "eer"),
    "micro": ("auc_micro", "average_precision_micro", "eer_micro"),
    "per-video": ("auc_per_video_mean", "ap_per_video_mean", "eer_per_video_mean"),
}
PROTOCOL_HELP = {
    "paper": "per-video min-max normalised scores, frames of all videos pooled (Gong et al. "
             "2019 and most follow-up work)",
    "micro": "raw errors pooled over all videos, no normalisation (what a deployed threshold "
             "sees)",
    "per-video": "each video scored on its own, then averaged (robust to videos of very "
                 "different lengths)",
}
