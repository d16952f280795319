"""One scan: the stages (load, analyse = influence + detect on one curvature fit, store,
gate, report), their typed results, and the in-process assemblies :func:`run_scan` and
:func:`scan_dataset`."""

from infgate.scan.results import (
    Analysis,
    CurvatureSummary,
    LoadedScan,
    ReportOutcome,
    ScanResult,
)
from infgate.scan.run import run_scan, scan_dataset, scan_identity
from infgate.scan.stages import (
    analyse,
    detect_stage,
    fit_stage,
    gate_stage,
    influence_stage,
    load_stage,
    loo_stage,
    report_stage,
    store_stage,
)

__all__ = [
    "Analysis",
    "CurvatureSummary",
    "LoadedScan",
    "ReportOutcome",
    "ScanResult",
    "analyse",
    "detect_stage",
    "fit_stage",
    "gate_stage",
    "influence_stage",
    "load_stage",
    "loo_stage",
    "report_stage",
    "run_scan",
    "scan_dataset",
    "scan_identity",
    "store_stage",
]
