"""Rank training examples by how likely their label is wrong, suggest the right label.

Every ranking below comes from ONE curvature fit (:class:`~infgate.influence.InfluenceScorer`)
and one sweep over the training data (:func:`infgate.detect.loo.approximate_loo`); none
retrains the model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from infgate.detect._inputs import example_ids
from infgate.detect.calibrate import (
    INTERVAL_WORK,
    CountInterval,
    NoiseModel,
    NoiseModelOptions,
    count_interval,
    fit_noise_model,
    rank_calibrated,
)
from infgate.detect.eval_influence import eval_loss_influence, eval_probabilities
from infgate.detect.filtered import FilteredModel, filtered_model
from infgate.detect.loo import LooOutputs, approximate_loo, sharded_approximate_loo
from infgate.detect.neighbour_posterior import EvaluationNeighbours
from infgate.detect.neighbours import neighbour_disagreement, penultimate_features
from infgate.detect.stats import rank_average
from infgate.detect.suggest import suggest_from_posterior
from infgate.errors import InvalidInputError
from infgate.influence import InfluenceScorer
from infgate.influence.batches import DatasetLike
from torch import nn

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "DEFAULT_METHOD",
    "LABEL_ERROR_COLUMNS",
    "RankingMethod",
    "find_label_errors",
    "ranking_scores",
]

log = logging.getLogger(__name__)

RankingMethod = Literal[
    "filtered_evidence",
    "filtered_auto",
    "filtered_channel",
    "filtered_margin",
    "filtered_neighbours",
    "filtered_loss",
    "consensus",
    "loo_margin",
    "loo_loss",
    "margin",
    "loss",
    "self_influence",
    "relatif",
    "grad_norm",
    "error_probability",
    "eval_influence",
]

#: the ranking ``find_label_errors`` (and so the scan, the flow and the CLI) uses by default.
DEFAULT_METHOD: RankingMethod = "filtered_evidence"

#: ``filtered_auto`` ranks through the fitted noise channel when the likelihood-ratio test of
#: uniform noise against it has a p-value below this (tabular development grid: never below
#: on the 48 uniform-noise runs, below in 12 of 16 class-conditional runs).
CHANNEL_TEST_LEVEL = 1e-3

LABEL_ERROR_COLUMNS = [
    "example_id",
    "score",
    "rank",
    "given_label",
    "predicted_label",
    "suggested_label",
    "suggestion_confidence",
    "is_suspect",
    "loo_given_probability",
    "self_influence",
    "error_probability",
    "eval_influence",
]

_EPS = 1e-12


#: below this p-value of the neighbour-distance test the evaluation-neighbour posterior is
#: not used (:meth:`NeighbourPosterior.exchangeability_p_value`)
NEIGHBOUR_SHIFT_ALPHA = 0.01

#: training rows (the first ones streamed) whose features set the neighbours' column scale
#: together with the evaluation rows' (:class:`NeighbourPosterior`'s ``x_scale``)
SCALE_ROWS = 2048

#: share of rows with leave-one-out leverage >= 1 above which a warning is logged
LEVERAGE_WARNING_RATE = 0.01
#: :func:`loo_in_sample_p_value` below this: the count does not stack the leave-one-out outputs.
LOO_IN_SAMPLE_ALPHA = 0.05


def _margin(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Normalized margin, flipped so higher = more suspicious: ``max_{c != y} p_c - p_y``."""
    idx = np.arange(len(labels))
    others = probs.copy()
    others[idx, labels] = -np.inf
    return others.max(axis=1) - probs[idx, labels]


def _wrong_log_odds(log_posterior: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log sum_{c != y} q_c - log q_y`` of an unnormalized log posterior ``log q``."""
    from scipy.special import logsumexp

    idx = np.arange(len(labels))
    others = log_posterior.copy()
    others[idx, labels] = -np.inf
    return logsumexp(others, axis=1) - log_posterior[idx, labels]


def _evidence_odds(filtered: np.ndarray, labels: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """Log odds that the given label is wrong when the filtered model's probabilities and
    the calibrated evaluation-neighbour posterior are two views of the clean label:
    the product of the two posteriors (their log probabilities added), renormalized."""
    log_q = np.log(np.clip(filtered, _EPS, 1.0)) + np.log(np.clip(evidence, _EPS, 1.0))
    return _wrong_log_odds(log_q, labels)


def _channel_odds(filtered: np.ndarray, labels: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """Log posterior odds that the given label is wrong, with the filtered model's
    probabilities ``f`` as the clean posterior and ``T`` as the channel:
    ``log sum_{c != y} f_c T[c, y] - log f_y T[y, y]`` (Bayes' rule of the noise model)."""
    idx = np.arange(len(labels))
    f = np.clip(filtered, _EPS, 1.0)
    own = f[idx, labels] * transition[labels, labels]
    other = (f * transition[:, labels].T).sum(axis=1) - own
    return np.log(np.maximum(other, 1e-300)) - np.log(np.maximum(own, 1e-300))


def channel_rule(noise: NoiseModel) -> Literal["channel", "margin"]:
    """What ``filtered_auto`` ranks by for this noise model: ``"channel"`` when the model is
    calibrated on labelled evaluation data AND rejects uniform noise
    (:attr:`NoiseModel.channel_p_value` < :data:`CHANNEL_TEST_LEVEL`), else ``"margin"``.

    Why only with evaluation data: the test compares channels at the model's estimate of the
    clean posterior, so a misfit posterior also "rejects" uniform noise; clean evaluation
    labels at least anchor its calibration. They do not make it safe on networks: the
    leave-one-out probabilities of a few-epoch network's training rows are misfit row by row
    (memorization), and 10%-uniform flips on a few-epoch 1-D CNN (weight decay 1e-4) gave
    p < 1e-15 on 5 of 5 seeds even calibrated on 300 clean evaluation rows (with the
    training labels alone p < 1e-10), the channel's ranking losing 0.05-0.20 AP against the
    filtered margin, while the same test on the evaluation rows themselves saw no channel
    (p = 1). That is why ``filtered_auto`` is not the default; use it for models fitted to
    convergence (softmax regression, small MLPs) with labelled evaluation data, where on the
    benchmark grid it never fired under uniform noise and lifted class-conditional AP by
    0.12-0.18 (``benchmarks/RESULTS.md``)."""
    if noise.calibration != "eval":
        return "margin"
    return "channel" if noise.channel_p_value < CHANNEL_TEST_LEVEL else "margin"


def ranking_scores(
    out: LooOutputs,
    method: RankingMethod,
    filtered: np.ndarray | None = None,
    *,
    noise: NoiseModel | None = None,
    eval_influence: np.ndarray | None = None,
    neighbours: np.ndarray | None = None,
    evidence: np.ndarray | None = None,
) -> np.ndarray:
    """The score of ``method`` for every example; higher = more likely mislabeled.

    * ``filtered_evidence`` (the default): with ``evidence`` (each training row's clean-label
      posterior from its nearest labelled evaluation rows, calibrated on those rows' own
      left-out votes; :class:`EvaluationNeighbours`), the log odds that the given label is
      wrong under the product of the filtered model's probabilities and that posterior:
      two views of the clean label, one the model's (which memorization and
      class-conditional noise bend towards the given label), one from rows no training
      touched and whose labels are taken as correct. A weak neighbour classifier is
      flattened by its calibration and adds little. Without ``evidence`` (no labelled
      evaluation data): ``filtered_margin``.

    * ``loss``: in-sample cross-entropy ``-log p_i[y_i]``.
    * ``margin``: in-sample normalized margin ``max_{c != y} p_c - p_y``.
    * ``loo_loss`` / ``loo_margin``: the same on the approximate leave-one-out
      probabilities (Newton step of Koh & Liang Sec. 2.1 with the leverage correction; see
      :mod:`infgate.detect.loo`); confident learning's self-confidence / normalized
      margin without K-fold retraining.
    * ``self_influence``: ``g_i^T (H + lambda I)^{-1} g_i`` (Koh & Liang Sec. 5.4).
    * ``relatif``: ``s_i / ||(H + lambda I)^{-1} g_i||`` (RelatIF, Barshan et al. 2020).
    * ``grad_norm``: ``||g_i||``.
    * ``filtered_margin`` / ``filtered_loss``: the same on the probabilities of the
      curvature-filtered model (``filtered``, from
      :func:`infgate.detect.filtered.filtered_probabilities`: linearized, inside its
      trust region).
    * ``filtered_channel``: the filtered model's probabilities taken as the clean posterior
      and passed through the noise model's channel (``noise``; its rows shrunk towards
      uniform, :meth:`~infgate.detect.calibrate.NoiseModel.shrunk_transition`): the log
      posterior odds that the given label is wrong. It knows which (true, given) class pairs
      the labels confuse.
    * ``filtered_auto``: ``filtered_channel`` when the noise model is
      calibrated on labelled evaluation data and rejects uniform noise (likelihood-ratio
      test, p < :data:`CHANNEL_TEST_LEVEL`; :func:`channel_rule`), else
      ``filtered_margin``. Without ``noise`` a noise model is fitted here on the
      leave-one-out probabilities (training-label calibration, so ``filtered_margin``).
    * ``filtered_neighbours``: mean normalized rank of ``filtered_margin`` and the share of
      the example's 10 nearest neighbours in the model's penultimate representation that
      carry another label (``neighbours``, :mod:`infgate.detect.neighbours`).
    * ``consensus``: mean normalized rank of ``margin``, ``loo_margin`` and ``grad_norm``.
    * ``error_probability``: the noise model's posterior probability that the given label
      is wrong (``noise``, :mod:`infgate.detect.calibrate`).
    * ``eval_influence``: ``(1/m) sum_j I_up,loss(i, j)`` over labelled evaluation data
      (``eval_influence``, :mod:`infgate.detect.eval_influence`).
    """
    labels = out.labels
    idx = np.arange(len(labels))
    if method == "loss":
        return -np.log(np.clip(out.probs[idx, labels], _EPS, 1.0))
    if method == "margin":
        return _margin(out.probs, labels)
    if method == "loo_loss":
        return -np.log(np.clip(out.loo_probs[idx, labels], _EPS, 1.0))
    if method == "loo_margin":
        return _margin(out.loo_probs, labels)
    if method == "self_influence":
        return out.self_influence
    if method == "relatif":
        return out.self_influence / np.maximum(out.solved_norm, _EPS)
    if method == "grad_norm":
        return out.grad_norm
    if method == "filtered_neighbours":
        if filtered is None or neighbours is None:
            raise InvalidInputError(
                f"method={method!r} needs the filtered probabilities and neighbour disagreement"
            )
        return rank_average(_margin(filtered, labels), neighbours)
    if method in ("filtered_auto", "filtered_channel"):
        if filtered is None:
            raise InvalidInputError(f"method={method!r} needs the filtered model's probabilities")
        if noise is None:
            noise = fit_noise_model(out.loo_probs, labels)
        if method == "filtered_auto" and channel_rule(noise) == "margin":
            return _margin(filtered, labels)
        return _channel_odds(filtered, labels, noise.shrunk_transition())
    if method == "filtered_evidence":
        if filtered is None:
            raise InvalidInputError(f"method={method!r} needs the filtered model's probabilities")
        if evidence is None:
            return _margin(filtered, labels)
        return _evidence_odds(filtered, labels, evidence)
    if method in ("filtered_margin", "filtered_loss"):
        if filtered is None:
            raise InvalidInputError(f"method={method!r} needs the filtered model's probabilities")
        if method == "filtered_margin":
            return _margin(filtered, labels)
        return -np.log(np.clip(filtered[idx, labels], _EPS, 1.0))
    if method == "error_probability":
        if noise is None:
            raise InvalidInputError(f"method={method!r} needs the fitted noise model")
        return noise.error_probability
    if method == "eval_influence":
        if eval_influence is None:
            raise InvalidInputError(
                f"method={method!r} needs labelled evaluation data: pass eval_data="
            )
        return eval_influence
    if method == "consensus":
        return rank_average(
            _margin(out.probs, labels), _margin(out.loo_probs, labels), out.grad_norm
        )
    raise InvalidInputError(
        f"method must be one of {list(get_args(RankingMethod))}, got {method!r}"
    )


def find_label_errors(
    model: nn.Module,
    train: DatasetLike,
    *,
    method: RankingMethod = DEFAULT_METHOD,
    damping: float | None = None,
    scorer: InfluenceScorer | None = None,
    influence_method: str = "auto",
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: bool = True,
    backend_options: dict[str, Any] | None = None,
    shard_size: int | None = None,
    client: Client | None = None,
    eval_data: Any = None,
    noise_options: NoiseModelOptions | None = None,
    loo: LooOutputs | None = None,
    pad_token_id: int | None = None,
) -> pd.DataFrame:
    """Rank every training example by how likely its label is wrong.

    The default, ``method="filtered_evidence"`` (:data:`DEFAULT_METHOD`), combines two views
    of each row's clean label when labelled evaluation data is given: the
    curvature-filtered model below, and the row's nearest labelled evaluation rows, whose
    votes are calibrated on the evaluation rows' own left-out votes
    (:class:`~infgate.detect.neighbour_posterior.EvaluationNeighbours`). The score is the
    log odds that the given label is wrong under the product of the two posteriors. The
    evaluation rows see what the fitted model cannot: a flip it memorized, or a
    class-conditional confusion it learned as if it were the truth. A weak neighbour vote
    is flattened by its calibration and leaves the model's ranking. Not used when the
    evaluation labels are declared noisy (``NoiseModelOptions(calibration="train")``), are
    fewer than 30, or the training rows sit farther from them than they sit from each
    other (``df.attrs["ranking_rule"]`` says ``"evidence"`` or ``"margin"``). Chosen on the
    development data below; on the held-out grid of ``benchmarks/bench_label_errors.py``
    (``benchmarks/RESULTS.md``, "The default ranking with evaluation data") mean AP against
    the filtered margin: softmax regression 0.772 / 0.737, MLP 0.752 / 0.644, and on the
    networks (seeds 0-2) ResNet-style CNN 0.977 / 0.611, transformer 0.994 / 0.940, 1-D CNN
    1.000 / 0.996.

    Without evaluation data the default is ``filtered_margin``: the normalized
    margin ``max_{c != y} p'_c - p'_y`` under the curvature-filtered model
    (:func:`infgate.detect.filtered.filtered_model`): one Newton step towards a stronger
    ridge penalty ``lambda' = mean eigenvalue of H``, computed with the curvature already
    fitted for influence, which shrinks exactly the low-curvature directions that
    high-self-influence (memorized) examples live in. The filtered model is evaluated in
    the model's linearization at the fitted parameters (exact for softmax regression) and,
    on a network, only as far along the step as that linearization agrees with the
    network's own outputs (a label-free trust region; ``df.attrs["filter_step_fraction"]``
    says how far). Why not plain self-influence: ``g^T H^-1 g`` also rewards
    high-leverage, correctly labelled points. Why not the loss: a model partly memorizes
    its label errors, so their in-sample loss is small; the filtered model has forgotten
    what only a few examples taught it.

    Chosen on development data only: the tabular development split of
    ``benchmarks/bench_label_errors.py`` (digits, breast_cancer, spam7, wine; softmax
    regression and a 32-unit MLP; 10% uniform and 20% class-conditional flips; seeds 0-2)
    and development seeds 100-101 of ``benchmarks/bench_network_ranking.py`` (ResNet-style
    CNN, 1-D CNN, transformer; 10% uniform flips). Mean AP there, strength 1 (chosen)
    against 0.1 (before) and the in-sample loss: softmax 0.837 / 0.819 / 0.807, MLP 0.784 /
    0.758 / 0.749, CNN 0.903 / 0.917 / 0.883, 1-D CNN 0.974 / 0.978 / 0.972, few-epoch
    transformer 0.726 / 0.464 / 0.474 (strength 0.1 does not filter at all there: it is
    below the damping). The full step run through the network (the method before the trust
    region) had AP 0.58 on the 1-D CNN where the loss had 0.96. Reported on held-out data
    (``benchmarks/RESULTS.md``, "Label-error ranking on networks"): on seeds 0-4 of the
    reduced-size networks, mean AP default / loss / self-influence: CNN 0.917 / 0.916 /
    0.918, 1-D CNN few-epoch 0.960 / 0.951 / 0.944 and converged 0.996 / 0.989 / 0.990,
    few-epoch transformer 0.648 / 0.369 / 0.324; on the held-out tabular datasets (biopsy,
    penguins, pima, oj) it beats the loss 12-11 (softmax regression, 0.725 vs 0.717) and
    22-2 (MLP, 0.645 vs 0.581). Where a network has memorized every flip (the transformer
    trained to convergence) no ranking from the fitted model finds them (default 0.326,
    loss 0.336).

    Args:
        model: trained classifier returning logits (eval mode).
        train: its training data (``TrainingData``, ``(features, labels)`` or a torch
            Dataset of ``(x, y)``).
        method: ranking; see :func:`ranking_scores`. Higher score = more likely mislabeled.
        damping: lambda for the curvature; pass the weight decay the model was trained with
            (then ``H + lambda I`` is the Hessian of the training objective). With a
            ``scorer`` it must match the scorer's damping (or be ``None``).
        scorer: an already fitted :class:`InfluenceScorer` on ``train`` (reuses its curvature).
        influence_method: curvature back-end when ``scorer`` is not given.
        batch_size: examples per streamed batch.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        progress: show progress bars.
        backend_options: passed to the curvature back-end.
        shard_size: compute the per-example sweep (the leave-one-out outputs, the costly
            part) in shards of this many rows, on ``client``'s Dask workers when given
            (the fitted curvature is sent to each worker once). ``None`` = one sweep here.
        client: a ``dask.distributed`` client for the shards.
        eval_data: optional labelled evaluation data (``EvalData`` with labels or a
            ``(features, labels)`` pair): adds the ``eval_influence`` column, each training
            example's mean ``I_up,loss`` on it, from ONE extra solve with the fitted
            curvature (:func:`infgate.detect.eval_influence.eval_loss_influence`), and
            (``noise_options.calibration`` ``"auto"``, the default, from 30 rows; or
            ``"eval"``) calibrates the noise model's clean posterior on it: its labels are
            taken as correct, the model's outputs on it are out-of-sample, and a
            vector-scaling map fitted there replaces the temperature fitted on the noisy
            training labels (``benchmarks/RESULTS.md``, "Calibrated flagged set": counts
            within +-25% in 0.81 of development runs against 0.58 without, clean data
            flagged 0.1% against 0.9%, class-conditional counts 0.98x against 0.57x).
            Evaluation labels with the training data's own noise make the count fall
            short: pass ``NoiseModelOptions(calibration="train")`` for them. The clean
            posterior of the training rows behind the count, the error probabilities and
            the suggestions then uses the votes of their nearest evaluation rows
            (:mod:`infgate.detect.neighbour_posterior`; ``NoiseModelOptions(posterior=)``):
            stacked with the model's leave-one-out outputs in one map fitted on the
            evaluation rows where those outputs look out-of-sample
            (:func:`loo_in_sample_p_value`: softmax regression, a small MLP), the votes
            alone where they do not (a network that memorized its flips gets them wrong).
        noise_options: how the label-noise model behind ``is_suspect`` and the suggestion
            confidence is fitted (:class:`infgate.detect.calibrate.NoiseModelOptions`).
        loo: the scorer's leave-one-out outputs for EVERY training row, already computed
            (:func:`~infgate.detect.loo.approximate_loo`): the sweep is skipped and the
            same outputs can serve the mismatch test (the scan does this).
        pad_token_id: the id token sequences are padded with (default: the streamed
            data's column plan, else none); the evaluation-neighbour posterior's bag of
            tokens leaves it out.

    Returns:
        One row per training example, most suspicious first, with columns
        ``example_id, score, rank`` (1 = most suspicious), ``given_label``,
        ``predicted_label`` (in-sample argmax), ``is_suspect`` (the top ``n_est`` rows,
        ``n_est`` = the expected number of wrong labels under the fitted noise model,
        ``round(sum_i error_probability_i)``, :mod:`infgate.detect.calibrate`),
        ``suggested_label`` and ``suggestion_confidence`` (for a suspect: the most probable
        OTHER class and the probability that it is the true label: the noise model's
        error probability made monotone in the ranking score
        (:func:`infgate.detect.calibrate.rank_calibrated`) times the posterior's share of
        that class among the other classes; for other rows the most probable class, usually
        the given label; see :func:`infgate.detect.suggest.suggest_from_posterior`),
        ``loo_given_probability``,
        ``self_influence``, ``error_probability`` (posterior probability that the given
        label is wrong) and ``eval_influence`` (mean ``I_up,loss`` on ``eval_data``; NaN
        without it). ``df.attrs`` holds ``n_estimated_errors``, ``expected_errors`` (the
        unrounded sum), ``expected_errors_interval`` (``[lower, upper]``, the count's
        bootstrap interval at ``expected_errors_interval_level``,
        :func:`infgate.detect.calibrate.count_interval`; ``None`` without the evaluation
        calibration), ``method``, ``damping``, ``noise_temperature`` and
        ``noise_transition`` (``T[c][j] = P(given j | true c)``), ``noise_calibration``
        (``"eval"`` or ``"train"``), ``noise_calibration_rows``, ``noise_probability``
        (posterior probability that any label is wrong against none; 1.0 with the
        training-label calibration), ``loo_leverage_violation_rate`` (share of rows whose
        leave-one-out leverage is 1 or more, :attr:`LooOutputs.leverage`: their count and
        confidence are unreliable; logged as a warning above 1%),
        ``noise_posterior`` (``"model"``, ``"neighbours"`` or ``"both"``: which clean
        posterior the count used; ``NoiseModelOptions(posterior=)``),
        ``neighbour_accuracy`` (when the evaluation neighbours were consulted,
        by the count or the ranking: the share of evaluation rows their left-out
        neighbours' vote gets right; ``None`` otherwise), ``ranking_rule`` (what the
        ranking was: ``"evidence"`` or ``"margin"`` for the default, ``"channel"`` or
        ``"margin"`` for ``filtered_auto``, else the method),
        ``noise_diagonal_margin`` (:attr:`NoiseModel.diagonal_margin`; at 0
        or below the channel is not identifiable, the count is not an estimate and a warning is
        logged) and, for the filtered
        rankings, ``filter_step_fraction`` (how far along the filter step the trust region
        let the ranking go; 1 = all of it, 0 = none).

    Raises:
        InvalidInputError: unknown ``method``, labels the model cannot output, empty data,
            non-finite features, a non-cross-entropy scorer, a ``damping`` that differs
            from the given scorer's, ``method="eval_influence"`` without ``eval_data``,
            unlabelled ``eval_data``, ``loo`` of another length than the training data.
        DatasetMismatchError: ``eval_data`` rows of the wrong shape.
    """
    if method not in get_args(RankingMethod):
        raise InvalidInputError(
            f"method must be one of {list(get_args(RankingMethod))}, got {method!r}"
        )
    if method == "eval_influence" and eval_data is None:
        raise InvalidInputError(
            "method='eval_influence' needs labelled evaluation data: pass eval_data="
        )
    if scorer is None:
        scorer = InfluenceScorer(
            model,
            train,
            method=influence_method,
            damping=damping,
            batch_size=batch_size,
            device=device,
            progress=progress,
            backend_options=backend_options,
        )
    else:
        if len(scorer.train) != len(scorer.batches(train, what="train")):
            raise InvalidInputError(
                f"scorer was fitted on {len(scorer.train):,} examples but train has "
                f"{len(scorer.batches(train, what='train')):,}"
            )
        fitted = float(scorer.backend.damping)
        if damping is not None and not np.isclose(damping, fitted, rtol=1e-9, atol=0.0):
            raise InvalidInputError(
                f"damping={damping!r} but the scorer was fitted with damping {fitted:.6g}; "
                f"fit the scorer with InfluenceScorer(..., damping={damping!r}) or pass "
                "damping=None"
            )
    if loo is not None:
        if len(loo.labels) != len(scorer.train):
            raise InvalidInputError(
                f"loo has {len(loo.labels):,} rows but the training data has "
                f"{len(scorer.train):,}: pass the outputs of approximate_loo(scorer)"
            )
        out = loo
    elif shard_size is None and client is None:
        out = approximate_loo(scorer)
    else:
        n = len(scorer.train)
        out = sharded_approximate_loo(scorer, shard_size=shard_size or n, client=client)
    fm = filtered_model(scorer) if method.startswith("filtered") else None
    ev = None if eval_data is None else eval_loss_influence(scorer, eval_data)
    nb = None
    if method == "filtered_neighbours":
        nb = neighbour_disagreement(penultimate_features(model, scorer.train), out.labels)
    reference = None if eval_data is None else eval_probabilities(scorer, eval_data)
    noise = fit_noise_model(out.loo_probs, out.labels, options=noise_options, reference=reference)
    opts = noise_options or NoiseModelOptions()
    neighbours = None
    if method == "filtered_evidence" or opts.posterior != "model":
        neighbours = _evaluation_neighbours(
            model, scorer, train, eval_data, noise, out.loo_probs.shape[1], pad_token_id
        )
    count, interval = _count_noise(noise, out, opts, neighbours, reference, progress)
    evidence = None
    if method == "filtered_evidence" and neighbours is not None:
        evidence = neighbours.calibrated(
            bias_penalty=opts.bias_penalty, beta_penalty=opts.beta_penalty
        )
    if out.leverage_violation_rate > LEVERAGE_WARNING_RATE and count.source != "neighbours":
        log.warning(
            "leave-one-out leverage is 1 or more for %.0f%% of the rows with back-end %r: the "
            "fitted curvature under-represents their own directions, so their leave-one-out "
            "probabilities, and the suspect count and confidence built on them, are not to be "
            "trusted (the ranking does not use them); an exact back-end (method='exact', "
            "params= a subset that fits) does not have this (benchmarks/RESULTS.md, "
            "'Leave-one-out damping on networks')",
            100 * out.leverage_violation_rate,
            scorer.backend.name,
        )
    if count.diagonal_margin <= 0.0:
        log.warning(
            "the fitted label-noise channel is not diagonally dominant (margin %.3g): it says "
            "some class is more often mislabelled than labelled, which a model this weak on "
            "its own training rows (or leave-one-out steps the curvature overshoots) cannot "
            "tell from its own errors; the suspect count (%.0f of %d rows) is not an estimate "
            "of the label errors and the flagged set is not to be trusted (the ranking is "
            "unaffected). Check the model's evaluation accuracy, and pass the training run's "
            "weight decay as damping",
            count.diagonal_margin,
            count.expected_errors,
            len(out.labels),
        )
    ids = example_ids(train, len(out.labels))
    df = _compute_frame(out, method, fm, ids, scorer, noise, ev, nb, count=count, evidence=evidence)
    df.attrs["expected_errors_interval"] = (
        None if interval is None else [interval.lower, interval.upper]
    )
    df.attrs["expected_errors_interval_level"] = None if interval is None else interval.level
    df.attrs["expected_errors_interval_draws"] = None if interval is None else interval.draws
    if neighbours is not None:  # how sharp the evaluation neighbours are, whoever used them
        df.attrs["neighbour_accuracy"] = neighbours.accuracy
    return df


def _evaluation_neighbours(
    model: nn.Module,
    scorer: InfluenceScorer,
    train: Any,
    eval_data: Any,
    noise: NoiseModel,
    n_classes: int,
    pad_token_id: int | None,
) -> EvaluationNeighbours | None:
    """The training rows' votes among their nearest labelled evaluation rows
    (:mod:`infgate.detect.neighbour_posterior`), or ``None`` when the noise model is not
    calibrated on labelled evaluation data (none given, fewer than its minimum rows, or
    ``calibration="train"``: labels not to be trusted) or when the training rows sit
    farther from the evaluation rows than these sit from each other (a warning says so)."""
    from infgate.detect.eval_influence import _parse
    from infgate.detect.neighbour_posterior import NeighbourPosterior

    if noise.calibration != "eval":
        return None
    x_eval, y_eval = _parse(scorer, eval_data)
    assert y_eval is not None  # the evaluation calibration ran on its labels
    plan = getattr(train, "plan", None)  # streamed data knows how its tokens were padded
    if pad_token_id is None and plan is not None:
        pad_token_id = plan.pad_token_id
    n_inputs = int(getattr(model, "k", 1)) if type(model).__name__ == "SplitInputs" else 1
    sample, rows = [], 0
    for _, x, _ in scorer.train:  # the first batches of training rows set the scale too
        sample.append(x.cpu())
        rows += len(x)
        if rows >= SCALE_ROWS:
            break
    voters = NeighbourPosterior(
        x_eval,
        y_eval.cpu().numpy(),
        n_classes,
        pad_token_id=pad_token_id,
        n_inputs=n_inputs,
        x_scale=torch.cat(sample)[:SCALE_ROWS] if sample else None,
    )
    train_votes, eval_votes, p_value = voters.stream(scorer.train)
    if p_value < NEIGHBOUR_SHIFT_ALPHA:
        log.warning(
            "the training rows sit farther from the labelled evaluation rows than these do "
            "from each other (neighbour distances, p = %.2g): the evaluation rows' votes "
            "cannot calibrate the training rows', so neither the ranking nor the suspect "
            "count uses them (the count falls back to the model's leave-one-out posterior, "
            "which a memorizing network gets wrong); evaluation rows drawn like the training "
            "rows (a random split) avoid this",
            p_value,
        )
        return None
    labels = y_eval.cpu().numpy().astype(np.int64)
    return EvaluationNeighbours(train_votes, eval_votes, labels, voters.k, p_value)


def loo_in_sample_p_value(out: LooOutputs, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """p-value that the leave-one-out outputs are NOT out-of-sample outputs of rows drawn like
    the evaluation rows: the smaller of two tests (each at half the level, Bonferroni), so
    ``2 min(p_1, p_2)`` capped at 1.

    1. Their confidence (the top probability, which does not depend on any label) is
       distributed like the model's confidence on the evaluation rows (Mann-Whitney,
       two-sided): a network whose leave-one-out step does not undo what it memorized is
       sharper on its training rows, one whose step overshoots is flatter.
    2. They agree with the training labels no more often than the model's outputs agree
       with the evaluation labels (Fisher's exact test, one-sided): out-of-sample outputs
       agree at most as often, less with label errors among the training labels.
    """
    from scipy.stats import fisher_exact, mannwhitneyu

    probs, labels = np.asarray(reference[0]), np.asarray(reference[1])
    agree = int((out.loo_probs.argmax(axis=1) == out.labels).sum())
    right = int((probs.argmax(axis=1) == labels).sum())
    n, m = len(out.labels), len(labels)
    table = [[agree, n - agree], [right, m - right]]
    p_agree = float(fisher_exact(table, alternative="greater").pvalue)
    p_sharp = float(mannwhitneyu(out.loo_probs.max(axis=1), probs.max(axis=1)).pvalue)
    return min(1.0, 2.0 * min(p_agree, p_sharp))


def _count_posterior(
    options: NoiseModelOptions,
    out: LooOutputs,
    reference: tuple[np.ndarray, np.ndarray] | None,
) -> str:
    """``options.posterior`` with ``"auto"`` resolved: ``"both"`` (the model's leave-one-out
    outputs and the evaluation neighbours' votes, stacked) unless the leave-one-out outputs
    are not to be trusted as out-of-sample (leverage of 1 or more on over 1% of the rows, or
    :func:`loo_in_sample_p_value` below ``LOO_IN_SAMPLE_ALPHA``), then ``"neighbours"``."""
    if options.posterior != "auto":
        return options.posterior
    if reference is None or out.leverage_violation_rate > LEVERAGE_WARNING_RATE:
        return "neighbours"
    p_value = loo_in_sample_p_value(out, reference)
    if p_value < LOO_IN_SAMPLE_ALPHA:
        log.info(
            "the leave-one-out outputs do not look like out-of-sample outputs (their "
            "confidence or their agreement with the given labels differs from the model's on "
            "the evaluation rows, p = %.2g): the count uses the evaluation neighbours' votes "
            "alone",
            p_value,
        )
        return "neighbours"
    return "both"


# the views of the training rows, the same views of the evaluation rows, their labels
_Views = tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], np.ndarray]


def _count_noise(
    noise: NoiseModel,
    out: LooOutputs,
    options: NoiseModelOptions | None,
    neighbours: EvaluationNeighbours | None,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = False,
) -> tuple[NoiseModel, CountInterval | None]:
    """The noise model behind the count, the error probabilities and the suggestions:
    ``noise`` (on the model's leave-one-out probabilities), or, with the evaluation
    neighbours, the channel fitted on the training rows' evaluation-neighbour posterior
    (:mod:`infgate.detect.neighbour_posterior`), alone or stacked with the model's
    leave-one-out outputs (``options.posterior``, :func:`_count_posterior`); and the
    count's bootstrap interval (:func:`~infgate.detect.calibrate.count_interval`), ``None``
    without the evaluation calibration or with ``options.interval_draws == 0``."""
    options = options or NoiseModelOptions()
    if neighbours is None or options.posterior == "model":
        views: _Views | None = None
        if reference is not None and noise.calibration == "eval":
            views = ((out.loo_probs,), (reference[0],), reference[1])
        return noise, _interval(noise, views, options, progress)
    posterior = _count_posterior(options, out, reference)
    if posterior == "both":
        assert reference is not None  # the evaluation calibration ran on it
        count = fit_noise_model(
            out.loo_probs,
            out.labels,
            options=options,
            reference=reference,
            second_view=(neighbours.train_votes, neighbours.eval_votes),
        )
        views = (
            (out.loo_probs, neighbours.train_votes),
            (reference[0], neighbours.eval_votes),
            reference[1],
        )
    else:
        count = fit_noise_model(
            neighbours.train_votes,
            out.labels,
            options=options,
            reference=(neighbours.eval_votes, neighbours.eval_labels),
        )
        views = ((neighbours.train_votes,), (neighbours.eval_votes,), neighbours.eval_labels)
    interval = _interval(count, views, options, progress)
    log.info(
        "suspect count from the %s posterior (%d neighbours of %d labelled evaluation rows): "
        "%.1f expected errors%s (the model's leave-one-out posterior alone: %.1f)",
        "stacked model-and-neighbour" if posterior == "both" else "evaluation-neighbour",
        neighbours.k,
        len(neighbours.eval_labels),
        count.expected_errors,
        ""
        if interval is None
        else f", {interval.level:.0%} interval {interval.lower}-{interval.upper}",
        noise.expected_errors,
    )
    count = dataclasses.replace(count, source=posterior, source_accuracy=neighbours.accuracy)
    return count, interval


def _interval(
    model: NoiseModel,
    views: _Views | None,
    options: NoiseModelOptions,
    progress: bool,
) -> CountInterval | None:
    """The count's bootstrap interval, with at most ``options.interval_draws`` draws (fewer
    on large data: ``INTERVAL_WORK`` rows x classes x draws, never under 50)."""
    if views is None or options.interval_draws == 0 or model.calibration != "eval":
        return None
    n, k = model.posterior.shape
    draws = min(options.interval_draws, max(50, int(INTERVAL_WORK / (n * k))))
    return count_interval(
        model,
        *views,
        options=options,
        level=options.interval_level,
        draws=draws,
        progress=progress,
    )


def _ranking_rule(method: str, noise: NoiseModel, evidence: np.ndarray | None) -> str:
    """What the ranking actually was: ``filtered_auto`` and ``filtered_evidence`` choose."""
    if method == "filtered_auto":
        return channel_rule(noise)
    if method == "filtered_evidence":
        return "evidence" if evidence is not None else "margin"
    return method


def _compute_frame(
    out: LooOutputs,
    method: RankingMethod,
    fm: FilteredModel | None,
    ids: np.ndarray,
    scorer: InfluenceScorer,
    noise: NoiseModel,
    ev: np.ndarray | None,
    nb: np.ndarray | None = None,
    *,
    count: NoiseModel | None = None,
    evidence: np.ndarray | None = None,
) -> pd.DataFrame:
    filtered = None if fm is None else fm.probs
    scores = ranking_scores(
        out, method, filtered, noise=noise, eval_influence=ev, neighbours=nb, evidence=evidence
    )
    ranking_noise, noise = noise, count if count is not None else noise
    n = len(scores)
    n_est = int(np.clip(round(noise.expected_errors), 0, n))
    order = np.argsort(-scores, kind="stable")
    suspect = np.zeros(n, dtype=bool)
    suspect[order[:n_est]] = True
    wrong = rank_calibrated(scores, noise.error_probability)
    suggested, confidence = suggest_from_posterior(noise.posterior, out.labels, suspect, wrong)
    idx = np.arange(n)
    df = (
        pd.DataFrame(
            {
                "example_id": ids,
                "score": scores,
                "rank": np.zeros(n, dtype=np.int64),
                "given_label": out.labels,
                "predicted_label": out.probs.argmax(axis=1).astype(np.int64),
                "suggested_label": suggested,
                "suggestion_confidence": confidence,
                "is_suspect": suspect,
                "loo_given_probability": out.loo_probs[idx, out.labels],
                "self_influence": out.self_influence,
                "error_probability": noise.error_probability,
                "eval_influence": np.full(n, np.nan) if ev is None else ev,
            }
        )
        .iloc[order]
        .reset_index(drop=True)
    )
    df["rank"] = np.arange(1, n + 1)
    df = df[LABEL_ERROR_COLUMNS].copy()
    df.attrs.update(
        {
            "n_estimated_errors": n_est,
            "expected_errors": noise.expected_errors,
            "method": method,
            "damping": scorer.backend.damping,
            "noise_temperature": noise.temperature,
            "noise_transition": noise.transition.round(6).tolist(),
            "noise_calibration": noise.calibration,
            "noise_calibration_rows": 0 if noise.scaling is None else noise.scaling.n_rows,
            "noise_probability": noise.noise_probability,
            "loo_leverage_violation_rate": out.leverage_violation_rate,
            "noise_diagonal_margin": noise.diagonal_margin,
            "filter_step_fraction": None if fm is None else fm.step_fraction,
            "channel_p_value": noise.channel_p_value,
            "noise_posterior": noise.source,
            "neighbour_accuracy": noise.source_accuracy,
            "ranking_rule": _ranking_rule(method, ranking_noise, evidence),
        }
    )
    log.info("ranked %d examples by %s; %d estimated label errors", n, method, n_est)
    return df
