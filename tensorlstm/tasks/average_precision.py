"""Average precision (AP) per class and its mean over classes (mAP), as Hollywood2 is scored.

AP of one class is the area under its precision-recall step curve, without interpolation:
``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct scores taken as thresholds in decreasing order, where
P_k and R_k are the precision and recall of "score >= threshold k". Clips with equal scores enter together
(a tie is one threshold), so AP does not depend on the order of tied clips. Without ties this equals the
mean, over the positive clips, of the precision at each one's rank. This is the definition of
scikit-learn's ``average_precision_score``, which the authors' code macro-averaged over the 12 actions.

A class without a positive clip has no recall, so no AP: it is left out of the mean (reported as NaN).
"""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: ``scores`` (N,) any real values (higher = more likely), ``targets`` (N,) 0/1.
    NaN when no target is positive."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel() > 0
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, targets = scores[order], targets[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]  # one threshold per score
    tp = np.cumsum(targets)[last_of_tie].astype(np.float64)
    precision = tp / (last_of_tie + 1)
    recall_gain = np.diff(np.r_[0.0, tp]) / positives
    return float(np.sum(recall_gain * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """(mAP, AP per class) for ``scores`` and multi-hot ``targets`` of shape (N, C): the mean over the
    classes that have a positive clip (NaN if none has)."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"expected (N, C) scores and targets, got {scores.shape} and {targets.shape}")
    per_class = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    defined = per_class[~np.isnan(per_class)]
    return (float(defined.mean()) if len(defined) else float("nan")), per_class
