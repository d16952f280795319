"""Suggested labels and the estimated number of label errors, from leave-one-out probabilities.

Both use the approximate leave-one-out probabilities of :mod:`infgate.detect.loo`: what
the model would predict for an example had it never been trained on it, which is the
quantity confident learning needs (Northcutt et al. 2021 use K-fold out-of-sample
probabilities; here one curvature fit replaces the K retrainings).
"""

from __future__ import annotations

import numpy as np

__all__ = ["estimate_n_errors", "per_class_thresholds", "suggest_from_posterior", "suggest_labels"]


def suggest_labels(loo_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class that would most reduce each example's loss, and a confidence in [0, 1].

    The leave-one-out loss ``-log p^{(-i)}_c`` is smallest for the class with the largest
    leave-one-out probability, so that class is the suggestion; its probability is the
    confidence. When it equals the given label the suggestion is "keep the label".

    Args:
        loo_probs: ``(n, C)`` leave-one-out probabilities (rows sum to 1).

    Returns:
        ``(suggested_label, suggestion_confidence)``, both ``(n,)``.
    """
    suggested = loo_probs.argmax(axis=1).astype(np.int64)
    confidence = np.clip(loo_probs[np.arange(len(suggested)), suggested], 0.0, 1.0)
    return suggested, confidence


def suggest_from_posterior(
    posterior: np.ndarray,
    labels: np.ndarray,
    suspect: np.ndarray,
    wrong: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Suggested labels with calibrated confidence, from the noise model's posterior.

    For a suspect the suggestion is the most probable class OTHER than the given one (a
    suspect always gets a replacement to review) and its confidence is the posterior
    probability that this class is the true label
    (:class:`infgate.detect.calibrate.NoiseModel`): when the noise model holds, of the
    suspects suggested at confidence 0.9 about 9 in 10 suggestions are right (synthetic data
    with known posteriors: flagged-set ECE under 0.04). On real models it inherits the
    leave-one-out probabilities' error (``benchmarks/RESULTS.md``, "Calibrated flagged
    set": with the noise model calibrated on labelled evaluation data, suggestions at
    >= 0.95 right 98.3% / 98.8% of the time on the development / held-out tabular grid,
    pooled flagged-set ECE 0.014 / 0.026; 96.4-100% on the CNN, 1-D CNN and transformer
    runs). For other rows it is the posterior argmax (usually the given
    label, meaning "keep") and its probability.

    With ``wrong`` (``P(label wrong)`` per row, e.g. rank-calibrated by
    :func:`infgate.detect.calibrate.rank_calibrated`) the probability mass is split as
    ``P(c) = wrong_i * posterior[i, c] / (1 - posterior[i, y_i])`` for ``c != y_i`` and
    ``1 - wrong_i`` for the given label: the posterior says WHICH other class, ``wrong`` says
    how likely any other class is.

    Args:
        posterior: ``(n, C)`` ``P(true label = c | x_i, given label)``.
        labels: ``(n,)`` given labels.
        suspect: ``(n,)`` boolean, rows flagged as suspects.
        wrong: optional ``(n,)`` probability that the given label is wrong (default: from
            the posterior, ``1 - posterior[i, y_i]``).

    Returns:
        ``(suggested_label, suggestion_confidence)``, both ``(n,)``.
    """
    idx = np.arange(len(labels))
    if wrong is not None:
        # the other classes' mass summed directly: 1 - posterior[given] cancels to 0 when
        # the posterior backs the given label to within rounding, and the share with it
        other = np.asarray(posterior, dtype=np.float64).copy()
        other[idx, labels] = 0.0
        rest = other.sum(axis=1, keepdims=True)
        n_other = max(posterior.shape[1] - 1, 1)
        share = np.where(rest > 0, other / np.where(rest > 0, rest, 1.0), 1.0 / n_other)
        posterior = np.clip(share * np.asarray(wrong, dtype=np.float64)[:, None], 0.0, 1.0)
        posterior[idx, labels] = 1.0 - np.asarray(wrong, dtype=np.float64)
    others = posterior.copy()
    others[idx, labels] = -np.inf
    suggested = np.where(suspect, others.argmax(axis=1), posterior.argmax(axis=1))
    confidence = np.clip(posterior[idx, suggested], 0.0, 1.0)
    return suggested.astype(np.int64), confidence


def per_class_thresholds(loo_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confident learning's per-class threshold ``t_c`` = mean of ``p_c`` over examples labelled c.

    A class with no examples gets threshold 1 (it can never be "confidently" predicted).
    """
    n_classes = loo_probs.shape[1]
    thresholds = np.ones(n_classes)
    for c in range(n_classes):
        rows = labels == c
        if rows.any():
            thresholds[c] = float(loo_probs[rows, c].mean())
    return thresholds


def estimate_n_errors(loo_probs: np.ndarray, labels: np.ndarray) -> int:
    """Number of label errors: off-diagonal mass of the calibrated confident joint.

    Example i is counted in cell ``(y_i, j)`` of the confident joint when some class
    reaches its per-class threshold (``p_c >= t_c``) and ``j`` is the most probable of the
    classes that do (Northcutt et al. 2021, Eq. 1). Each row is then rescaled to the number
    of examples carrying that label (Eq. 2: examples with no class above threshold would
    otherwise be dropped, which under-counts), and the off-diagonal total is the estimate.
    On digits with 5/10/20% uniform flips this gives 96/185/355 for 90/180/359 real flips;
    the uncalibrated count gives 70/139/279.

    Args:
        loo_probs: ``(n, C)`` leave-one-out probabilities.
        labels: ``(n,)`` given labels.

    Returns:
        The estimated count, rounded, between 0 and n.
    """
    n_classes = loo_probs.shape[1]
    thresholds = per_class_thresholds(loo_probs, labels)
    above = loo_probs >= thresholds[None, :] - 1e-12
    confident = np.where(above, loo_probs, -np.inf).argmax(axis=1)
    has_any = above.any(axis=1)
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (labels[has_any], confident[has_any]), 1.0)
    row_sums = joint.sum(axis=1, keepdims=True)
    per_label = np.bincount(labels, minlength=n_classes)[:, None]
    calibrated = np.where(row_sums > 0, joint / np.maximum(row_sums, 1.0) * per_label, 0.0)
    off_diagonal = float(calibrated.sum() - np.trace(calibrated))
    return int(np.clip(round(off_diagonal), 0, len(labels)))
