"""Domain mismatch between training and evaluation data, with valid p-values.

Two questions, both answered without evaluation labels:

* Dataset level: are the evaluation rows drawn like the training rows? Two MMD
  permutation tests (Gretton et al. 2012), on the standardized input features and on the
  model's softmax outputs, combined by Bonferroni (``p = min(1, 2 min(p_feat, p_out))``).
* Example level: how unusual is each evaluation row *to the model*? The label-free
  influence-space score ``E_{y ~ p(.|x)}[g_y^T (H + lambda I)^{-1} g_y] = tr(L(x) M(x))``
  (the gradient taken in expectation under the model's own predictive distribution;
  ``L = diag(p) - p p^T``, ``M = J (H + lambda I)^{-1} J^T``) — the Gauss-Newton factor rows
  of :meth:`GradientEngine.factor_grads` give it in one quadratic form. Split-conformal
  p-values against a calibration slice, then Benjamini-Hochberg.

Validity. The model was fitted to its training rows, so their outputs and scores are NOT
exchangeable with fresh rows. With ``reference=`` (rows the model never saw, e.g. a
validation split) every p-value is exactly valid. Without it, training rows are used
through their approximate leave-one-out outputs (:mod:`infgate.detect.loo`): what the
model would output had it not seen the row. The input-feature MMD is exactly valid either
way; the others are valid to the accuracy of the leave-one-out approximation (exact to
about 1e-3 in probability for softmax regression; the false-alarm rate is measured in
``benchmarks/bench_mismatch.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from infgate.detect._inputs import dataset_tensors, example_ids, parse_eval
from infgate.detect.loo import approximate_loo
from infgate.detect.stats import benjamini_hochberg, conformal_p_values, mmd_permutation_test
from infgate.errors import InvalidInputError
from infgate.influence import InfluenceScorer
from infgate.influence.backends.base import CanWhiten
from infgate.influence.batches import DatasetLike
from torch import nn

__all__ = ["MismatchDetector", "MismatchReport", "detect_mismatch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MismatchReport:
    """Result of :func:`detect_mismatch`.

    Attributes:
        statistic: MMD^2 of the dataset-level test with the smaller p-value.
        p_value: Bonferroni-combined permutation p-value (valid at every sample size).
        flagged: ``p_value <= alpha``.
        alpha: level used for the dataset test and the Benjamini-Hochberg FDR.
        method: description of the tests.
        example_ids: evaluation example ids.
        example_scores: label-free influence-space score per evaluation example (higher =
            stranger to the model).
        example_p_values: conformal p-values of those scores.
        example_flagged: Benjamini-Hochberg rejections at FDR ``alpha``.
        drivers: training examples most influential on the flagged examples' losses (when
            only the dataset is flagged: on its 10 strangest examples)
            (``train_example_id, given_label, group, mean_influence, mean_abs_influence,
            relative_magnitude, role``), Koh & Liang 2017 Sec. 5.3.
        driver_groups: per training group (default: given label) share of that influence
            versus share of the data (``lift`` > 1 = over-represented among drivers).
        details: the two component tests' statistics and p-values, sizes.
    """

    statistic: float
    p_value: float
    flagged: bool
    alpha: float
    method: str
    example_ids: np.ndarray
    example_scores: np.ndarray
    example_p_values: np.ndarray
    example_flagged: np.ndarray
    drivers: pd.DataFrame
    driver_groups: pd.DataFrame = field(default_factory=pd.DataFrame)
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MismatchReport:
        """Rebuild a report from :meth:`to_dict` (a stored scan's mismatch row)."""
        examples = d.get("examples") or []
        return cls(
            statistic=float(d["statistic"]),
            p_value=float(d["p_value"]),
            flagged=bool(d["flagged"]),
            alpha=float(d["alpha"]),
            method=str(d.get("method", "")),
            example_ids=np.asarray([str(e["example_id"]) for e in examples], dtype=object),
            example_scores=np.asarray([float(e["score"]) for e in examples], dtype=float),
            example_p_values=np.asarray([float(e["p_value"]) for e in examples], dtype=float),
            example_flagged=np.asarray([bool(e["flagged"]) for e in examples], dtype=bool),
            drivers=pd.DataFrame(d.get("drivers") or []),
            driver_groups=pd.DataFrame(d.get("driver_groups") or []),
            details=dict(d.get("details") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (for the store and MLflow)."""
        return {
            "statistic": float(self.statistic),
            "p_value": float(self.p_value),
            "flagged": bool(self.flagged),
            "alpha": float(self.alpha),
            "method": self.method,
            "n_eval": len(self.example_scores),
            "n_example_flagged": int(np.sum(self.example_flagged)),
            "examples": [
                {"example_id": str(i), "score": float(s), "p_value": float(p), "flagged": bool(f)}
                for i, s, p, f in zip(
                    self.example_ids,
                    self.example_scores,
                    self.example_p_values,
                    self.example_flagged,
                    strict=True,
                )
            ],
            "drivers": self.drivers.to_dict(orient="records"),
            "driver_groups": self.driver_groups.to_dict(orient="records"),
            "details": self.details,
        }


def _on_device(x: torch.Tensor, scorer: InfluenceScorer) -> torch.Tensor:
    """A batch on the scorer's device; floats in its dtype, token ids left int64."""
    if x.is_floating_point():
        return x.to(scorer.device, scorer.engine.dtype)
    return x.to(scorer.device)


class MismatchDetector:
    """Fits the training side once; :meth:`test` then checks any number of batches.

    Args:
        model: trained classifier returning logits (eval mode).
        train: its training data.
        reference: features of rows the model never trained on (optional; makes every
            p-value exactly valid). ``None`` = training rows via leave-one-out outputs.
        damping: lambda for the curvature (pass the model's weight decay when known).
        scorer: a fitted :class:`InfluenceScorer` on ``train`` to reuse.
        max_reference: at most this many reference rows enter the MMD tests and the
            conformal calibration (random subset).
        n_permutations: permutations per MMD test.
        groups: one group label per training row for ``driver_groups`` (default: labels).
        seed: seeds the subsampling and permutations.
        progress: show progress bars.
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
    ) -> None:
        if max_reference < 10 or n_permutations < 19:
            raise InvalidInputError(
                f"need max_reference >= 10 and n_permutations >= 19, got {max_reference} and "
                f"{n_permutations}"
            )
        self.scorer = scorer or InfluenceScorer(model, train, damping=damping, progress=progress)
        self.rng = np.random.default_rng(seed)
        self.n_permutations = n_permutations
        x_tr, y_tr = dataset_tensors(train)
        n = x_tr.shape[0]
        self.width = tuple(x_tr.shape[1:])
        self.train_labels = y_tr.numpy()
        self.train_ids = example_ids(train, n)
        self.groups = self.train_labels.astype(str) if groups is None else np.asarray(groups)
        if len(self.groups) != n:
            raise InvalidInputError(f"groups has {len(self.groups):,} entries but train has {n:,}")
        flat = x_tr.reshape(n, -1).double().numpy()
        self.mean, self.std = flat.mean(0), flat.std(0) + 1e-8
        self.n_classes = int(self.scorer.engine.outputs(x_tr[:1].to(self.scorer.device)).shape[1])
        if reference is None:
            rows = np.sort(self.rng.choice(n, size=min(n, max_reference), replace=False))
            loo = approximate_loo(self.scorer, rows=rows)
            self.ref_features = self.standardize(x_tr[rows])
            self.ref_probs = loo.loo_probs
            self.cal_scores = loo.expected_influence
            self.reference_kind = "training rows (approximate leave-one-out)"
        else:
            x_ref, _, _ = parse_eval(reference, width=self.width, n_classes=self.n_classes)
            if x_ref.shape[0] > max_reference:
                x_ref = x_ref[
                    np.sort(self.rng.choice(x_ref.shape[0], max_reference, replace=False))
                ]
            self.ref_features = self.standardize(x_ref)
            self.ref_probs, self.cal_scores = self.probs_and_scores(x_ref)
            self.reference_kind = "held-out reference rows"

    def standardize(self, x: torch.Tensor) -> np.ndarray:
        """Rows flattened and standardized with the training mean and std."""
        return (x.reshape(x.shape[0], -1).double().numpy() - self.mean) / self.std

    def probs_and_scores(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Softmax outputs and ``tr(L M)`` for unlabelled rows, in batches.

        A back-end with output-space leverage (:class:`CanWhiten`: exact, EK-FAC, Arnoldi)
        gives ``M`` from its factorisation; others take the Gauss-Newton factor rows, a
        ``(B, C, P)`` tensor (gigabytes for a million-parameter network).
        """
        sc = self.scorer
        if isinstance(sc.backend, CanWhiten):
            return self._whitened_scores(x, sc.backend)
        probs, scores = [], []
        for start in range(0, x.shape[0], sc.batch_size):
            xb = _on_device(x[start : start + sc.batch_size], sc)
            dummy = torch.zeros(xb.shape[0], dtype=torch.long, device=sc.device)
            u = sc.engine.factor_grads(start, xb, dummy)  # (B, C, P); label-free for CE
            b, c, p = u.shape
            scores.append(sc.backend.quadratic(u.reshape(b * c, p)).reshape(b, c).sum(1))
            probs.append(torch.softmax(sc.engine.outputs(xb).double(), dim=1))
        return (
            torch.cat(probs).cpu().numpy(),
            torch.cat(scores).double().clamp_min(0).cpu().numpy(),
        )

    def _whitened_scores(
        self, x: torch.Tensor, backend: CanWhiten
    ) -> tuple[np.ndarray, np.ndarray]:
        """``probs_and_scores`` from ``M = J (H + lambda I)^{-1} J^T`` (one batched pass)."""
        sc = self.scorer
        probs, scores = [], []

        def residual(logits: torch.Tensor) -> torch.Tensor:  # unused by tr(L M)
            return torch.softmax(logits, dim=1)

        for start in range(0, x.shape[0], sc.batch_size):
            xb = _on_device(x[start : start + sc.batch_size], sc)
            dummy = torch.zeros(xb.shape[0], dtype=torch.long, device=sc.device)
            piece = backend.output_leverage(sc.engine, start, xb, dummy, residual)
            p = torch.softmax(piece.logits.double(), dim=1)
            cov = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # L(x)
            scores.append(torch.einsum("bcd,bdc->b", cov, piece.leverage.double()))
            probs.append(p)
        return (
            torch.cat(probs).cpu().numpy(),
            torch.cat(scores).clamp_min(0).cpu().numpy(),
        )

    def test(self, eval_data: Any, *, alpha: float = 0.05, max_drivers: int = 10) -> MismatchReport:
        """Test one evaluation batch; see :func:`detect_mismatch`."""
        if not 0.0 < alpha < 1.0:
            raise InvalidInputError(f"alpha must be in (0, 1), got {alpha!r}")
        x, labels, ids = parse_eval(eval_data, width=self.width, n_classes=self.n_classes)
        if x.shape[0] < 2:
            raise InvalidInputError(f"the evaluation set needs at least 2 rows, got {x.shape[0]}")
        probs, scores = self.probs_and_scores(x)
        feats = self.standardize(x)
        s_feat, p_feat = mmd_permutation_test(
            self.ref_features, feats, n_permutations=self.n_permutations, rng=self.rng
        )
        s_out, p_out = mmd_permutation_test(
            self.ref_probs, probs, n_permutations=self.n_permutations, rng=self.rng
        )
        p_value = min(1.0, 2.0 * min(p_feat, p_out))
        ex_p = conformal_p_values(self.cal_scores, scores)
        ex_flag = benjamini_hochberg(ex_p, alpha)
        focus = ex_flag
        if not ex_flag.any() and p_value <= alpha:  # shifted as a whole: the strangest rows
            focus = np.zeros_like(ex_flag)
            focus[np.argsort(ex_p, kind="stable")[: min(10, len(ex_p))]] = True
        drivers, groups = self._drivers(x, labels, probs, focus, ex_p, max_drivers)
        return MismatchReport(
            statistic=s_feat if p_feat <= p_out else s_out,
            p_value=p_value,
            flagged=bool(p_value <= alpha),
            alpha=alpha,
            method="mmd_features+mmd_outputs (bonferroni); conformal expected-influence + BH",
            example_ids=ids,
            example_scores=scores,
            example_p_values=ex_p,
            example_flagged=ex_flag,
            drivers=drivers,
            driver_groups=groups,
            details={
                "mmd_features": {"statistic": s_feat, "p_value": p_feat},
                "mmd_outputs": {"statistic": s_out, "p_value": p_out},
                "n_reference": len(self.ref_features),
                "reference": self.reference_kind,
                "n_permutations": self.n_permutations,
            },
        )

    def _drivers(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        probs: np.ndarray,
        flags: np.ndarray,
        p_values: np.ndarray,
        max_drivers: int,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Training examples driving the loss on the focus rows (their label, else prediction).

        The focus rows are the flagged examples; when none is flagged but the dataset test
        is, the 10 examples with the smallest p-values.
        """
        if not flags.any():
            return pd.DataFrame(), pd.DataFrame()
        rows = np.flatnonzero(flags)
        rows = rows[np.argsort(p_values[rows], kind="stable")][:50]
        y = labels[rows] if labels is not None else torch.as_tensor(probs[rows].argmax(1))
        vals = self.scorer.influence((x[rows], y)).values  # (n_train, k)
        mean_inf = vals.mean(axis=1)
        mean_abs = np.abs(vals).mean(axis=1)
        median = float(np.median(mean_abs)) or 1e-300
        order = np.argsort(-mean_abs, kind="stable")[:max_drivers]
        drivers = pd.DataFrame(
            {
                "train_example_id": self.train_ids[order].astype(str),
                "given_label": self.train_labels[order],
                "group": self.groups[order].astype(str),
                "mean_influence": mean_inf[order],
                "mean_abs_influence": mean_abs[order],
                "relative_magnitude": mean_abs[order] / median,
                "role": np.where(mean_inf[order] < 0, "supporting", "opposing"),
            }
        )
        frame = pd.DataFrame({"group": self.groups.astype(str), "abs": mean_abs})
        agg = frame.groupby("group")["abs"].agg(["sum", "size"])
        groups = pd.DataFrame(
            {
                "group": agg.index.astype(str),
                "n_train": agg["size"].to_numpy(),
                "influence_share": agg["sum"].to_numpy() / max(float(agg["sum"].sum()), 1e-300),
                "data_share": agg["size"].to_numpy() / len(frame),
            }
        )
        groups["lift"] = groups["influence_share"] / groups["data_share"]
        return drivers, groups.sort_values("lift", ascending=False).reset_index(drop=True)


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

    Returns:
        :class:`MismatchReport`.

    Raises:
        InvalidInputError: empty evaluation set, evaluation rows of another width
            (``DatasetMismatchError``), labels the model cannot output, bad ``alpha``.
    """
    if not 0.0 < alpha < 1.0:
        raise InvalidInputError(f"alpha must be in (0, 1), got {alpha!r}")
    x_tr, _ = dataset_tensors(train)
    with torch.no_grad():
        first = next(model.parameters())
        n_classes = int(model(x_tr[:1].to(first.device, first.dtype)).shape[1])
    parse_eval(eval_data, width=tuple(x_tr.shape[1:]), n_classes=n_classes)  # fail fast
    detector = MismatchDetector(
        model,
        train,
        reference=reference,
        damping=damping,
        n_permutations=n_permutations,
        groups=groups,
        seed=seed,
        progress=progress,
    )
    return detector.test(eval_data, alpha=alpha)
