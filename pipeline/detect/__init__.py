"""Detection: label-error ranking with suggested labels, explanations, domain mismatch.

Public functions: :func:`find_label_errors` (with :func:`fit_noise_model` behind its flagged
set and :func:`eval_loss_influence`), :func:`explain`, :func:`detect_mismatch`
(and the reusable :class:`MismatchDetector`).
"""

from infgate.detect.calibrate import NoiseModel, NoiseModelOptions, fit_noise_model
from infgate.detect.eval_influence import eval_loss_influence
from infgate.detect.explain import EXPLAIN_COLUMNS, explain
from infgate.detect.label_errors import (
    LABEL_ERROR_COLUMNS,
    RankingMethod,
    find_label_errors,
    ranking_scores,
)
from infgate.detect.loo import LooOutputs, approximate_loo
from infgate.detect.mismatch import MismatchDetector, MismatchReport, detect_mismatch

__all__ = [
    "EXPLAIN_COLUMNS",
    "LABEL_ERROR_COLUMNS",
    "LooOutputs",
    "MismatchDetector",
    "MismatchReport",
    "NoiseModel",
    "NoiseModelOptions",
    "RankingMethod",
    "approximate_loo",
    "detect_mismatch",
    "eval_loss_influence",
    "explain",
    "find_label_errors",
    "fit_noise_model",
    "ranking_scores",
]
