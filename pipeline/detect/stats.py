"""Small statistical tools: rank averaging, conformal p-values, Benjamini-Hochberg, MMD test."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "benjamini_hochberg",
    "conformal_p_values",
    "expected_calibration_error",
    "median_bandwidth",
    "mmd_permutation_test",
    "rank_average",
]


def rank_average(*scores: np.ndarray) -> np.ndarray:
    """Mean of the normalized ranks (in (0, 1]) of several score vectors; ties share ranks."""
    if not scores:
        raise ValueError("rank_average needs at least one score vector")
    n = len(scores[0])
    return np.mean([rankdata(s) / n for s in scores], axis=0)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10
) -> float:
    """ECE: ``sum_b (n_b / n) |mean correct_b - mean confidence_b|`` over equal-width bins.

    Guo et al. 2017, Eq. 3; bins ``[0, 1/B), ..., [(B-1)/B, 1]``. 0 = perfectly calibrated.

    Raises:
        ValueError: empty or mismatched inputs, ``n_bins < 1``.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0 or len(conf) != len(hit) or n_bins < 1:
        raise ValueError(
            f"need equal, non-empty confidence and correct and n_bins >= 1, got "
            f"{len(conf)}, {len(hit)} and {n_bins}"
        )
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        rows = bins == b
        total += rows.sum() * abs(hit[rows].mean() - conf[rows].mean())
    return float(total / len(conf))


def conformal_p_values(calibration: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Split-conformal p-values ``(1 + #{cal >= t}) / (m + 1)`` (higher score = stranger).

    Valid (super-uniform) for any test score exchangeable with the calibration scores
    (Vovk et al. 2005; Bates et al. 2023, "Testing for outliers with conformal p-values").
    """
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    t = np.asarray(test, dtype=np.float64)
    n_ge = len(cal) - np.searchsorted(cal, t, side="left")
    return (1.0 + n_ge) / (len(cal) + 1.0)


def benjamini_hochberg(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Boolean rejections of the Benjamini-Hochberg step-up procedure at FDR level ``alpha``."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    passed = p[order] <= alpha * np.arange(1, m + 1) / m
    reject = np.zeros(m, dtype=bool)
    if passed.any():
        k = int(np.flatnonzero(passed).max())
        reject[order[: k + 1]] = True
    return reject


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def median_bandwidth(z: np.ndarray, rng: np.random.Generator, max_points: int = 1000) -> float:
    """Median pairwise distance (the median heuristic), on at most ``max_points`` rows."""
    idx = rng.choice(len(z), size=min(len(z), max_points), replace=False)
    d = np.sqrt(_sq_dists(z[idx], z[idx]))
    med = float(np.median(d[np.triu_indices(len(idx), k=1)])) if len(idx) > 1 else 1.0
    return med if med > 0 else 1.0


def mmd_permutation_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_permutations: int,
    rng: np.random.Generator,
    bandwidth: float | None = None,
) -> tuple[float, float]:
    """Unbiased MMD^2 with a Gaussian kernel and its permutation p-value.

    ``MMD^2_u`` (Gretton et al. 2012, Eq. 3); the p-value ``(1 + #{perm >= observed}) /
    (B + 1)`` is valid at every sample size because the observed split is one of the
    equally likely relabelings under the null.

    Args:
        x: ``(m, d)`` reference sample.
        y: ``(k, d)`` test sample.
        n_permutations: B.
        rng: random generator for the permutations (and the bandwidth subsample).
        bandwidth: kernel width; ``None`` = median heuristic on the pooled sample.

    Returns:
        ``(statistic, p_value)``.
    """
    z = np.concatenate([x, y]).astype(np.float64)
    m = len(x)
    width = median_bandwidth(z, rng) if bandwidth is None else bandwidth
    k = np.exp(-_sq_dists(z, z) / (2.0 * width**2))
    np.fill_diagonal(k, 0.0)
    total = len(z)
    row_sums = k.sum(axis=1)

    def stats(in_x: np.ndarray) -> np.ndarray:
        # in_x: (N, B) 0/1 indicators of the x-sample, one column per relabeling.
        kx = k @ in_x
        sxx = (in_x * kx).sum(0)
        sxy = ((1.0 - in_x) * kx).sum(0)
        syy = ((1.0 - in_x) * (row_sums[:, None] - kx)).sum(0)
        ny = total - m
        return sxx / (m * (m - 1)) + syy / (ny * (ny - 1)) - 2.0 * sxy / (m * ny)

    first = np.zeros((total, 1))
    first[:m] = 1.0
    observed = float(stats(first)[0])
    count = 0
    chunk = 64
    for start in range(0, n_permutations, chunk):
        b = min(chunk, n_permutations - start)
        ind = np.zeros((total, b))
        for j in range(b):
            ind[rng.permutation(total)[:m], j] = 1.0
        count += int(np.sum(stats(ind) >= observed - 1e-15))
    return observed, (1.0 + count) / (n_permutations + 1.0)
