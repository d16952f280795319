"""A fitted label-noise model: how many labels are wrong, and which class each one should be.

The model's leave-one-out probabilities ``p_i`` (:mod:`infgate.detect.loo`) were learned from
the given, partly wrong labels. We explain the given label ``y~_i`` as a clean label ``y_i``
passed through a noise channel ``T[c, j] = P(y~ = j | y = c)`` (the class-conditional noise
model of Natarajan et al. 2013 and Patrini et al. 2017), with the clean posterior a
temperature-scaled version of the model's output (Guo et al. 2017)::

    P(y = c | x_i) = softmax(log p_i / tau)_c,
    P(y~_i | x_i)  = sum_c P(y = c | x_i) T[c, y~_i].

``T`` is fitted by EM for each ``tau`` on a grid and ``tau`` by profile likelihood; a model
trained on noisy labels is under-confident where noise was averaged in, and ``tau < 1``
with off-diagonal ``T`` is how the likelihood says so. The grid stops at ``tau = 1``: a
diagonally dominant channel only contracts the clean posterior (``p~ = p T`` is never sharper
than ``p``), so ``tau > 1`` can only mean the leave-one-out probabilities are over-confident
(an MLP that memorized its flips), and softening them there explains the flips away as
ambiguity (dev grid, 32-unit MLP: the count fell to 0.16x the true count on breast_cancer at
10% flips with the grid up to 5; capped at 1 the MLP's median count ratio went 0.72 -> 1.03
and the flagged-set ECE 0.26 -> 0.20). The E-step's posterior
``P(y_i = c | x_i, y~_i) = P(y = c | x_i) T[c, y~_i] / P(y~_i | x_i)`` gives, per example,
the probability its given label is wrong (``1 - posterior[i, y~_i]``); their sum is the
expected number of label errors, and the posterior of any other class is the calibrated
confidence that it is the right label. A Dirichlet pseudo-count on the diagonal of ``T``
(``prior``) keeps clean data at no noise. No retraining: the fit works on ``(n, C)``
probabilities only (well under a second for 10k rows).

Why not confident learning's count (Northcutt et al. 2021): its per-class thresholds count
every example the model is unsure about, so on data with genuinely ambiguous rows it
counts ambiguity as noise (3,450 spam7 rows with no flipped label, softmax regression,
seeds 0-1: ~270 "errors"; EM: 98-137). On the development grid the EM count is within
+-25% of the truth in more runs than confident learning's count on the same
leave-one-out probabilities, and on data with no flipped label it flags about half as many.

What the fit can and cannot promise. When ``probs`` ARE the clean posteriors (synthetic data,
``tests/detect/test_calibration.py``) the channel, the count and the confidence are
recovered: uniform 5-20% flips within 20% of the count, one-sided binary noise (a class
relabelled with probability 0.3, the other never) within 8%, clean labels under 1% of the
rows, flagged-set ECE under 0.04. On a real model the leave-one-out probabilities are only
an estimate of that posterior, and the fit inherits their error: a network that memorized
its flips keeps them probable and the count falls short; a misspecified model (softmax
regression on features that do not separate the classes) is mistaken for noise and the count
overshoots; a model fitted to one-sided binary noise learns the noisy posterior, which no
channel can tell apart from a clean one, and the count falls to 0.1-0.3x. The measured
figures per dataset and model family are in ``benchmarks/RESULTS.md`` ("Calibrated flagged
set"); treat the count and the confidence as estimates with those error bars.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from infgate.errors import InvalidInputError
from scipy.special import log_softmax

__all__ = ["NoiseModel", "NoiseModelOptions", "fit_noise_model", "rank_calibrated"]

log = logging.getLogger(__name__)

_EPS = 1e-12


@dataclass(frozen=True)
class NoiseModelOptions:
    """How the noise model is fitted.

    Attributes:
        min_temperature: smallest ``tau`` on the grid (sharpest clean posterior).
        max_temperature: largest ``tau`` on the grid.
        n_temperatures: grid points, log-spaced.
        prior: Dirichlet pseudo-count added to each diagonal cell of ``T`` (per class).
        max_iter: EM iterations per start.
        tolerance: stop when the log-likelihood gains less than this per example.
    """

    min_temperature: float = 0.2
    max_temperature: float = 1.0
    n_temperatures: int = 15
    prior: float = 1.0
    max_iter: int = 300
    tolerance: float = 1e-10

    def __post_init__(self) -> None:
        if not 0 < self.min_temperature <= self.max_temperature:
            raise InvalidInputError(
                "need 0 < min_temperature <= max_temperature, got "
                f"{self.min_temperature!r} and {self.max_temperature!r}"
            )
        if self.n_temperatures < 1:
            raise InvalidInputError(f"n_temperatures must be >= 1, got {self.n_temperatures!r}")
        if self.prior < 0:
            raise InvalidInputError(f"prior must be >= 0, got {self.prior!r}")
        if self.max_iter < 1:
            raise InvalidInputError(f"max_iter must be >= 1, got {self.max_iter!r}")
        if self.tolerance <= 0:
            raise InvalidInputError(f"tolerance must be positive, got {self.tolerance!r}")

    def to_dict(self) -> dict[str, float | int]:
        """The options as plain values (for MLflow params)."""
        return asdict(self)


@dataclass(frozen=True)
class NoiseModel:
    """The fitted noise channel and what it says about each example.

    Attributes:
        transition: ``(C, C)``; ``transition[c, j] = P(given label j | true label c)``.
        temperature: ``tau`` of the clean posterior.
        log_likelihood: of the given labels under the fitted model.
        posterior: ``(n, C)``; ``P(true label = c | x_i, given label)``.
        labels: the given labels, ``(n,)``.
    """

    transition: np.ndarray
    temperature: float
    log_likelihood: float
    posterior: np.ndarray
    labels: np.ndarray

    @property
    def error_probability(self) -> np.ndarray:
        """``(n,)`` probability that each given label is wrong; higher = more suspicious."""
        return 1.0 - self.posterior[np.arange(len(self.labels)), self.labels]

    @property
    def expected_errors(self) -> float:
        """Expected number of wrong labels, ``sum_i error_probability_i``."""
        return float(self.error_probability.sum())


def _starts(probs: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """EM starting channels: three uniform-noise levels and confident learning's joint."""
    k = probs.shape[1]
    out = []
    for keep in (0.95, 0.75, 0.55):
        t = np.full((k, k), (1.0 - keep) / (k - 1))
        np.fill_diagonal(t, keep)
        out.append(t)
    counts = np.bincount(labels, minlength=k)
    thresholds = np.array([probs[labels == c, c].mean() if counts[c] else 1.0 for c in range(k)])
    above = probs >= thresholds[None, :] - _EPS
    confident = np.where(above, probs, -np.inf).argmax(axis=1)
    has = above.any(axis=1)
    joint = np.full((k, k), 1e-3) + np.eye(k)
    np.add.at(joint, (confident[has], labels[has]), 1.0)
    out.append(joint / joint.sum(axis=1, keepdims=True))
    return out


def _em(
    clean: np.ndarray,
    labels: np.ndarray,
    start: np.ndarray,
    options: NoiseModelOptions,
) -> tuple[float, np.ndarray]:
    """EM for ``T`` with the clean posterior fixed; returns ``(log-likelihood, T)``."""
    k = clean.shape[1]
    onehot = np.eye(k)[labels]
    t = start
    previous = -np.inf
    for _ in range(options.max_iter):
        joint = clean * t[:, labels].T  # (n, C): P(y = c | x_i) T[c, y~_i]
        evidence = joint.sum(axis=1, keepdims=True)
        ll = float(np.log(np.maximum(evidence, _EPS)).sum())
        counts = (joint / evidence).T @ onehot + options.prior * np.eye(k)
        t = counts / counts.sum(axis=1, keepdims=True)
        if ll - previous < options.tolerance * len(labels):
            break
        previous = ll
    joint = clean * t[:, labels].T
    return float(np.log(np.maximum(joint.sum(axis=1), _EPS)).sum()), t


def fit_noise_model(
    probs: np.ndarray, labels: np.ndarray, *, options: NoiseModelOptions | None = None
) -> NoiseModel:
    """Fit the class-conditional noise channel and temperature to the given labels.

    Args:
        probs: ``(n, C)`` out-of-sample (leave-one-out) probabilities, rows summing to 1.
        labels: ``(n,)`` given labels in ``0..C-1``.
        options: fitting options (defaults: :class:`NoiseModelOptions`).

    Returns:
        The maximum-likelihood :class:`NoiseModel` over the temperature grid and EM starts.

    Raises:
        InvalidInputError: mismatched shapes, fewer than 2 classes, labels out of range or
            non-finite probabilities.
    """
    options = options or NoiseModelOptions()
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise InvalidInputError(f"probs must be (n, C) with C >= 2, got shape {probs.shape}")
    if len(labels) != len(probs) or len(labels) == 0:
        raise InvalidInputError(
            f"probs has {len(probs):,} rows but labels has {len(labels):,} (need equal, > 0)"
        )
    if not np.isfinite(probs).all():
        raise InvalidInputError("probs contain NaN or inf")
    k = probs.shape[1]
    if labels.min() < 0 or labels.max() >= k:
        raise InvalidInputError(f"labels must be in 0..{k - 1}, got {labels.min()}..{labels.max()}")
    return _compute_noise_model(probs, labels, options)


def _compute_noise_model(
    probs: np.ndarray, labels: np.ndarray, options: NoiseModelOptions
) -> NoiseModel:
    log_p = np.log(np.clip(probs, _EPS, 1.0))
    temperatures = np.exp(
        np.linspace(
            np.log(options.min_temperature),
            np.log(options.max_temperature),
            options.n_temperatures,
        )
    )
    starts = _starts(probs, labels)
    best: tuple[float, np.ndarray, float] | None = None
    for tau in temperatures:
        clean = np.exp(log_softmax(log_p / tau, axis=1))
        for start in starts:
            ll, t = _em(clean, labels, start, options)
            if best is None or ll > best[0]:
                best = (ll, t, float(tau))
    assert best is not None  # the grid and the starts are never empty
    ll, t, tau = best
    clean = np.exp(log_softmax(log_p / tau, axis=1))
    joint = clean * t[:, labels].T
    posterior = joint / joint.sum(axis=1, keepdims=True)
    model = NoiseModel(t, tau, ll, posterior, labels)
    log.info(
        "noise model: temperature %.3g, expected label errors %.1f of %d (diagonal of T %s)",
        tau,
        model.expected_errors,
        len(labels),
        np.round(np.diag(t), 3).tolist(),
    )
    return model


def rank_calibrated(scores: np.ndarray, error_probability: np.ndarray) -> np.ndarray:
    """``P(label wrong | ranking score)``: the noise model's error probabilities, made monotone
    in the ranking score by isotonic regression (pool-adjacent-violators).

    If ``error_probability`` is calibrated given each example, then
    ``E[wrong | score = s] = E[error_probability | score = s]`` (tower rule), and the
    isotonic fit is the least-squares estimate of it that is non-decreasing in the score. It
    keeps the sum (the expected number of errors, so the flagged count is unchanged) and
    makes the confidence of a flagged row agree with where the ranking put it: a row flagged
    by the ranking but given a low posterior by the noise model no longer gets a confidence
    that contradicts its rank. No labels needed, no retraining.

    Args:
        scores: ``(n,)`` ranking scores, higher = more suspicious.
        error_probability: ``(n,)`` values in [0, 1] (``NoiseModel.error_probability``).

    Returns:
        ``(n,)`` values in [0, 1], non-decreasing in ``scores`` (ties share one value).

    Raises:
        InvalidInputError: mismatched lengths or non-finite scores.
    """
    from sklearn.isotonic import IsotonicRegression

    s = np.asarray(scores, dtype=np.float64)
    e = np.asarray(error_probability, dtype=np.float64)
    if s.shape != e.shape or s.ndim != 1:
        raise InvalidInputError(
            f"scores and error_probability must be equal-length vectors, got {s.shape} and "
            f"{e.shape}"
        )
    if not np.isfinite(s).all():
        raise InvalidInputError("ranking scores contain NaN or inf")
    if len(s) == 0:
        return e.copy()
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    return np.clip(iso.fit_transform(s, e), 0.0, 1.0)
