"""Exact checks of the small statistical tools."""

from __future__ import annotations

import numpy as np
from infgate.detect.stats import (
    benjamini_hochberg,
    conformal_p_values,
    mmd_permutation_test,
    rank_average,
)
from infgate.detect.suggest import estimate_n_errors, suggest_labels


def test_benjamini_hochberg_matches_hand_computation() -> None:
    # m = 5, alpha = 0.05: thresholds 0.01, 0.02, 0.03, 0.04, 0.05.
    p = np.array([0.04, 0.001, 0.5, 0.019, 0.031])
    # sorted: 0.001 (<=0.01), 0.019 (<=0.02), 0.031 (>0.03), 0.04 (<=0.04), 0.5
    # step-up: largest k with p_(k) <= k alpha / m is k = 4 -> reject the 4 smallest.
    assert benjamini_hochberg(p, 0.05).tolist() == [True, True, False, True, True]
    assert not benjamini_hochberg(np.array([0.2, 0.3]), 0.05).any()


def test_conformal_p_values_formula() -> None:
    cal = np.array([1.0, 2.0, 3.0, 4.0])
    # (1 + #{cal >= t}) / (m + 1)
    np.testing.assert_allclose(
        conformal_p_values(cal, np.array([0.5, 2.0, 4.5])), [5 / 5, 4 / 5, 1 / 5]
    )


def test_rank_average_is_mean_normalized_rank() -> None:
    a, b = np.array([3.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(
        rank_average(a, b), [(1 + 1 / 3) / 2, (1 / 3 + 2 / 3) / 2, (2 / 3 + 1) / 2]
    )


def test_mmd_statistic_matches_direct_formula_and_detects_a_shift() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 2)), rng.normal(size=(20, 2)) + 1.5
    stat, p = mmd_permutation_test(x, y, n_permutations=199, rng=rng, bandwidth=1.0)

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / 2.0)

    kxx, kyy = k(x, x), k(y, y)
    direct = (
        (kxx.sum() - np.trace(kxx)) / (30 * 29)
        + (kyy.sum() - np.trace(kyy)) / (20 * 19)
        - 2 * k(x, y).mean()
    )
    assert abs(stat - direct) < 1e-10
    assert p == 1 / 200  # no permutation reaches a shift this large


def test_calibrated_confident_joint_count_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.05, 0.95], [0.6, 0.4]])
    # thresholds: t0 = (0.9 + 0.2) / 2 = 0.55, t1 = (0.9 + 0.7 + 0.95 + 0.4) / 4 = 0.7375.
    # joint: row 0 -> [1 (ex 0), 1 (ex 1)]; row 1 -> [1 (ex 5), 2 (ex 2, 4)]; ex 3 dropped.
    # calibrated: row 0 * 2/2 = [1, 1]; row 1 * 4/3 = [4/3, 8/3]; off-diagonal 1 + 4/3.
    assert estimate_n_errors(probs, labels) == round(1 + 4 / 3)
    suggested, confidence = suggest_labels(probs)
    assert suggested.tolist() == [0, 1, 1, 1, 1, 0]
    np.testing.assert_allclose(confidence, probs.max(axis=1))
