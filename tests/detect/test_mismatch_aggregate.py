"""The aggregated (tests x kernel widths, max-T) MMD permutation test: known answers."""

from __future__ import annotations

import numpy as np
import pytest
from infgate.detect.mmd_aggregate import aggregated_mmd_test, combined_mmd_test, mmd_statistics


def _direct_mmd2(x: np.ndarray, y: np.ndarray, width: float) -> float:
    """Gretton et al. 2012, Eq. 3, term by term."""

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-np.sum((a - b) ** 2) / (2.0 * width**2)))

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2.0 * sxy


def test_statistics_match_the_direct_formula_for_every_relabeling() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(9, 3))
    m, width = 4, 1.3
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-d2 / (2.0 * width**2))
    ind = np.zeros((9, 3))
    ind[:m, 0] = 1.0
    ind[[1, 5, 6, 8], 1] = 1.0
    ind[[0, 2, 3, 7], 2] = 1.0
    got = mmd_statistics(kernel, ind, m)
    for j in range(3):
        first = ind[:, j] == 1.0
        assert got[j] == pytest.approx(_direct_mmd2(z[first], z[~first], width), rel=1e-12)
    assert kernel[0, 0] == 1.0  # the caller's kernel is left as it was


def test_single_test_single_width_is_the_plain_permutation_p_value() -> None:
    """One representation, one width: ``(1 + #{relabelings >= observed}) / (B + 1)``,
    recomputed here from the same relabelings (same seed) and the direct formula."""
    x = np.random.default_rng(1).normal(size=(12, 2))
    y = np.random.default_rng(2).normal(size=(10, 2)) + 0.4
    b = 39
    res = aggregated_mmd_test(
        {"t": (x, y)}, n_permutations=b, rng=np.random.default_rng(7), widths=(1.0,)
    )
    rng = np.random.default_rng(7)
    z = np.concatenate([x, y])
    splits = [rng.permutation(22)[:12] for _ in range(b)]
    idx = rng.choice(22, size=22, replace=False)  # median_bandwidth's draw
    sub = z[idx]
    dist = np.sqrt(((sub[:, None] - sub[None]) ** 2).sum(-1))
    width = float(np.median(dist[np.triu_indices(22, k=1)]))
    observed = _direct_mmd2(x, y, width)
    perms = []
    for s in splits:
        first = np.zeros(22, dtype=bool)
        first[s] = True
        perms.append(_direct_mmd2(z[first], z[~first], width))
    expected = (1 + sum(p >= observed - 1e-12 for p in perms)) / (b + 1)
    assert res.p_value == pytest.approx(expected)
    assert res.tests["t"]["p_value"] == pytest.approx(expected)
    assert res.tests["t"]["statistic"] == pytest.approx(observed, rel=1e-10)
    assert res.tests["t"]["p_values_by_width"] == {"x1": pytest.approx(expected)}


def test_a_duplicated_test_costs_nothing_unlike_bonferroni() -> None:
    """Two identical representations: max-T gives the single test's p-value exactly
    (Bonferroni would double it); over widths it is at most the sum of their p-values."""
    x = np.random.default_rng(3).normal(size=(30, 4))
    y = np.random.default_rng(4).normal(size=(25, 4)) * 1.3
    one = aggregated_mmd_test({"a": (x, y)}, n_permutations=99, rng=np.random.default_rng(5))
    two = aggregated_mmd_test(
        {"a": (x, y), "b": (x, y)}, n_permutations=99, rng=np.random.default_rng(5)
    )
    assert two.p_value == one.p_value
    assert two.tests["a"]["p_value"] == two.tests["b"]["p_value"] == one.tests["a"]["p_value"]
    assert one.p_value <= sum(one.tests["a"]["p_values_by_width"].values())


def test_null_rejection_rate_is_at_most_alpha() -> None:
    """600 null draws (10 vs 8 rows, two representations x five widths, B = 99).

    Exactly valid: the rejections at alpha = 0.05 are stochastically below Binomial(600,
    0.05) (mean 30; P(>= 45) = 0.005, so at most 44 allowed), at alpha = 0.10 below
    Binomial(600, 0.10) (mean 60; P(>= 80) = 0.007, at most 79). The smallest of the ten
    p-values taken without the max-T calibration is not valid and must show it (about 100
    of 600 at 0.05; more than 60 required), so this test can tell the two apart.
    """
    rng = np.random.default_rng(11)
    at_05, at_10, naive = 0, 0, 0
    for _ in range(600):
        x, y = rng.normal(size=(10, 3)), rng.normal(size=(8, 3))
        res = aggregated_mmd_test(
            {"raw": (x, y), "squares": (x**2, y**2)}, n_permutations=99, rng=rng
        )
        at_05 += int(res.p_value <= 0.05)
        at_10 += int(res.p_value <= 0.10)
        smallest = min(min(t["p_values_by_width"].values()) for t in res.tests.values())
        naive += int(smallest <= 0.05)
    assert at_05 <= 44 and at_10 <= 79
    assert naive > 60


def test_a_clear_shift_reaches_the_smallest_p_value_even_with_few_relabelings() -> None:
    """Ten statistics, B = 19, a shift every width sees: p = 1 / 20 (min-p over ranks would
    give (1 + #relabelings that maximise some other statistic) / 20)."""
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 3)) + 2.0
    res = aggregated_mmd_test({"raw": (x, y), "squares": (x**2, y**2)}, n_permutations=19, rng=rng)
    assert res.p_value == pytest.approx(1 / 20)


def test_an_approximate_test_joins_by_bonferroni() -> None:
    """Exact tests by max-T, then ``min(1, 2 min(p_exact, p_approximate))``; with no
    approximate test the result is the exact block's."""
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(15, 3)) + 0.3
    u, v = rng.normal(size=(20, 2)), rng.normal(size=(15, 2))
    exact = {"a": (x, y)}
    alone = aggregated_mmd_test(exact, n_permutations=49, rng=np.random.default_rng(8))
    same = combined_mmd_test(exact, {}, n_permutations=49, rng=np.random.default_rng(8))
    assert same == alone
    both = combined_mmd_test(exact, {"o": (u, v)}, n_permutations=49, rng=np.random.default_rng(8))
    gen = np.random.default_rng(8)
    first = aggregated_mmd_test(exact, n_permutations=49, rng=gen)
    second = aggregated_mmd_test({"o": (u, v)}, n_permutations=49, rng=gen)
    assert both.p_value == min(1.0, 2.0 * min(first.p_value, second.p_value))
    assert set(both.tests) == {"a", "o"} and both.tests["o"] == second.tests["o"]


def test_bad_arguments_are_refused() -> None:
    x = np.zeros((5, 2))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least one"):
        aggregated_mmd_test({}, n_permutations=19, rng=rng)
    with pytest.raises(ValueError, match="same rows"):
        aggregated_mmd_test({"a": (x, x), "b": (x[:4], x)}, n_permutations=19, rng=rng)
    with pytest.raises(ValueError, match="at least 2 rows"):
        aggregated_mmd_test({"a": (x, x[:1])}, n_permutations=19, rng=rng)
    with pytest.raises(ValueError, match="positive"):
        aggregated_mmd_test({"a": (x, x)}, n_permutations=19, rng=rng, widths=(0.0,))
