"""A fitted label-noise model: how many labels are wrong, and which class each one should be.

The model's leave-one-out probabilities ``p_i`` (:mod:`infgate.detect.loo`) were learned from
the given, partly wrong labels. We explain the given label ``y~_i`` as a clean label ``y_i``
passed through a noise channel ``T[c, j] = P(y~ = j | y = c)`` (the class-conditional noise
model of Natarajan et al. 2013 and Patrini et al. 2017), with the clean posterior a
temperature-scaled version of the model's output (Guo et al. 2017)::

    P(y = c | x_i) = softmax(log p_i / tau)_c,
    P(y~_i | x_i)  = sum_c P(y = c | x_i) T[c, y~_i].

Where the clean posterior's calibration comes from (``NoiseModelOptions.calibration``):

- **Labelled evaluation data** (``"eval"``; ``"auto"``, the default, with 30 rows or more).
  Its labels are taken as correct (a curated test set) and the model's outputs on it are
  out-of-sample, so a vector-scaling map ``softmax(beta log p + b)`` fitted there
  (:func:`fit_vector_scaling`) says how the model's outputs relate to the CLEAN label. The
  leave-one-out probabilities go through that map and EM fits ``T`` alone. This separates
  what the training labels alone cannot: a model fitted to noisy labels learns the noisy
  posterior ``p T``, which looks like a clean posterior to any channel fitted on the same
  labels (one-sided binary noise: 4 suspects for 84-108 flips on MASS biopsy), while clean
  evaluation labels show the map back (78-109 suspects, precision 0.90-0.95). The fitted
  channel is then weighed against "no label is wrong" (:func:`noise_probability`, a BIC
  Bayes factor of the one-parameter uniform channel against ``T = I``) and the two are
  averaged: EM always finds some off-diagonal mass in sampling noise, and on clean data that
  mass was flagged rows. A Gaussian prior on ``log beta`` keeps the map finite when the
  model gets every evaluation row right. On the development grid (with the evaluation
  neighbours' view below) the count lands within +-25% of the truth in 0.96 of the runs
  against 0.58 for the training-label fit (held-out datasets 0.77 against 0.50), and data
  with no planted errors is flagged at 0.08% against 0.9% (held-out 0.2% against 3.9%;
  ``benchmarks/RESULTS.md``). The price: evaluation labels with the training data's own
  noise teach the map the noise and the count falls to a sixth or less;
  ``calibration="train"`` is for such data.
- **The training labels alone** (``"train"``; ``"auto"`` without enough labelled evaluation
  rows). ``T`` is fitted by EM for each ``tau`` on a grid and ``tau`` by profile likelihood
  (below).

With the training labels alone, a model
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
channel can tell apart from a clean one, and the count falls to 0.1-0.3x. Hence, with
labelled evaluation data, :func:`~infgate.detect.find_label_errors` fits the channel on a
clean posterior that also uses the training rows' evaluation neighbours
(:mod:`infgate.detect.neighbour_posterior`, ``NoiseModelOptions.posterior``): stacked with
the leave-one-out outputs by :func:`fit_stacked_scaling` where those look out-of-sample,
alone where they do not (a network that memorized its flips). The measured
figures per dataset and model family are in ``benchmarks/RESULTS.md`` ("Calibrated flagged
set"); treat the count and the confidence as estimates with those error bars. Per scan,
:func:`count_interval` bootstraps the count's own sampling error (the evaluation map's and
the channel's): on the benchmark grid its 90% interval held the true number of flips in 120
of 120 development and 115 of 120 held-out runs ("How far the count can be off").
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from infgate.errors import InvalidInputError
from scipy.special import log_softmax
from tqdm.auto import trange

__all__ = [
    "CountInterval",
    "NoiseModel",
    "NoiseModelOptions",
    "VectorScaling",
    "count_interval",
    "fit_noise_model",
    "fit_stacked_scaling",
    "fit_vector_scaling",
    "noise_probability",
    "rank_calibrated",
]

log = logging.getLogger(__name__)

_EPS = 1e-12
CALIBRATIONS = ("auto", "eval", "train")
POSTERIORS = ("auto", "model", "neighbours", "both")
#: flips spread over a row of ``T`` by :meth:`NoiseModel.shrunk_transition` (development grid:
#: 3, 10 and 30 within 0.004 mean AP of each other).
CHANNEL_PSEUDO_COUNT = 10.0
#: rows times classes times draws the count interval spends at most (above its 50 draws).
INTERVAL_WORK = 2e7


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
        calibration: where the clean posterior's calibration comes from. ``"eval"``: from
            labelled evaluation data, whose labels are taken as correct (a curated test
            set): the model's probabilities on it are out-of-sample and their labels are
            clean, so a vector-scaling map (an inverse temperature and one bias per class,
            Guo et al. 2017) fitted there says how the model's outputs relate to the CLEAN
            label, and only ``T`` is fitted on the training labels. ``"train"``: the
            temperature is fitted with ``T`` on the training labels alone (profile
            likelihood over the grid). ``"auto"``: ``"eval"`` when labelled evaluation data
            with at least ``min_reference_rows`` rows is given, else ``"train"``. Evaluation
            labels that carry the training data's own noise make ``"eval"`` under-count
            (the map then learns the noisy labels); pass ``"train"`` for such data.
        bias_penalty: L2 penalty on the class biases of the evaluation map (in units of the
            summed negative log-likelihood); keeps a small evaluation set from fitting noise.
        beta_penalty: L2 penalty on the log inverse temperature of the evaluation map (a
            Gaussian prior on ``log beta`` with variance ``1 / (2 beta_penalty)``): an
            evaluation set the model gets entirely right has no finite maximum-likelihood
            ``beta``, and an unbounded one turns every training row the model misclassifies
            into a certain label error.
        min_reference_rows: ``"auto"`` uses the evaluation data only from this many rows.
        compare_clean: with the evaluation calibration, weigh the fitted channel against
            "no label is wrong" by their BIC weights (:attr:`NoiseModel.noise_probability`)
            and average the two; ``False`` takes the channel as given. Not done with the
            training-label calibration: there the temperature absorbs what the channel would
            explain, the two hypotheses are barely distinguishable (MASS biopsy, 68 flips of
            683: P(any label wrong) 0.71), and averaging would only shrink the count.
        posterior: what the clean posterior of the TRAINING rows is, with the evaluation
            calibration. ``"model"``: the model's approximate leave-one-out probabilities.
            ``"neighbours"``: the votes of each row's nearest labelled evaluation rows
            (:class:`~infgate.detect.neighbour_posterior.NeighbourPosterior`), calibrated
            on the evaluation rows' own left-out votes. ``"both"``: the two stacked, one
            map ``softmax(beta_1 log p + beta_2 log v + b)`` fitted on the evaluation rows
            (:func:`fit_stacked_scaling`), so the weight each gets is learned where neither
            was fitted. ``"auto"``: ``"both"`` when the leave-one-out outputs look like
            out-of-sample outputs (leverage below 1 on 99% of the rows, and
            :func:`~infgate.detect.label_errors.loo_in_sample_p_value` at least 0.05: softmax
            regression, a small MLP), else ``"neighbours"`` (a network that memorized its
            flips, or whose leave-one-out step overshoots). Chosen on the development grid
            (``benchmarks/RESULTS.md``, "One clean posterior from both views").
        interval_draws: bootstrap draws of the count's interval (:func:`count_interval`,
            evaluation calibration only); 0 computes none. Large data gets fewer, about
            ``INTERVAL_WORK / (n C)`` and never under 50 (each draw costs ``O(n C)`` per EM
            iteration: 38 ms at 10,000 rows and 10 classes, 0.27 s at 200,000;
            ``benchmarks/bench_count_interval.py``).
        interval_level: that interval's nominal coverage.
    """

    min_temperature: float = 0.2
    max_temperature: float = 1.0
    n_temperatures: int = 15
    prior: float = 1.0
    max_iter: int = 300
    tolerance: float = 1e-10
    calibration: str = "auto"
    bias_penalty: float = 1.0
    beta_penalty: float = 1.0
    min_reference_rows: int = 30
    compare_clean: bool = True
    posterior: str = "auto"
    interval_draws: int = 200
    interval_level: float = 0.9

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
        if self.calibration not in CALIBRATIONS:
            raise InvalidInputError(
                f"calibration must be one of {list(CALIBRATIONS)}, got {self.calibration!r}"
            )
        if self.posterior not in POSTERIORS:
            raise InvalidInputError(
                f"posterior must be one of {list(POSTERIORS)}, got {self.posterior!r}"
            )
        if not self.bias_penalty >= 0:
            raise InvalidInputError(f"bias_penalty must be >= 0, got {self.bias_penalty!r}")
        if not self.beta_penalty >= 0:
            raise InvalidInputError(f"beta_penalty must be >= 0, got {self.beta_penalty!r}")
        if self.interval_draws < 0 or self.interval_draws == 1:
            raise InvalidInputError(
                f"interval_draws must be 0 (no interval) or >= 2, got {self.interval_draws!r}"
            )
        if not 0.0 < self.interval_level < 1.0:
            raise InvalidInputError(
                f"interval_level must be in (0, 1), got {self.interval_level!r}"
            )
        if self.min_reference_rows < 1:
            raise InvalidInputError(
                f"min_reference_rows must be >= 1, got {self.min_reference_rows!r}"
            )

    def to_dict(self) -> dict[str, float | int | str | bool]:
        """The options as plain values (for MLflow params)."""
        return asdict(self)


@dataclass(frozen=True)
class VectorScaling:
    """``q = softmax(beta * log p + b)``: the map from a model's probabilities to the clean
    label's posterior, fitted on labelled evaluation data (:func:`fit_vector_scaling`).

    With several views of each row (:func:`fit_stacked_scaling`) the map is
    ``softmax(sum_v beta_v log p_v + b)``: one inverse temperature per view, so two views
    that say the same thing share the weight a single one would get, instead of counting it
    twice as a product of independent posteriors would.

    Attributes:
        inverse_temperature: ``beta`` of the first view (> 1 sharpens, < 1 softens).
        bias: ``(C,)`` class biases ``b`` (a class the noisy training labels under- or
            over-represent gets its prior back).
        n_rows: evaluation rows it was fitted on.
        view_weights: every view's ``beta`` (one entry for plain vector scaling).
    """

    inverse_temperature: float
    bias: np.ndarray
    n_rows: int
    view_weights: tuple[float, ...] = ()

    def apply(self, probs: np.ndarray, *more: np.ndarray) -> np.ndarray:
        """``(n, C)`` recalibrated probabilities; ``more``: the other views, in fit order."""
        views = (probs, *more)
        weights = self.view_weights or (self.inverse_temperature,)
        if len(views) != len(weights):
            raise InvalidInputError(
                f"this map was fitted on {len(weights)} view(s), got {len(views)}"
            )
        z = self.bias[None, :] + sum(
            np.log(np.clip(v, _EPS, 1.0)) * w for v, w in zip(views, weights, strict=True)
        )
        return np.exp(log_softmax(z, axis=1))


def _check_probabilities(p: np.ndarray, y: np.ndarray, what: str) -> None:
    if p.ndim != 2 or p.shape[1] < 2 or len(p) == 0 or len(y) != len(p):
        raise InvalidInputError(
            f"need (m, C) {what} with C >= 2 and m matching labels, got {p.shape} and {y.shape}"
        )
    if not np.isfinite(p).all():
        raise InvalidInputError(f"evaluation {what} contain NaN or inf")


def fit_vector_scaling(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    bias_penalty: float = 1.0,
    beta_penalty: float = 1.0,
) -> VectorScaling:
    """Vector scaling (Guo et al. 2017) by penalized maximum likelihood on labelled rows.

    Minimizes ``-sum_j log softmax(beta log p_j + b)_{y_j} + bias_penalty * ||b||^2
    + beta_penalty * (log beta)^2`` over ``log beta`` (bounded to ``[-3, 3]``) and ``b``
    with L-BFGS; convex in ``b`` for fixed ``beta``.

    Args:
        probs: ``(m, C)`` the model's probabilities on the evaluation rows.
        labels: ``(m,)`` their (correct) labels.
        bias_penalty: L2 penalty on ``b``.
        beta_penalty: L2 penalty on ``log beta`` (keeps ``beta`` finite when the model gets
            every evaluation row right).

    Returns:
        The fitted :class:`VectorScaling`.

    Raises:
        InvalidInputError: mismatched or empty inputs, non-finite probabilities, labels out
            of range.
    """
    return fit_stacked_scaling(
        [probs], labels, bias_penalty=bias_penalty, beta_penalty=beta_penalty
    )


def fit_stacked_scaling(
    views: list[np.ndarray] | tuple[np.ndarray, ...],
    labels: np.ndarray,
    *,
    bias_penalty: float = 1.0,
    beta_penalty: float = 1.0,
    min_weight: float = 0.0,
) -> VectorScaling:
    """Vector scaling of several views of the same rows at once:
    ``q = softmax(sum_v beta_v log p_v + b)``, by penalized maximum likelihood on labelled
    rows (stacking, Wolpert 1992, with a log-linear combiner).

    Each view gets ``beta_v = min_weight + exp(w_v)``; the penalty is
    ``beta_penalty * sum_v w_v^2`` (with ``min_weight = 0`` a Gaussian prior on each
    ``log beta_v``; each ``w_v`` bounded to ``[-3, 3]``) plus ``bias_penalty * ||b||^2``.
    The weights are learned on rows neither view was fitted on, so correlated views (the
    model's output and the vote of its input-space neighbours usually agree) share their
    weight, and a view that adds nothing is shrunk towards ``min_weight``.

    Args:
        views: ``(m, C)`` probabilities per view on the evaluation rows.
        labels: ``(m,)`` their (correct) labels.
        bias_penalty: L2 penalty on ``b``.
        beta_penalty: L2 penalty on each ``log``-weight.
        min_weight: floor of every ``beta_v``.

    Returns:
        The fitted :class:`VectorScaling`; ``apply`` takes the views in the same order.

    Raises:
        InvalidInputError: no view, mismatched or empty inputs, non-finite probabilities,
            labels out of range.
    """
    from scipy.optimize import minimize

    y = np.asarray(labels, dtype=np.int64)
    ps = [np.asarray(v, dtype=np.float64) for v in views]
    if not ps:
        raise InvalidInputError("need at least one view of the evaluation rows")
    for p in ps:
        _check_probabilities(p, y, "probabilities")
    k = ps[0].shape[1]
    if any(p.shape != ps[0].shape for p in ps):
        raise InvalidInputError(f"views differ in shape: {[p.shape for p in ps]}")
    if y.min() < 0 or y.max() >= k:
        raise InvalidInputError(f"evaluation labels must be in 0..{k - 1}")
    log_ps = np.stack([np.log(np.clip(p, _EPS, 1.0)) for p in ps])  # (V, m, C)
    n_views = len(ps)
    onehot = np.eye(k)[y]

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        lw, b = w[:n_views], w[n_views:]
        beta = min_weight + np.exp(lw)
        ls = log_softmax(np.tensordot(beta, log_ps, axes=1) + b[None, :], axis=1)
        resid = np.exp(ls) - onehot  # d(-log lik)/dz
        value = (
            -float((ls * onehot).sum())
            + bias_penalty * float(b @ b)
            + beta_penalty * float(lw @ lw)
        )
        grad_b = resid.sum(axis=0) + 2.0 * bias_penalty * b
        grad_lw = np.einsum("mc,vmc->v", resid, log_ps) * np.exp(lw) + 2.0 * beta_penalty * lw
        return value, np.concatenate([grad_lw, grad_b])

    bounds = [(-3.0, 3.0)] * n_views + [(None, None)] * k
    fit = minimize(objective, np.zeros(n_views + k), jac=True, method="L-BFGS-B", bounds=bounds)
    weights = tuple(float(min_weight + np.exp(w)) for w in fit.x[:n_views])
    return VectorScaling(weights[0], fit.x[n_views:].copy(), len(y), weights)


@dataclass(frozen=True)
class NoiseModel:
    """The fitted noise channel and what it says about each example.

    Attributes:
        transition: ``(C, C)``; ``transition[c, j] = P(given label j | true label c)``.
        temperature: ``tau`` of the clean posterior.
        log_likelihood: of the given labels under the fitted model.
        posterior: ``(n, C)``; ``P(true label = c | x_i, given label)``.
        labels: the given labels, ``(n,)``.
        calibration: ``"eval"`` (the clean posterior's map was fitted on labelled
            evaluation data) or ``"train"`` (temperature by profile likelihood).
        scaling: the evaluation map with ``"eval"``, else ``None``.
        uniform_log_likelihood: of the given labels under the best UNIFORM channel at the
            same clean posterior (for :attr:`channel_p_value`).
        clean_log_likelihood: of the given labels with no noise (``T = I``) at the same
            clean posterior (``nan`` when not computed).
        noise_probability: posterior probability that ANY label is wrong, against the
            hypothesis that none is (:func:`noise_probability`; 1.0 when not compared).
            ``posterior`` and everything derived from it are the average of the two
            hypotheses: ``noise_probability * channel posterior + (1 - noise_probability)
            * one-hot(given label)``, so the expected number of errors is the channel's
            times ``noise_probability``.
        source: the clean posterior of the training rows: ``"model"`` (the model's
            leave-one-out probabilities), ``"neighbours"`` (their labelled evaluation
            neighbours' votes, :mod:`infgate.detect.neighbour_posterior`) or ``"both"``
            (the two stacked, :func:`fit_stacked_scaling`).
        source_accuracy: with ``"neighbours"`` or ``"both"``, the share of evaluation rows whose
            left-out vote names their label (how sharp that posterior is), else ``None``.
    """

    transition: np.ndarray
    temperature: float
    log_likelihood: float
    posterior: np.ndarray
    labels: np.ndarray
    calibration: str = "train"
    scaling: VectorScaling | None = None
    uniform_log_likelihood: float = float("nan")
    clean_log_likelihood: float = float("nan")
    noise_probability: float = 1.0
    source: str = "model"
    source_accuracy: float | None = None

    @property
    def channel_p_value(self) -> float:
        """p-value of the likelihood-ratio test of uniform noise (one flip rate, flips to
        every other class alike) against the fitted class-conditional channel, at the same
        clean posterior: ``chi2.sf(2 (ll - ll_uniform), C (C - 1) - 1)``. Small = the given
        labels say which classes are confused with which (1.0 when not computed)."""
        from scipy.stats import chi2

        if not np.isfinite(self.uniform_log_likelihood):
            return 1.0
        k = self.transition.shape[0]
        stat = max(2.0 * (self.log_likelihood - self.uniform_log_likelihood), 0.0)
        return float(chi2.sf(stat, k * (k - 1) - 1))

    def shrunk_transition(self, pseudo_count: float = CHANNEL_PSEUDO_COUNT) -> np.ndarray:
        """``T`` with each row's off-diagonal pulled towards uniform: a Dirichlet posterior
        mean with ``pseudo_count`` flips spread evenly over the row's other classes, against
        the row's expected number of flips ``m_c = sum_i P(y_i = c | ...) [y~_i != c]``.
        A row the data says little about (a few flips over many classes) keeps its flip
        rate and loses its noise; a row with many flips keeps its structure."""
        t = self.transition
        k = t.shape[0]
        flips = np.array(
            [float((self.posterior[:, c] * (self.labels != c)).sum()) for c in range(k)]
        )
        off = 1.0 - np.diag(t)
        uniform = np.repeat((off / max(k - 1, 1))[:, None], k, axis=1)
        np.fill_diagonal(uniform, np.diag(t))
        w = (pseudo_count / (pseudo_count + flips))[:, None]
        return (1.0 - w) * t + w * uniform

    @property
    def error_probability(self) -> np.ndarray:
        """``(n,)`` probability that each given label is wrong; higher = more suspicious."""
        return 1.0 - self.posterior[np.arange(len(self.labels)), self.labels]

    @property
    def expected_errors(self) -> float:
        """Expected number of wrong labels, ``sum_i error_probability_i``."""
        return float(self.error_probability.sum())

    @property
    def diagonal_margin(self) -> float:
        """``min_c (T[c, c] - max_{j != c} T[c, j])`` over the given labels' classes.

        A class-conditional channel is identifiable only when it is diagonally dominant:
        each class's examples keep their label more often than they get any other one
        (the condition confident learning and the noise-channel literature assume). At 0
        or below, the fitted channel says some class is more often mislabelled than
        labelled, which these probabilities cannot tell from a model that is wrong about
        it: a weak or barely trained model, or leave-one-out steps the curvature
        overshoots. The count and the flagged set are then not estimates of anything."""
        t = self.transition
        k = t.shape[0]
        if k < 2:
            return 1.0
        seen = np.unique(self.labels)
        off = np.where(np.eye(k, dtype=bool), -np.inf, t).max(axis=1)
        return float(np.min((np.diag(t) - off)[seen])) if len(seen) else 1.0


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


def _weighted_em(
    by_label: list[tuple[int, np.ndarray, np.ndarray]],
    n: int,
    start: np.ndarray,
    options: NoiseModelOptions,
    tolerance: float,
) -> np.ndarray:
    """:func:`_em` with a count per row (a bootstrap draw's), grouped by given label: the
    E- and M-steps of label ``j``'s rows are two matrix-vector products with their clean
    posterior, ``(n_j, C)``, and no ``(n, C)`` temporaries. ``by_label``: ``(j, clean rows
    with label j, their weights)``. Returns ``T``."""
    k = start.shape[0]
    t = start
    previous = -np.inf
    for _ in range(options.max_iter):
        counts = options.prior * np.eye(k)
        ll = 0.0
        for j, clean_j, w_j in by_label:
            evidence = np.maximum(clean_j @ t[:, j], _EPS)
            ll += float(w_j @ np.log(evidence))
            counts[:, j] += t[:, j] * (clean_j.T @ (w_j / evidence))
        t = counts / counts.sum(axis=1, keepdims=True)
        if ll - previous < tolerance * n:
            break
        previous = ll
    return t


def _weighted_sum(x: np.ndarray, weights: np.ndarray | None) -> float:
    return float(x.sum() if weights is None else weights @ x)


def _em_uniform(
    clean: np.ndarray,
    labels: np.ndarray,
    options: NoiseModelOptions,
    weights: np.ndarray | None = None,
) -> float:
    """Log-likelihood of the best UNIFORM channel (flip rate ``rho``, flips spread evenly over
    the other classes) at the clean posterior ``clean``, with the same prior as the full
    channel's EM (``prior * C`` pseudo-counts of "kept").

    ``P(y~_i | x_i) = (1 - rho) q_i + rho (1 - q_i) / (C - 1)`` with ``q_i = clean[i, y~_i]``
    is affine in ``rho``, so the penalized log-likelihood
    ``sum_i log(q_i + rho b_i) + prior C log(1 - rho)`` is concave: its maximizer is EM's
    fixed point, found here by a bounded scalar search instead of EM's slow approach to
    ``rho = 0`` on clean data. ``weights``: a count per row, as in :func:`_em`."""
    from scipy.optimize import minimize_scalar

    n, k = clean.shape
    q = np.clip(clean[np.arange(n), labels], 0.0, 1.0)
    b = (1.0 - q) / (k - 1) - q
    pseudo = options.prior * k

    def ll(rho: float) -> float:
        return _weighted_sum(np.log(np.maximum(q + rho * b, _EPS)), weights)

    def negative(rho: float) -> float:
        return -(ll(rho) + pseudo * np.log1p(-rho))

    fit = minimize_scalar(
        negative, bounds=(0.0, 1.0 - 1e-9), method="bounded", options={"xatol": 1e-10}
    )
    rho = float(fit.x)
    # the bounded search never lands exactly on the edge; rho = 0 is a candidate itself
    return ll(0.0) if negative(0.0) <= negative(rho) else ll(rho)


def noise_probability(clean_ll: float, uniform_ll: float, n: int) -> float:
    """``P(some labels are wrong | given labels)`` against ``P(none is)``, equal prior odds.

    The Bayes factor of the one-parameter uniform channel (flip rate ``rho``) against ``T = I``
    at the same clean posterior, by the Schwarz (BIC) approximation with the unit-information
    prior: ``log BF = ll_uniform - ll_clean - log(n) / 2``. Uniform noise is the test's
    alternative, not a claim about the noise: it is the channel with one parameter, so a
    handful of flips the model is sure of rejects "clean" whatever their classes, while a
    class-conditional channel's ``C (C - 1)`` parameters would hide them behind their own
    penalty. ``n`` examples whose labels the model finds no more surprising than its own
    calibrated uncertainty give ``ll_uniform ~ ll_clean`` and a probability near
    ``1 / (1 + sqrt(n))``; flips the model is confident about move it to 1 within a few rows.
    """
    if not (np.isfinite(clean_ll) and np.isfinite(uniform_ll)) or n < 2:
        return 1.0
    log_bf = max(uniform_ll - clean_ll, 0.0) - 0.5 * np.log(n)
    return float(1.0 / (1.0 + np.exp(-np.clip(log_bf, -700.0, 700.0))))


def _clean_log_likelihood(clean: np.ndarray, labels: np.ndarray) -> float:
    return float(np.log(np.maximum(clean[np.arange(len(labels)), labels], _EPS)).sum())


def _averaged(posterior: np.ndarray, labels: np.ndarray, weight: float) -> np.ndarray:
    """``weight * posterior + (1 - weight) * one-hot(labels)``."""
    if weight >= 1.0:
        return posterior
    out = posterior * weight
    out[np.arange(len(labels)), labels] += 1.0 - weight
    return out


def fit_noise_model(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    options: NoiseModelOptions | None = None,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    second_view: tuple[np.ndarray, np.ndarray] | None = None,
) -> NoiseModel:
    """Fit the class-conditional noise channel and the clean posterior to the given labels.

    Args:
        probs: ``(n, C)`` out-of-sample (leave-one-out) probabilities, rows summing to 1.
        labels: ``(n,)`` given labels in ``0..C-1``.
        options: fitting options (defaults: :class:`NoiseModelOptions`).
        reference: ``(eval_probs, eval_labels)``, the same model's probabilities on labelled
            evaluation rows and their labels (taken as correct). With
            ``options.calibration`` ``"eval"`` (or ``"auto"`` and at least
            ``min_reference_rows`` rows) the clean posterior is
            :func:`fit_vector_scaling`'s map of ``probs`` and only ``T`` is fitted here.
        second_view: ``(train_view, eval_view)``, another ``(n, C)`` / ``(m, C)`` posterior
            of the same training and evaluation rows (their evaluation neighbours' votes):
            with the evaluation calibration the clean posterior is then
            :func:`fit_stacked_scaling`'s map of both views, fitted on the evaluation rows.
            Ignored with the training-label calibration.

    Returns:
        The maximum-likelihood :class:`NoiseModel` over the EM starts (and, with
        ``"train"`` calibration, the temperature grid).

    Raises:
        InvalidInputError: mismatched shapes, fewer than 2 classes, labels out of range or
            non-finite probabilities; ``calibration="eval"`` without ``reference``; a
            ``reference`` with another number of classes.
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
    if options.calibration == "eval" and reference is None:
        raise InvalidInputError(
            "calibration='eval' needs labelled evaluation data (reference=(probs, labels)); "
            "pass calibration='train' or 'auto' to fit without it"
        )
    if reference is not None and np.shape(reference[0])[-1] != k:
        raise InvalidInputError(
            f"reference probabilities have {np.shape(reference[0])[-1]} classes but probs have {k}"
        )
    use_eval = reference is not None and (
        options.calibration == "eval"
        or (options.calibration == "auto" and len(reference[1]) >= options.min_reference_rows)
    )
    if use_eval:
        assert reference is not None
        if second_view is None:
            scaling = fit_vector_scaling(
                *reference, bias_penalty=options.bias_penalty, beta_penalty=options.beta_penalty
            )
            return _fixed_posterior_model(scaling.apply(probs), labels, options, scaling)
        train_view, eval_view = (np.asarray(v, dtype=np.float64) for v in second_view)
        if train_view.shape != probs.shape or eval_view.shape != np.shape(reference[0]):
            raise InvalidInputError(
                f"second_view shapes {train_view.shape} / {eval_view.shape} do not match the "
                f"training {probs.shape} and evaluation {np.shape(reference[0])} probabilities"
            )
        scaling = fit_stacked_scaling(
            [reference[0], eval_view],
            reference[1],
            bias_penalty=options.bias_penalty,
            beta_penalty=options.beta_penalty,
        )
        clean = scaling.apply(probs, train_view)
        return _fixed_posterior_model(clean, labels, options, scaling)
    return _compute_noise_model(probs, labels, options)


def _fixed_posterior_model(
    clean: np.ndarray, labels: np.ndarray, options: NoiseModelOptions, scaling: VectorScaling
) -> NoiseModel:
    """EM for ``T`` alone, the clean posterior given (the evaluation map of the probs)."""
    best: tuple[float, np.ndarray] | None = None
    for start in _starts(clean, labels):
        ll, t = _em(clean, labels, start, options)
        if best is None or ll > best[0]:
            best = (ll, t)
    assert best is not None  # _starts is never empty
    ll, t = best
    joint = clean * t[:, labels].T
    posterior = joint / joint.sum(axis=1, keepdims=True)
    uniform_ll = _em_uniform(clean, labels, options)
    clean_ll = _clean_log_likelihood(clean, labels)
    weight = noise_probability(clean_ll, uniform_ll, len(labels)) if options.compare_clean else 1.0
    model = NoiseModel(
        t,
        1.0 / scaling.inverse_temperature,
        ll,
        _averaged(posterior, labels, weight),
        labels,
        "eval",
        scaling,
        uniform_ll,
        clean_ll,
        weight,
    )
    log.info(
        "noise model calibrated on %d labelled evaluation rows (inverse temperature %.3g): "
        "P(any label wrong) %.3g, expected label errors %.1f of %d (diagonal of T %s)",
        scaling.n_rows,
        scaling.inverse_temperature,
        weight,
        model.expected_errors,
        len(labels),
        np.round(np.diag(t), 3).tolist(),
    )
    return model


@dataclass(frozen=True)
class CountInterval:
    """A bootstrap interval for the expected number of label errors.

    Attributes:
        lower: the ``(1 - level) / 2`` quantile of the model-averaged draws' counts
            (:func:`count_interval`), rounded down.
        upper: the ``(1 + level) / 2`` quantile, rounded up.
        level: the interval's nominal coverage.
        draws: bootstrap draws it was computed from.
    """

    lower: int
    upper: int
    level: float
    draws: int

    def covers(self, count: float) -> bool:
        return self.lower <= count <= self.upper


def count_interval(
    model: NoiseModel,
    train_views: list[np.ndarray] | tuple[np.ndarray, ...],
    eval_views: list[np.ndarray] | tuple[np.ndarray, ...],
    eval_labels: np.ndarray,
    *,
    options: NoiseModelOptions | None = None,
    level: float = 0.9,
    draws: int = 200,
    seed: int = 0,
    tolerance: float = 1e-9,
    progress: bool = False,
) -> CountInterval:
    """How far the expected number of label errors could be from the truth, by bootstrap.

    The count of an evaluation-calibrated :class:`NoiseModel` has two sources of
    uncertainty, and on small or hard data both are large (MASS Pima, 399 training and 133
    evaluation rows, softmax regression right on about 75%: a 90% interval of 0-47 around 40
    flips): the evaluation map is fitted on a few hundred labelled rows, and ``T`` and the
    noise-or-clean weight on the training labels. Each draw resamples the evaluation rows
    (with replacement) and refits the map (:func:`fit_stacked_scaling`), puts Poisson(1)
    weights on the training rows (the Poisson bootstrap, Hanley & MacGibbon 2006), refits
    ``T`` by weighted EM from the fitted channel, and the noise-or-clean weight
    (:func:`noise_probability`); its channel's count is the weighted expected count scaled to
    ``n`` rows. The interval is the percentile interval (Efron & Tibshirani 1993, ch. 13) of
    the model-averaged draws (each draw's count with its weight, 0 with the rest), widened
    to whole rows, so where "no label is wrong" cannot be ruled out the lower bound is 0 and
    the upper bound is what the channel would count. Deterministic for a given ``seed``.

    It is an interval for the fit's sampling error, not for the model's bias: where the
    clean posterior explains the flips as ambiguity in every draw (Pima at 5% flips, 20 of
    399 rows: 0-1), or the evaluation split differs from the training rows, it can miss.

    Args:
        model: the fitted model (``fit_noise_model`` with the evaluation calibration).
        train_views: the views of the training rows the model's map was fitted for, in
            order (``(loo_probs,)``, ``(votes,)`` or ``(loo_probs, votes)``).
        eval_views: the same views of the evaluation rows.
        eval_labels: the evaluation rows' labels.
        options: the options the model was fitted with (penalties, prior, EM iterations).
        level: nominal coverage, in ``(0, 1)``.
        draws: bootstrap draws (cost: one map fit and one warm-started EM each).
        seed: of the resampling.
        tolerance: per-example log-likelihood gain at which a draw's EM stops.
        progress: show a progress bar over the draws.

    Raises:
        InvalidInputError: a model not calibrated on evaluation data, views that do not
            match its map or each other, ``level`` outside ``(0, 1)`` or ``draws < 2``.
    """
    options = options or NoiseModelOptions()
    if model.calibration != "eval" or model.scaling is None:
        raise InvalidInputError(
            "a count interval needs a noise model calibrated on labelled evaluation data "
            f"(this one's calibration is {model.calibration!r})"
        )
    if not 0.0 < level < 1.0:
        raise InvalidInputError(f"level must be in (0, 1), got {level!r}")
    if draws < 2:
        raise InvalidInputError(f"draws must be >= 2, got {draws!r}")
    n_views = len(model.scaling.view_weights or (model.scaling.inverse_temperature,))
    train = [np.asarray(v, dtype=np.float64) for v in train_views]
    evals = [np.asarray(v, dtype=np.float64) for v in eval_views]
    y_eval = np.asarray(eval_labels, dtype=np.int64)
    labels = model.labels
    n, m = len(labels), len(y_eval)
    if len(train) != n_views or len(evals) != n_views:
        raise InvalidInputError(
            f"the model's map takes {n_views} view(s); got {len(train)} training and "
            f"{len(evals)} evaluation views"
        )
    if any(v.shape != model.posterior.shape for v in train) or any(
        v.shape != (m, model.posterior.shape[1]) for v in evals
    ):
        raise InvalidInputError(
            f"views must be {model.posterior.shape} (training) and "
            f"({m}, {model.posterior.shape[1]}) (evaluation); got "
            f"{[v.shape for v in train]} and {[v.shape for v in evals]}"
        )
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    groups = [np.flatnonzero(labels == j) for j in range(model.posterior.shape[1])]
    counts, weights = np.empty(draws), np.ones(draws)
    for d in trange(draws, desc="count interval", unit="draw", disable=not progress, leave=False):
        j = rng.integers(0, m, m)
        scaling = fit_stacked_scaling(
            [v[j] for v in evals],
            y_eval[j],
            bias_penalty=options.bias_penalty,
            beta_penalty=options.beta_penalty,
        )
        clean = scaling.apply(*train)
        w = rng.poisson(1.0, n).astype(np.float64)
        by_label = [(c, clean[g], w[g]) for c, g in enumerate(groups) if len(g)]
        t = _weighted_em(by_label, n, model.transition, options, tolerance)
        if options.compare_clean:
            clean_ll = _weighted_sum(np.log(np.maximum(clean[rows, labels], _EPS)), w)
            weights[d] = noise_probability(clean_ll, _em_uniform(clean, labels, options, w), n)
        counts[d] = n * float(w @ _wrong(clean, t, labels)) / max(float(w.sum()), 1.0)
    lo, hi = _mixture_quantiles(counts, weights, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return CountInterval(int(np.floor(lo)), int(min(np.ceil(hi), n)), level, draws)


def _wrong(clean: np.ndarray, t: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's probability that its given label is wrong under clean posterior ``clean``
    and channel ``t``."""
    given = clean[np.arange(len(labels)), labels] * t[labels, labels]
    return 1.0 - given / np.maximum((clean * t[:, labels].T).sum(axis=1), _EPS)


def _mixture_quantiles(counts: np.ndarray, weights: np.ndarray, q: list[float]) -> np.ndarray:
    """Quantiles of the model-averaged bootstrap distribution: each draw puts mass
    ``weights[d]`` (its probability that some label is wrong) on its channel's count and
    the rest on 0 (no label wrong). Its mean is the averaged point estimate; the quantiles
    of the averaged counts themselves would shrink to 0 wherever the evidence is weak in
    every draw and so hide how many errors the data cannot rule out."""
    values = np.concatenate([[0.0], counts])
    mass = np.concatenate([[float(np.sum(1.0 - weights))], weights]) / len(counts)
    order = np.argsort(values, kind="stable")
    cdf = np.cumsum(mass[order])
    at = np.searchsorted(cdf, np.asarray(q) - 1e-12, side="left")
    return values[order][np.minimum(at, len(values) - 1)]


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
    model = NoiseModel(
        t,
        tau,
        ll,
        posterior,
        labels,
        uniform_log_likelihood=_em_uniform(clean, labels, options),
    )
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
