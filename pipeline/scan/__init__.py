"""One scan, stage by stage (load, influence, detect, store, gate, report), and the
in-process assembly :func:`run_scan`."""

from infgate.scan.stages import (
    LoadedScan,
    ScanOptions,
    ScanOutcome,
    detect_stage,
    gate_stage,
    influence_stage,
    load_stage,
    report_stage,
    run_scan,
    store_stage,
)

__all__ = [
    "LoadedScan",
    "ScanOptions",
    "ScanOutcome",
    "detect_stage",
    "gate_stage",
    "influence_stage",
    "load_stage",
    "report_stage",
    "run_scan",
    "store_stage",
]
