"""One exact permutation p-value for several MMD tests: representations x kernel widths.

For each representation (already standardized on the pooled sample) and each Gaussian
kernel width ``c x median pairwise distance`` with ``c`` in :data:`WIDTH_MULTIPLIERS`, the
unbiased MMD^2 (Gretton et al. 2012, Eq. 3) is computed on the observed split and on the
SAME ``B`` random relabelings. Each statistic is standardized by the mean and standard
deviation of its ``B + 1`` values; the combined statistic is the largest standardized one
(max-T, Westfall & Young 1993; MMD-FUSE, Biggs et al. 2023, fuses normalized MMDs over
kernels by a soft maximum in the same way), and the p-value is the share of the ``B + 1``
relabelings whose combined statistic is at least the observed one.

Why it is exact: with the identity and ``B`` uniformly drawn relabelings, the ``B + 1``
relabeled samples are exchangeable under the null (Hemerik & Goeman 2018, Sec. 3), every
width is a function of the pooled multiset (which a relabeling leaves unchanged), and the
combined statistic of relabeling ``j`` is a symmetric function of all of them evaluated at
``j``; so its rank is uniform up to ties, which only make the p-value larger. Unlike
Bonferroni over ``k`` tests (``k x min p``) it pays for the multiplicity only as much as
the statistics disagree, so adding widths costs little; aggregating widths instead of the
median heuristic alone follows MMDAgg (Schrab et al. 2023), which showed the median width
can miss shifts that a narrower or wider kernel sees. Max-T rather than min-p: with few
relabelings, min-p's smallest attainable value grows with the number of statistics (each
one's maximum sits at some relabeling); a standardized maximum keeps the ``1 / (B + 1)``
resolution for a clear shift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from infgate.detect.stats import median_bandwidth

__all__ = [
    "WIDTH_MULTIPLIERS",
    "AggregatedMmd",
    "aggregated_mmd_test",
    "combined_mmd_test",
    "mmd_statistics",
]

#: Kernel widths, as multiples of the pooled median pairwise distance.
WIDTH_MULTIPLIERS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class AggregatedMmd:
    """Result of :func:`aggregated_mmd_test`.

    Attributes:
        p_value: the max-T combination over every (test, width) pair: exactly valid.
        tests: per test name, ``statistic`` (MMD^2 at the median width; NaN when 1 is not
            among the widths), ``p_value`` (the
            max-T combination over that test's widths alone, also exactly valid) and
            ``p_values_by_width`` (each width's own permutation p-value, keyed ``"x0.25"``).
    """

    p_value: float
    tests: dict[str, dict[str, Any]]


def _relabelings(n_total: int, m: int, n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_total, B + 1)`` 0/1 indicators of the first sample: column 0 the observed split
    (the first ``m`` rows), then ``B`` uniformly random relabelings."""
    ind = np.zeros((n_total, n_permutations + 1))
    ind[:m, 0] = 1.0
    for j in range(1, n_permutations + 1):
        ind[rng.permutation(n_total)[:m], j] = 1.0
    return ind


def mmd_statistics(kernel: np.ndarray, ind: np.ndarray, m: int) -> np.ndarray:
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3) for every relabeling column of ``ind``.

    Args:
        kernel: ``(N, N)`` kernel matrix of the pooled sample (not modified).
        ind: ``(N, J)`` 0/1 indicators of the first sample (``m`` ones per column).
        m: size of the first sample.

    Returns:
        ``(J,)`` statistics.
    """
    return _mmd_columns(kernel.copy(), ind, m)


def _mmd_columns(k: np.ndarray, ind: np.ndarray, m: int) -> np.ndarray:
    """:func:`mmd_statistics` that zeroes ``k``'s diagonal in place (no N x N copy)."""
    np.fill_diagonal(k, 0.0)
    total = len(k)
    ny = total - m
    row_sums = k.sum(axis=1)
    out = np.empty(ind.shape[1])
    for s in range(0, ind.shape[1], 64):
        block = ind[:, s : s + 64]
        kx = k @ block
        sxx = (block * kx).sum(0)
        sxy = ((1.0 - block) * kx).sum(0)
        syy = ((1.0 - block) * (row_sums[:, None] - kx)).sum(0)
        out[s : s + 64] = sxx / (m * (m - 1)) + syy / (ny * (ny - 1)) - 2.0 * sxy / (m * ny)
    return out


def _standardized(t: np.ndarray) -> np.ndarray:
    """``t`` centred and scaled by its mean and std over the relabelings (0 if constant)."""
    sd = float(t.std())
    return (t - t.mean()) / sd if sd > 1e-12 * max(float(np.abs(t).max()), 1e-300) else 0.0 * t


def _rank_p(t: np.ndarray) -> float:
    """Share of entries >= the first (the observed split); float round-off of a relabeling
    that reproduces the observed value counts as a tie."""
    tol = 1e-12 * max(float(np.max(np.abs(t))), 1e-300)
    return float(np.sum(t >= t[0] - tol) / len(t))


def _max_t(zs: list[np.ndarray]) -> float:
    """Permutation p-value of the largest standardized statistic."""
    return _rank_p(np.max(np.stack(zs), axis=0))


def aggregated_mmd_test(
    samples: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    n_permutations: int,
    rng: np.random.Generator,
    widths: tuple[float, ...] = WIDTH_MULTIPLIERS,
) -> AggregatedMmd:
    """Gaussian-kernel MMD tests of several representations of the same rows, combined.

    Args:
        samples: per test name, ``(reference, evaluation)`` arrays whose rows are the same
            reference and evaluation examples in every entry (so one relabeling applies to
            all).
        n_permutations: B, shared by every test and width.
        rng: draws the relabelings (and the median's subsample on large samples).
        widths: kernel widths as multiples of each representation's pooled median distance.

    Returns:
        :class:`AggregatedMmd`.

    Raises:
        ValueError: no samples, row counts that differ between entries, fewer than 2 rows
            on a side, or a width that is not positive.
    """
    if not samples:
        raise ValueError("aggregated_mmd_test needs at least one (reference, evaluation) pair")
    sizes = {(len(a), len(b)) for a, b in samples.values()}
    if len(sizes) != 1:
        raise ValueError(f"every representation must have the same rows, got sizes {sizes}")
    ((m, n),) = sizes
    if m < 2 or n < 2:
        raise ValueError(f"need at least 2 rows on each side, got {m} and {n}")
    if not widths or min(widths) <= 0:
        raise ValueError(f"widths must be positive multipliers, got {widths!r}")
    ind = _relabelings(m + n, m, n_permutations, rng)
    tests: dict[str, dict[str, Any]] = {}
    all_z: list[np.ndarray] = []
    for name, (a, b) in samples.items():
        z = np.concatenate([a, b]).astype(np.float64)
        sq = (z * z).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
        median = median_bandwidth(z, rng)
        zs, by_width, at_median = [], {}, float("nan")
        for c in widths:
            t = _mmd_columns(np.exp(-d2 / (2.0 * (c * median) ** 2)), ind, m)
            zs.append(_standardized(t))
            by_width[f"x{c:g}"] = _rank_p(t)
            if c == 1.0:
                at_median = float(t[0])
        all_z.extend(zs)
        tests[name] = {
            "statistic": at_median,
            "p_value": _max_t(zs),
            "p_values_by_width": by_width,
        }
    return AggregatedMmd(p_value=_max_t(all_z), tests=tests)


def combined_mmd_test(
    exact: Mapping[str, tuple[np.ndarray, np.ndarray]],
    approximate: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    n_permutations: int,
    rng: np.random.Generator,
) -> AggregatedMmd:
    """:func:`aggregated_mmd_test` over the ``exact`` tests; ``approximate`` ones (whose
    reference side is only approximately exchangeable with fresh rows) join by Bonferroni,
    ``min(1, 2 min(p_exact, p_approximate))``, so the combination exceeds its level by at
    most the approximate block's own excess at half the level, and is exactly valid when
    ``approximate`` is empty.
    """
    res = aggregated_mmd_test(exact, n_permutations=n_permutations, rng=rng)
    if not approximate:
        return res
    extra = aggregated_mmd_test(approximate, n_permutations=n_permutations, rng=rng)
    p = min(1.0, 2.0 * min(res.p_value, extra.p_value))
    return AggregatedMmd(p_value=p, tests={**res.tests, **extra.tests})
