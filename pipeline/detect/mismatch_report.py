"""The result of the domain-mismatch test (:func:`infgate.detect.detect_mismatch`), with
its JSON round trip for the store and MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MismatchReport"]


@dataclass(frozen=True)
class MismatchReport:
    """Result of :func:`detect_mismatch`.

    Attributes:
        statistic: MMD^2 (at the median kernel width) of the dataset-level test with the
            smallest p-value.
        p_value: max-T permutation combination of the tests used (``details["tests"]``) at
            every kernel width (:mod:`infgate.detect.mmd_aggregate`); exactly valid at every
            sample size unless ``details["exactly_valid"]`` is false (the approximate
            leave-one-out output test took part: see :mod:`infgate.detect.mismatch`).
        flagged: ``p_value <= alpha``.
        alpha: level used for the dataset test and the Benjamini-Hochberg FDR.
        method: the tests used, whether the combination is exactly valid, what happened to
            the output test and why, and the per-example score.
        example_ids: evaluation example ids.
        example_scores: per-example strangeness (higher = stranger), named in
            ``details["example_score"]``: the label-free influence-space score ``tr(L M)``
            where the reference outputs are trusted, else the kNN distance in the (inputs,
            random features) space.
        example_p_values: conformal p-values of those scores.
        example_flagged: Benjamini-Hochberg rejections at FDR ``alpha``.
        drivers: training examples most influential on the flagged examples' losses (when
            only the dataset is flagged: on its 10 strangest examples)
            (``train_example_id, given_label, group, mean_influence, mean_abs_influence,
            relative_magnitude, role``), Koh & Liang 2017 Sec. 5.3.
        driver_groups: per training group (default: given label) share of that influence
            versus share of the data (``lift`` > 1 = over-represented among drivers).
        details: each test's statistic, p-value (combined over its widths) and
            ``p_values_by_width`` (``mmd_features``, ``mmd_random_features``,
            ``mmd_outputs`` when used), ``tests``,
            ``exactly_valid``, ``outputs_test``, ``example_score``, sizes.
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
