"""infgate core library: influence-function data debugging that gates model deployment.

Public surface; everything else is internal. Orchestration lives in ``flows`` and
integration surfaces in ``plugins``; this package imports neither.
"""

from infgate.config import InfluenceConfig
from infgate.data.training import EvalData, TrainingData, flip_labels
from infgate.detect import (
    MismatchDetector,
    MismatchReport,
    detect_mismatch,
    explain,
    find_label_errors,
)
from infgate.errors import (
    CurvatureError,
    DatasetMismatchError,
    InfgateError,
    InvalidInputError,
    ModelStateError,
    NonFiniteError,
)
from infgate.influence import (
    InfluenceMatrix,
    InfluenceResult,
    InfluenceScorer,
    influence,
    self_influence,
)

__version__ = "0.1.0"

__all__ = [
    "CurvatureError",
    "DatasetMismatchError",
    "EvalData",
    "InfgateError",
    "InfluenceConfig",
    "InfluenceMatrix",
    "InfluenceResult",
    "InfluenceScorer",
    "InvalidInputError",
    "MismatchDetector",
    "MismatchReport",
    "ModelStateError",
    "NonFiniteError",
    "TrainingData",
    "__version__",
    "detect_mismatch",
    "explain",
    "find_label_errors",
    "flip_labels",
    "influence",
    "self_influence",
]
