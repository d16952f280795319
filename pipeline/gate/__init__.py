"""The deployment gate: Great Expectations checks built from a scan, and the verdict."""

from infgate.gate.core import (
    GateConfig,
    GateInputs,
    GateVerdict,
    build_gate_frame,
    load_gate_config,
    run_gate,
)

__all__ = [
    "GateConfig",
    "GateInputs",
    "GateVerdict",
    "build_gate_frame",
    "load_gate_config",
    "run_gate",
]
