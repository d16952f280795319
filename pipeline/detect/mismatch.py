"""Domain mismatch between training and evaluation data, with valid p-values.

Two questions, both answered without evaluation labels:

* Dataset level: are the evaluation rows drawn like the training rows? Gaussian-kernel MMD
  permutation tests (Gretton et al. 2012) on up to three representations, each at five
  kernel widths, combined into one exact permutation p-value by max-T over the same
  relabelings (:mod:`infgate.detect.mmd_aggregate`):

  - ``mmd_features``: the flattened input features; integer inputs (token ids) as their
    bag of tokens (each id's share of the row, ids folded modulo 1024);
  - ``mmd_random_features``: the penultimate representation (the input of the last
    ``nn.Linear`` the forward pass calls; the logits if it calls none) of a copy of the
    model's architecture with freshly initialised weights drawn from ``seed``: a
    data-independent nonlinear embedding in the spirit of the untrained-autoencoder
    reduction of Rabanser et al. 2019 ("Failing loudly"), which sees what the
    architecture sees (token embeddings, convolutions) without having been fitted;
  - ``mmd_outputs``: the trained model's softmax outputs, only where the reference side's
    outputs can be trusted to be distributed like outputs on fresh rows (below).

  Every representation is standardized with the pooled (reference + evaluation) mean and
  standard deviation and the kernel widths are 1/4, 1/2, 1, 2 and 4 times the pooled median
  distance: functions of the pooled multiset, so the permutation p-value keeps its exact
  validity.
* Example level: how unusual is each evaluation row? Split-conformal p-values of a
  strangeness score against calibration rows, then Benjamini-Hochberg (valid for conformal
  p-values, Bates et al. 2023). The score is the label-free influence-space score
  ``E_{y ~ p(.|x)}[g_y^T (H + lambda I)^{-1} g_y] = tr(L(x) M(x))`` (``L = diag(p) - p
  p^T``, ``M = J (H + lambda I)^{-1} J^T``) where the reference is trusted, otherwise the
  mean distance to the 5 nearest of half the reference rows in the joint (inputs, random
  features) space, calibrated on the other half.

Validity (what is exact and what is approximate). The model was fitted to its training
rows, so its outputs on them are NOT exchangeable with its outputs on fresh rows: a network
that memorises is more confident on its training rows, and the trained penultimate
representation is biased the same way. Hence:

* With ``reference=`` (rows the model never trained on, e.g. a validation split) every test
  and every p-value is exactly valid (finite sample, any model).
* Without it, ``mmd_features`` and ``mmd_random_features`` compare a random subsample of
  training rows with the evaluation rows through functions that do not depend on the
  training data: exactly valid for any model (training and evaluation rows are i.i.d.
  under the null). The kNN conformal p-values are exactly valid for the same reason.
* The output test and the influence-score p-values need what the model would output on a
  training row had it not seen it; :mod:`infgate.detect.loo` approximates that by one
  leverage-corrected Newton step. That approximate leave-one-out (ALO) is accurate for
  regularized generalized linear models (Rad & Maleki 2020: softmax regression here, error
  about 1e-3 in probability) but has no such guarantee for a network whose features move
  when a row is removed: a few-epoch Adam CNN's ALO outputs stayed more confident than its
  outputs on fresh rows and the output test rejected on same-distribution data (p = 0.004).
  So without ``reference=`` the output test is used only when the model is a GLM in its
  trainable parameters (they all belong to one ``nn.Linear``; what feeds it has no
  trainable parameters) or when ``loo_outputs=True`` forces it (then it is approximate,
  and says so); otherwise it is skipped and ``MismatchReport.method`` says why. A model
  whose frozen backbone was trained on these same rows passes the GLM rule but is biased:
  pass ``reference=`` or ``loo_outputs=False`` for it.

Streaming. The detector reads the training data once through the scorer's batches, keeps a
random subsample of at most ``max_reference`` rows (plus every row's label for the
drivers) and never holds all features. Leave-one-out outputs already computed for every
row (the label-error ranking's sweep) are accepted as ``loo=`` instead of a second sweep.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from infgate.detect._inputs import example_ids, parse_eval
from infgate.detect.drivers import mismatch_drivers
from infgate.detect.expected_influence import probs_and_expected_influence
from infgate.detect.knn_conformal import KNN, KnnStrangeness
from infgate.detect.loo import LooOutputs, _sweep, leverage_backend
from infgate.detect.mismatch_report import MismatchReport
from infgate.detect.mmd_aggregate import WIDTH_MULTIPLIERS, combined_mmd_test
from infgate.detect.output_validity import glm_reason
from infgate.detect.representations import (
    batched_apply,
    input_features,
    last_linear_inputs,
    pooled_standardized,
    random_twin,
)
from infgate.detect.stats import benjamini_hochberg, conformal_p_values
from infgate.errors import InvalidInputError
from infgate.influence import InfluenceScorer
from infgate.influence.batches import BatchSource, DatasetLike
from infgate.influence.gradients import model_logits
from torch import nn

__all__ = ["MismatchDetector", "MismatchReport", "detect_mismatch", "glm_reason", "random_twin"]

log = logging.getLogger(__name__)

# The old private names, for callers that imported them from here.
_last_linear_inputs = last_linear_inputs
_pooled_standardized = pooled_standardized


class MismatchDetector:
    """Fits the training side once; :meth:`test` then checks any number of batches.

    Args:
        model: trained classifier returning logits (eval mode).
        train: its training data (read once, in the scorer's batches; only a random
            subsample of ``max_reference`` rows' features is kept).
        reference: features of rows the model never trained on (optional; makes every
            p-value exactly valid). ``None`` = a random subsample of training rows.
        damping: lambda for the curvature (pass the model's weight decay when known).
        scorer: a fitted :class:`InfluenceScorer` on ``train`` to reuse.
        max_reference: at most this many reference rows enter the MMD tests and the
            conformal calibration (random subset).
        n_permutations: permutations per MMD test.
        groups: one group label per training row for ``driver_groups`` (default: labels).
        seed: seeds the subsampling, the permutations and the random-feature twin.
        progress: show progress bars.
        loo: leave-one-out outputs already computed for EVERY training row, in dataset
            order (e.g. by the label-error ranking's sweep); the detector takes its
            subsample's rows from it instead of sweeping again. Used only where the output
            test runs (below).
        loo_outputs: without ``reference``, whether the output-space test and the influence
            score's conformal p-values use approximate leave-one-out outputs of training
            rows: ``None`` (default) = only when the model is a GLM in its parameters
            (:func:`glm_reason`); ``True`` = always (approximate for networks; the report
            says so); ``False`` = never (only exactly valid tests).
        pad_token_id: the id token sequences are padded with, left out of the bag of
            tokens (default: the streamed data's column plan, else none).
        n_inputs: model inputs stacked per row (``(n_inputs, L)``: ids, attention mask...);
            the bag is of the first (default: the column plan's, else 1).

    Raises:
        InvalidInputError: ``max_reference < 10``, ``n_permutations < 19``, ``groups`` or
            ``loo`` of another length than the training data.
    """

    def __init__(
        self,
        model: nn.Module,
        train: DatasetLike,
        *,
        reference: Any = None,
        damping: float | None = None,
        scorer: InfluenceScorer | None = None,
        max_reference: int = 1000,
        n_permutations: int = 500,
        groups: np.ndarray | None = None,
        seed: int = 0,
        progress: bool = False,
        loo: LooOutputs | None = None,
        loo_outputs: bool | None = None,
        pad_token_id: int | None = None,
        n_inputs: int | None = None,
    ) -> None:
        if max_reference < 10 or n_permutations < 19:
            raise InvalidInputError(
                f"need max_reference >= 10 and n_permutations >= 19, got {max_reference} and "
                f"{n_permutations}"
            )
        self._scorer = scorer
        self._scorer_args = (train, damping, progress)
        plan = getattr(train, "plan", None)  # streamed data knows how its tokens were padded
        if pad_token_id is None and plan is not None:
            pad_token_id = plan.pad_token_id
        if n_inputs is None:
            n_inputs = plan.n_inputs if plan is not None else 1
        self._tokens: dict[str, Any] = {"pad_token_id": pad_token_id, "n_inputs": int(n_inputs)}
        self.model = model
        self.rng = np.random.default_rng(seed)
        self.n_permutations = n_permutations
        self._source = BatchSource(
            train, batch_size=256, device=torch.device("cpu"), dtype=torch.float32, what="train"
        )
        n = len(self._source)
        if loo is not None and len(loo.loo_probs) != n:
            raise InvalidInputError(
                f"loo has {len(loo.loo_probs):,} rows but the training data has {n:,}: pass "
                f"the leave-one-out outputs of every training row, in dataset order"
            )
        rows = np.sort(self.rng.choice(n, size=min(n, max_reference), replace=False))
        x_sub, y_sub, self.train_labels = self._read_rows(rows)
        self.width = tuple(x_sub.shape[1:])
        ids = getattr(train, "example_ids", None)
        self.train_ids = np.asarray(ids).astype(str) if ids is not None else example_ids(train, n)
        self.groups = self.train_labels.astype(str) if groups is None else np.asarray(groups)
        if len(self.groups) != n:
            raise InvalidInputError(f"groups has {len(self.groups):,} entries but train has {n:,}")
        flat = input_features(x_sub, **self._tokens)
        self.mean, self.std = flat.mean(0), flat.std(0) + 1e-8
        self.twin = random_twin(model, seed)
        self.n_classes = int(self.probs(x_sub[:1]).shape[1])
        self.ref_probs: np.ndarray | None = None
        cal_scores: np.ndarray | None = None
        if reference is None:
            x_ref = x_sub
            self.reference_kind = "training rows (random subsample)"
            glm = glm_reason(model)
            use = loo_outputs is True or (loo_outputs is None and glm is None)
            if use:
                if loo is not None:
                    self.ref_probs = loo.loo_probs[rows]
                    cal_scores = loo.expected_influence[rows]
                else:
                    sc = self.scorer
                    leverage_backend(sc.backend)
                    src = sc.batches((x_sub, y_sub), what="train")
                    out = _sweep(sc.engine, sc.backend, n, src, sc.progress)
                    self.ref_probs, cal_scores = out.loo_probs, out.expected_influence
                why = "the model is a GLM" if glm is None else "forced by loo_outputs=True"
                self.outputs_validity = (
                    f"approximate: reference outputs are approximate leave-one-out outputs "
                    f"of training rows ({why})"
                )
            else:
                reason = "loo_outputs=False" if loo_outputs is False else str(glm)
                self.outputs_validity = f"skipped: {reason}; pass reference= to use it"
        else:
            x_ref, _, _ = parse_eval(reference, width=self.width, n_classes=self.n_classes)
            if x_ref.shape[0] > max_reference:
                x_ref = x_ref[
                    np.sort(self.rng.choice(x_ref.shape[0], max_reference, replace=False))
                ]
            self.ref_probs, cal_scores = self.probs_and_scores(x_ref)
            self.reference_kind = "held-out reference rows"
            self.outputs_validity = "exact: held-out reference rows"
        self.ref_x = x_ref  # the reference rows' features (a subsample: at most max_reference)
        self.ref_features = self.standardize(x_ref)
        self.ref_flat = input_features(x_ref, **self._tokens)
        self.ref_random = self.random_features(x_ref)
        #: The kNN strangeness where the reference outputs are not trusted, else ``None``.
        self.knn: KnnStrangeness | None = None
        if cal_scores is None:  # kNN strangeness, split conformal
            self.knn = KnnStrangeness((self.ref_flat, self.ref_random), self.rng)
            cal_scores = self.knn.cal_scores
        #: Conformal calibration scores of the reference rows (the kNN half, else all).
        self.cal_scores: np.ndarray = cal_scores

    @property
    def scorer(self) -> InfluenceScorer:
        """The fitted curvature; built on first use (the exactly valid tests need none: only
        the leave-one-out reference, the influence scores and the drivers do)."""
        if self._scorer is None:
            train, damping, progress = self._scorer_args
            self._scorer = InfluenceScorer(self.model, train, damping=damping, progress=progress)
        return self._scorer

    def _read_rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """One pass over the training batches: the features and labels of ``rows`` (sorted
        positions) on the CPU, and every row's label."""
        xs, ys, labels = [], [], []
        for start, x, y in self._source:
            labels.append(y.cpu().numpy())
            lo, hi = np.searchsorted(rows, [start, start + x.shape[0]])
            if hi > lo:
                take = torch.as_tensor(rows[lo:hi] - start, device=x.device)
                xb = x[take].cpu()
                xs.append(xb.float() if xb.is_floating_point() else xb)
                ys.append(y[take].cpu())
        return torch.cat(xs), torch.cat(ys), np.concatenate(labels).astype(np.int64)

    def standardize(self, x: torch.Tensor) -> np.ndarray:
        """Rows flattened and standardized with the training subsample's mean and std."""
        return (input_features(x, **self._tokens) - self.mean) / self.std

    def random_features(self, x: torch.Tensor) -> np.ndarray:
        """The random-weight twin's penultimate representation of ``x`` (float64, batched)."""
        return batched_apply(self.twin, x, last_linear_inputs)

    def probs_and_scores(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Softmax outputs and the label-free expected influence ``tr(L M)`` for unlabelled
        rows (:func:`~infgate.detect.expected_influence.probs_and_expected_influence`)."""
        return probs_and_expected_influence(self.scorer, x)

    def probs(self, x: torch.Tensor) -> np.ndarray:
        """The trained model's softmax outputs for ``x`` (batched)."""
        return batched_apply(
            self.model, x, lambda m, xb: torch.softmax(model_logits(m(xb)).double(), dim=1)
        )

    def test(self, eval_data: Any, *, alpha: float = 0.05, max_drivers: int = 10) -> MismatchReport:
        """Test one evaluation batch; see :func:`detect_mismatch`."""
        if not 0.0 < alpha < 1.0:
            raise InvalidInputError(f"alpha must be in (0, 1), got {alpha!r}")
        x, labels, ids = parse_eval(eval_data, width=self.width, n_classes=self.n_classes)
        if x.shape[0] < 2:
            raise InvalidInputError(f"the evaluation set needs at least 2 rows, got {x.shape[0]}")
        flat, rand = input_features(x, **self._tokens), self.random_features(x)
        samples = {
            "mmd_features": pooled_standardized(self.ref_flat, flat),
            "mmd_random_features": pooled_standardized(self.ref_random, rand),
        }
        if self.knn is None:
            probs, scores = self.probs_and_scores(x)
            score_kind = "label-free expected influence tr(L M)"
        else:
            probs = self.probs(x)
            scores = self.knn.score((flat, rand))
            score_kind = (
                f"mean distance to the {KNN} nearest reference rows (inputs + random features)"
            )
        exact = self.reference_kind == "held-out reference rows" or self.ref_probs is None
        approximate: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.ref_probs is not None:  # approximate unless the reference is held out
            outputs = pooled_standardized(self.ref_probs, probs)
            (samples if exact else approximate)["mmd_outputs"] = outputs
        combined = combined_mmd_test(
            samples, approximate, n_permutations=self.n_permutations, rng=self.rng
        )
        tests = combined.tests
        best = min(tests, key=lambda k: float(tests[k]["p_value"]))
        p_value = combined.p_value
        ex_p = conformal_p_values(self.cal_scores, scores)
        ex_flag = benjamini_hochberg(ex_p, alpha)
        focus = ex_flag
        if not ex_flag.any() and p_value <= alpha:  # shifted as a whole: the strangest rows
            focus = np.zeros_like(ex_flag)
            focus[np.argsort(ex_p, kind="stable")[: min(10, len(ex_p))]] = True
        drivers, groups = pd.DataFrame(), pd.DataFrame()
        if focus.any():  # the curvature is fitted (on first use) only for drivers
            drivers, groups = mismatch_drivers(
                self.scorer,
                x,
                labels,
                probs,
                focus,
                ex_p,
                train_ids=self.train_ids,
                train_labels=self.train_labels,
                groups=self.groups,
                max_drivers=max_drivers,
            )
        how = "tests" if exact else "exact tests, Bonferroni with mmd_outputs"
        method = (
            f"{'+'.join(tests)} (max-T over {how} x widths {WIDTH_MULTIPLIERS} x median, "
            f"{'exactly valid' if exact else 'approximate'}); "
            f"outputs test {self.outputs_validity}; conformal {score_kind} + BH"
        )
        return MismatchReport(
            statistic=float(tests[best]["statistic"]),
            p_value=p_value,
            flagged=bool(p_value <= alpha),
            alpha=alpha,
            method=method,
            example_ids=ids,
            example_scores=scores,
            example_p_values=ex_p,
            example_flagged=ex_flag,
            drivers=drivers,
            driver_groups=groups,
            details={
                **tests,
                "tests": list(tests),
                "exactly_valid": exact,
                "outputs_test": self.outputs_validity,
                "example_score": score_kind,
                "n_reference": len(self.ref_flat),
                "reference": self.reference_kind,
                "n_permutations": self.n_permutations,
            },
        )


def detect_mismatch(
    model: nn.Module,
    train: DatasetLike,
    eval_data: Any,
    *,
    alpha: float = 0.05,
    reference: Any = None,
    damping: float | None = None,
    n_permutations: int = 500,
    groups: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = False,
    loo_outputs: bool | None = None,
    pad_token_id: int | None = None,
    n_inputs: int | None = None,
) -> MismatchReport:
    """Test whether ``eval_data`` comes from the training distribution, with valid p-values.

    Args:
        model: trained classifier returning logits (eval mode).
        train: its training data (``TrainingData``, ``(features, labels)`` or a Dataset).
        eval_data: evaluation features alone (tensor, array or DataFrame), a
            ``(features, labels)`` pair, or ``EvalData``. Labels are optional; when given they
            are checked and used for the drivers.
        alpha: level of the dataset test and FDR of the per-example flags.
        reference: rows the model never trained on (see :class:`MismatchDetector`).
        damping: lambda for the curvature.
        n_permutations: permutations per MMD test.
        groups: a group per training row for the driver subgroups (default: labels).
        seed: seeds subsampling and permutations.
        progress: show progress bars.
        loo_outputs: see :class:`MismatchDetector`.
        pad_token_id, n_inputs: how token rows were padded and stacked (see
            :class:`MismatchDetector`).

    Returns:
        :class:`MismatchReport`.

    Raises:
        InvalidInputError: empty evaluation set, evaluation rows of another width
            (``DatasetMismatchError``), labels the model cannot output, bad ``alpha``.
    """
    if not 0.0 < alpha < 1.0:
        raise InvalidInputError(f"alpha must be in (0, 1), got {alpha!r}")
    first = next(
        iter(BatchSource(train, batch_size=1, device=torch.device("cpu"), dtype=torch.float32))
    )
    x0 = first[1]
    with torch.no_grad():
        p0 = next(model.parameters())
        x0 = x0.to(p0.device, p0.dtype) if x0.is_floating_point() else x0.to(p0.device)
        n_classes = int(model_logits(model(x0)).shape[1])
    parse_eval(eval_data, width=tuple(first[1].shape[1:]), n_classes=n_classes)  # fail fast
    detector = MismatchDetector(
        model,
        train,
        reference=reference,
        damping=damping,
        n_permutations=n_permutations,
        groups=groups,
        seed=seed,
        progress=progress,
        loo_outputs=loo_outputs,
        pad_token_id=pad_token_id,
        n_inputs=n_inputs,
    )
    return detector.test(eval_data, alpha=alpha)
