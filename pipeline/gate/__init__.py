"""The deployment gate: Great Expectations checks built from a scan, and the typed verdict."""

from infgate.gate.checks import GateInputs, build_gate_frame, run_gate, verdict_from_result
from infgate.gate.config import DEFAULTS_PATH, load_gate_config
from infgate.gate.verdict import CHECK_NAMES, GateCheck, GateVerdict

__all__ = [
    "CHECK_NAMES",
    "DEFAULTS_PATH",
    "GateCheck",
    "GateInputs",
    "GateVerdict",
    "build_gate_frame",
    "load_gate_config",
    "run_gate",
    "verdict_from_result",
]
