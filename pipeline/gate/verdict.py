"""The gate's answer, typed: one :class:`GateCheck` per check, and the :class:`GateVerdict`.

Checks are named by what they protect (``labels_in_range``, ``suspect_rate``...), not by the
Great Expectations type that evaluates them; that type is kept alongside for the curious.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["CHECK_NAMES", "GateCheck", "GateVerdict", "Verdict", "fmt_value"]

Verdict = Literal["passed", "blocked"]

#: Our check name -> what it means (the report and the CLI show these).
CHECK_NAMES: dict[str, str] = {
    "labels_in_range": "labels outside the model's classes",
    "unique_ids": "repeated example ids",
    "missing_features": "rows with missing feature values",
    "row_count": "row count differs from the registered dataset",
    "suspect_rate": "unreviewed suspected label-error rate above threshold",
    "high_confidence_suspects": "unreviewed high-confidence suspects",
    "mismatch": "dataset-level mismatch between training and evaluation data",
    "gate_ran": "the gate itself failed to run (the version is blocked until it does)",
}


@dataclass(frozen=True)
class GateCheck:
    """One check the gate ran.

    Attributes:
        name: our name for the check (a key of :data:`CHECK_NAMES`).
        suite: ``training_data`` or ``findings``.
        success: whether it held.
        observed: the observed value (a rate, a count, a p-value).
        threshold: the allowed bounds, ``{"min": .., "max": ..}`` or ``{"equal": ..}``.
        message: one human line (used in tags, logs and the report).
        column: the gate-frame column it checked, when it checks one.
        expectation: the Great Expectations type that evaluated it.
        unexpected_examples: up to 10 offending values.
        details: extra context (e.g. null counts per feature column).
    """

    name: str
    suite: str
    success: bool
    observed: Any
    threshold: dict[str, Any]
    message: str
    column: str | None = None
    expectation: str = ""
    unexpected_examples: tuple[Any, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unexpected_examples"] = list(self.unexpected_examples)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateCheck:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in d.items() if k in known}
        values["unexpected_examples"] = tuple(values.get("unexpected_examples") or ())
        return cls(**values)

    @property
    def allowed(self) -> str:
        """The threshold as text (``"<= 0.05"``, ``">= 0.05"``, ``"== 1797"``)."""
        ops = {"min": ">=", "max": "<=", "equal": "=="}
        return ", ".join(
            f"{ops[k]} {fmt_value(v)}" for k, v in self.threshold.items() if v is not None
        )


@dataclass(frozen=True)
class GateVerdict:
    """``passed`` or ``blocked``, with every check run (``reasons`` = the failed ones)."""

    verdict: Verdict
    checks: tuple[GateCheck, ...] = ()

    @property
    def passed(self) -> bool:
        """True when every check held."""
        return self.verdict == "passed"

    @property
    def reasons(self) -> tuple[GateCheck, ...]:
        """The failed checks."""
        return tuple(c for c in self.checks if not c.success)

    def summary(self) -> str:
        """One line per failed check (the ``infgate.reason`` tag), or "all checks passed"."""
        if not self.reasons:
            return "all checks passed"
        return "; ".join(r.message for r in self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "checks": [c.to_dict() for c in self.checks],
            "reasons": [c.to_dict() for c in self.reasons],
        }

    @classmethod
    def from_checks(cls, checks: list[GateCheck] | tuple[GateCheck, ...]) -> GateVerdict:
        checks = tuple(checks)
        return cls("passed" if all(c.success for c in checks) else "blocked", checks)


def fmt_value(value: Any) -> str:
    """A number or name as the gate shows it (4 significant digits for floats)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value) if isinstance(value, str) else str(value)
