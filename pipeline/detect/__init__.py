"""Detection: label-error ranking with suggested labels, explanations, domain mismatch.

Public functions: :func:`find_label_errors`, :func:`explain`, :func:`detect_mismatch`
(and the reusable :class:`MismatchDetector`).
"""

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
    "RankingMethod",
    "approximate_loo",
    "detect_mismatch",
    "explain",
    "find_label_errors",
    "ranking_scores",
]
