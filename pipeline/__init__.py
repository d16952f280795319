"""infgate: influence-function data debugging that gates model deployment.

The public API (everything in ``__all__``) is imported lazily (PEP 562): ``import infgate``
loads no torch, pandas or scipy; the first use of a name imports the module that defines it.
Orchestration lives in ``infgate.flows`` and integrations in ``infgate.plugins``; this core
package imports neither.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "ConfigError": "infgate.errors",
    "CurvatureError": "infgate.errors",
    "DataResolutionError": "infgate.errors",
    "DatasetMismatchError": "infgate.errors",
    "GateBlockedError": "infgate.errors",
    "InfgateError": "infgate.errors",
    "InvalidInputError": "infgate.errors",
    "ModelStateError": "infgate.errors",
    "NonFiniteError": "infgate.errors",
    "NotFittedError": "infgate.errors",
    # configuration and settings
    "DetectConfig": "infgate.config",
    "GateConfig": "infgate.config",
    "InfluenceConfig": "infgate.config",
    "MismatchConfig": "infgate.config",
    "ReportConfig": "infgate.config",
    "ScanConfig": "infgate.config",
    "Settings": "infgate.settings",
    # data
    "EvalData": "infgate.data",
    "TrainingData": "infgate.data",
    "flip_labels": "infgate.data",
    # influence
    "InfluenceMatrix": "infgate.influence",
    "InfluenceResult": "infgate.influence",
    "InfluenceScorer": "infgate.influence",
    "influence": "infgate.influence",
    "self_influence": "infgate.influence",
    # detection
    "MismatchDetector": "infgate.detect",
    "MismatchReport": "infgate.detect",
    "detect_mismatch": "infgate.detect",
    "explain": "infgate.detect",
    "find_label_errors": "infgate.detect",
    # the scan
    "ScanResult": "infgate.scan",
    "run_scan": "infgate.scan",
    "scan_dataset": "infgate.scan",
}

__all__ = [
    "ConfigError",
    "CurvatureError",
    "DataResolutionError",
    "DatasetMismatchError",
    "DetectConfig",
    "EvalData",
    "GateBlockedError",
    "GateConfig",
    "InfgateError",
    "InfluenceConfig",
    "InfluenceMatrix",
    "InfluenceResult",
    "InfluenceScorer",
    "InvalidInputError",
    "MismatchConfig",
    "MismatchDetector",
    "MismatchReport",
    "ModelStateError",
    "NonFiniteError",
    "NotFittedError",
    "ReportConfig",
    "ScanConfig",
    "ScanResult",
    "Settings",
    "TrainingData",
    "__version__",
    "detect_mismatch",
    "explain",
    "find_label_errors",
    "flip_labels",
    "influence",
    "run_scan",
    "scan_dataset",
    "self_influence",
]


assert set(__all__) == {*_EXPORTS, "__version__"}  # one list of names, checked at import


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'infgate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from infgate.config import (
        DetectConfig,
        GateConfig,
        InfluenceConfig,
        MismatchConfig,
        ReportConfig,
        ScanConfig,
    )
    from infgate.data import EvalData, TrainingData, flip_labels
    from infgate.detect import (
        MismatchDetector,
        MismatchReport,
        detect_mismatch,
        explain,
        find_label_errors,
    )
    from infgate.errors import (
        ConfigError,
        CurvatureError,
        DataResolutionError,
        DatasetMismatchError,
        GateBlockedError,
        InfgateError,
        InvalidInputError,
        ModelStateError,
        NonFiniteError,
        NotFittedError,
    )
    from infgate.influence import (
        InfluenceMatrix,
        InfluenceResult,
        InfluenceScorer,
        influence,
        self_influence,
    )
    from infgate.scan import ScanResult, run_scan, scan_dataset
    from infgate.settings import Settings
