"""Vector scaling of several views at once (``fit_stacked_scaling``): the clean posterior of
the count when the model's output and its evaluation neighbours' vote are both used.

Checked against exact answers: two conditionally independent, calibrated views whose
posteriors are known in closed form (Gaussian class means: ``P(c | z) = softmax(mu z)_c``)
combine by Bayes' rule, so both weights are 1; a view repeated twice must not count twice;
a view that knows nothing about the labels is shrunk away.
"""

from __future__ import annotations

import numpy as np
import pytest
from infgate.detect.calibrate import fit_stacked_scaling, fit_vector_scaling
from infgate.errors import InvalidInputError
from scipy.special import softmax


def _gaussian_view(y: np.ndarray, k: int, mu: float, rng: np.random.Generator) -> np.ndarray:
    """``z = mu onehot(y) + N(0, I)``; its exact posterior under a uniform prior is
    ``softmax(mu z)`` (the quadratic terms are the same for every class)."""
    z = mu * np.eye(k)[y] + rng.standard_normal((len(y), k))
    return softmax(mu * z, axis=1)


def test_independent_calibrated_views_combine_by_bayes_rule() -> None:
    """Two calibrated views, independent given the label: the posterior given both is their
    product over the (uniform) prior, i.e. weights (1, 1) and no bias. Tolerance 0.06 on
    each weight at 20,000 rows (the maximum-likelihood estimate's spread is about 0.02)."""
    rng = np.random.default_rng(0)
    k, m = 3, 20_000
    y = rng.integers(0, k, size=m)
    a, b = _gaussian_view(y, k, 1.0, rng), _gaussian_view(y, k, 1.5, rng)
    fit = fit_stacked_scaling([a, b], y, bias_penalty=0.0, beta_penalty=0.0)
    np.testing.assert_allclose(fit.view_weights, [1.0, 1.0], atol=0.06)
    np.testing.assert_allclose(fit.bias - fit.bias.mean(), 0.0, atol=0.05)
    exact = a * b / (a * b).sum(1, keepdims=True)
    assert np.abs(fit.apply(a, b) - exact).max() < 0.05


def test_a_repeated_view_does_not_count_twice() -> None:
    """The same view given twice: the weights share what one view gets alone, and the
    combined posterior is the single view's map (a product of the two would square it)."""
    rng = np.random.default_rng(1)
    k, m = 4, 5_000
    y = rng.integers(0, k, size=m)
    a = _gaussian_view(y, k, 1.2, rng)
    one = fit_vector_scaling(a, y)
    two = fit_stacked_scaling([a, a], y)
    assert sum(two.view_weights) == pytest.approx(one.inverse_temperature, rel=0.02)
    np.testing.assert_allclose(two.apply(a, a), one.apply(a), atol=0.01)


def test_an_uninformative_view_is_shrunk_away() -> None:
    """A view drawn independently of the labels gets a small weight, and the combined
    posterior's log-loss on fresh rows is no worse than the informative view's alone."""
    rng = np.random.default_rng(2)
    k, m = 3, 2_000
    y = rng.integers(0, k, size=2 * m)
    a = _gaussian_view(y, k, 1.0, rng)
    noise = rng.dirichlet(np.ones(k), size=2 * m)
    fit = fit_stacked_scaling([a[:m], noise[:m]], y[:m])
    assert fit.view_weights[1] < 0.15 * fit.view_weights[0]
    alone = fit_vector_scaling(a[:m], y[:m])
    fresh = np.arange(m, 2 * m)

    def loss(p: np.ndarray) -> float:
        return float(-np.log(p[np.arange(m), y[fresh]]).mean())

    assert loss(fit.apply(a[fresh], noise[fresh])) <= loss(alone.apply(a[fresh])) + 0.005


def test_single_view_is_vector_scaling() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=300)
    a = _gaussian_view(y, 3, 0.8, rng)
    one, stacked = fit_vector_scaling(a, y), fit_stacked_scaling([a], y)
    assert stacked.inverse_temperature == pytest.approx(one.inverse_temperature, rel=1e-6)
    np.testing.assert_allclose(stacked.apply(a), one.apply(a), atol=1e-6)


def test_bad_views_are_refused_by_name() -> None:
    y = np.array([0, 1, 2, 0])
    a = softmax(np.random.default_rng(4).standard_normal((4, 3)), axis=1)
    with pytest.raises(InvalidInputError, match="at least one view"):
        fit_stacked_scaling([], y)
    with pytest.raises(InvalidInputError, match="differ in shape"):
        fit_stacked_scaling([a, a[:, :2] / a[:, :2].sum(1, keepdims=True)], y)
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        fit_stacked_scaling([a, bad], y)
    fit = fit_stacked_scaling([a, a], y)
    with pytest.raises(InvalidInputError, match="2 view"):
        fit.apply(a)


def _loo(probs: np.ndarray, labels: np.ndarray):  # type: ignore[no-untyped-def]
    from infgate.detect.loo import LooOutputs

    n = len(labels)
    z = np.zeros(n)
    return LooOutputs(labels, probs, probs, z, z, z, z, z)


def test_out_of_sample_outputs_pass_the_in_sample_check_at_its_level() -> None:
    """Training and evaluation rows drawn alike, outputs out-of-sample (the exact posterior of
    a Gaussian view), 10% of the training labels flipped: the check rejects at most at its
    level (measured over 200 draws; 0.05 + 3 binomial standard errors). Outputs that
    memorized the given labels (sharpened towards them, flips included) are rejected every
    time, and so are outputs an overshooting step flattened."""
    from infgate.detect.label_errors import LOO_IN_SAMPLE_ALPHA, loo_in_sample_p_value

    rng = np.random.default_rng(5)
    k, n, m, draws = 4, 600, 200, 200
    rejected = {"out-of-sample": 0, "memorized": 0, "flattened": 0}
    for _ in range(draws):
        y = rng.integers(0, k, size=n + m)
        p = _gaussian_view(y, k, 1.3, rng)
        given = y[:n].copy()
        flip = rng.random(n) < 0.1
        given[flip] = (given[flip] + rng.integers(1, k, size=flip.sum())) % k
        reference = (p[n:], y[n:])
        memorized = 0.2 * p[:n] + 0.8 * np.eye(k)[given]
        flat = softmax(0.4 * np.log(p[:n]), axis=1)
        for name, train in (
            ("out-of-sample", p[:n]),
            ("memorized", memorized),
            ("flattened", flat),
        ):
            rejected[name] += (
                loo_in_sample_p_value(_loo(train, given), reference) < LOO_IN_SAMPLE_ALPHA
            )
    assert rejected["out-of-sample"] / draws <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / draws)
    assert rejected["memorized"] == draws and rejected["flattened"] == draws
