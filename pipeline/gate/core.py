"""The deployment gate: Great Expectations checks built from a scan.

Two expectation suites run in one checkpoint over one frame (a row per training example):

* training data: label values in the model's class set, no missing features, unique
  example ids, row count as registered;
* findings: suspected label-error rate (unreviewed suspects only) <= ``max_suspect_rate``,
  no dataset-level mismatch at ``mismatch_alpha``, at most
  ``max_unreviewed_high_confidence`` unreviewed high-confidence suspects.

A suspect with a decision in the relabel queue counts as reviewed, so a version passes
once the data is fixed (a new scan passes) or every blocking finding has a decision.
The checkpoint's :class:`VerdictAction` hands the verdict to a sink (SQL + MLflow tags +
alias withdrawal in production, see :mod:`infgate.scan.stages`).
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from infgate.errors import InvalidInputError

__all__ = [
    "GateConfig",
    "GateInputs",
    "GateVerdict",
    "build_gate_frame",
    "load_gate_config",
    "run_gate",
]

log = logging.getLogger(__name__)

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
Verdict = Literal["passed", "blocked"]


@dataclass(frozen=True)
class GateConfig:
    """Gate thresholds (documented in ``infgate/gate/defaults.yaml``).

    Attributes:
        max_suspect_rate: largest allowed fraction of unreviewed suspected label errors.
        mismatch_alpha: block when the mismatch test's p-value is below this.
        high_confidence: suggestion confidence at which a suspect counts as high-confidence.
        max_unreviewed_high_confidence: unreviewed high-confidence suspects tolerated.
        check_row_count: compare the row count with the one MLflow registered.
        deployment_alias: the alias a blocked version never holds.
    """

    max_suspect_rate: float = 0.05
    mismatch_alpha: float = 0.05
    high_confidence: float = 0.95
    max_unreviewed_high_confidence: int = 0
    check_row_count: bool = True
    deployment_alias: str = "champion"

    def __post_init__(self) -> None:
        for name in ("max_suspect_rate", "mismatch_alpha", "high_confidence"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not (0.0 <= float(v) <= 1.0) or math.isnan(v):
                raise InvalidInputError(f"gate `{name}` must be in [0, 1], got {v!r}")
        v = self.max_unreviewed_high_confidence
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise InvalidInputError(
                f"gate `max_unreviewed_high_confidence` must be an int >= 0, got {v!r}"
            )
        if not isinstance(self.deployment_alias, str) or not self.deployment_alias.strip():
            raise InvalidInputError(
                f"gate `deployment_alias` must be a name, got {self.deployment_alias!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (logged as MLflow params, stored with the scan config)."""
        return asdict(self)


def load_gate_config(path: str | Path | None = None, **overrides: Any) -> GateConfig:
    """Defaults, then ``path`` (or ``INFGATE_GATE_CONFIG``), then keyword overrides.

    Raises:
        InvalidInputError: unreadable file, unknown key or bad value.
    """
    import yaml

    values: dict[str, Any] = {}
    for source in (DEFAULTS_PATH, path or os.environ.get("INFGATE_GATE_CONFIG")):
        if not source:
            continue
        p = Path(source)
        if not p.is_file():
            raise InvalidInputError(f"gate config {str(p)!r} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise InvalidInputError(
                f"gate config {str(p)!r} must be a mapping, got {type(loaded).__name__}"
            )
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = set(GateConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInputError(f"unknown gate setting(s) {unknown}; known: {sorted(known)}")
    return GateConfig(**values)


@dataclass(frozen=True)
class GateInputs:
    """What the gate checks: the training frame and the scan's findings.

    Attributes:
        frame: one row per training example (``example_id``, feature columns, label column).
        label_column: name of the label column in ``frame``.
        feature_columns: feature column names.
        n_classes: number of model outputs (valid labels are ``0..n_classes-1``).
        findings: label-error findings (``example_id, is_suspect, suggestion_confidence``...).
        reviewed_ids: example ids whose finding has a queue decision.
        mismatch: ``MismatchReport.to_dict()`` or ``None``.
        registered_rows: row count MLflow registered for the dataset, if known.
    """

    frame: pd.DataFrame
    label_column: str
    feature_columns: list[str]
    n_classes: int
    findings: pd.DataFrame
    reviewed_ids: frozenset[str] = frozenset()
    mismatch: dict[str, Any] | None = None
    registered_rows: int | None = None


@dataclass(frozen=True)
class GateVerdict:
    """The gate's answer: ``passed`` or ``blocked``, every failed check and every check run."""

    verdict: Verdict
    reasons: list[dict[str, Any]]
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every expectation held."""
        return self.verdict == "passed"

    def summary(self) -> str:
        """One line per failed check (the ``infgate.reason`` tag), or "all checks passed"."""
        if not self.reasons:
            return "all checks passed"
        return "; ".join(r["message"] for r in self.reasons)


#: Gate-frame column: how many feature values each training row lacks.
MISSING_COLUMN = "missing_features"


def build_gate_frame(inputs: GateInputs, config: GateConfig) -> pd.DataFrame:
    """The frame both suites validate: training rows plus per-row finding columns."""
    df = inputs.frame.copy()
    ids = df["example_id"].astype(str)
    f = inputs.findings
    suspects = f[f["is_suspect"].astype(bool)] if len(f) else f
    unreviewed = suspects[~suspects["example_id"].astype(str).isin(inputs.reviewed_ids)]
    unrev_ids = set(unreviewed["example_id"].astype(str))
    conf = unreviewed.get("suggestion_confidence", pd.Series(dtype=float)).astype(float)
    high_ids = set(unreviewed.loc[conf >= config.high_confidence, "example_id"].astype(str))
    df["suspect_unreviewed"] = ids.isin(unrev_ids).astype(float)
    df["high_confidence_unreviewed"] = ids.isin(high_ids).astype(int)
    # one column for "no missing features" instead of one expectation per feature column:
    # GX's cost is per expectation (~15 ms each), so 784 pixel columns would take ~12 s
    df[MISSING_COLUMN] = inputs.frame[list(inputs.feature_columns)].isna().sum(axis=1)
    if inputs.mismatch is not None:
        df["mismatch_p_value"] = float(inputs.mismatch["p_value"])
    return df


def _suites(inputs: GateInputs, config: GateConfig) -> tuple[list[Any], list[Any]]:
    import great_expectations.expectations as gxe

    data: list[Any] = [
        gxe.ExpectColumnValuesToBeInSet(
            column=inputs.label_column, value_set=list(range(inputs.n_classes))
        ),
        gxe.ExpectColumnValuesToBeUnique(column="example_id"),
        gxe.ExpectColumnValuesToBeBetween(column=MISSING_COLUMN, min_value=0, max_value=0),
    ]
    if config.check_row_count and inputs.registered_rows is not None:
        data.append(gxe.ExpectTableRowCountToEqual(value=int(inputs.registered_rows)))
    findings: list[Any] = [
        gxe.ExpectColumnMeanToBeBetween(
            column="suspect_unreviewed", min_value=0.0, max_value=config.max_suspect_rate
        ),
        gxe.ExpectColumnSumToBeBetween(
            column="high_confidence_unreviewed",
            min_value=0,
            max_value=config.max_unreviewed_high_confidence,
        ),
    ]
    if inputs.mismatch is not None:
        findings.append(
            gxe.ExpectColumnMinToBeBetween(
                column="mismatch_p_value", min_value=config.mismatch_alpha, max_value=1.0
            )
        )
    return data, findings


_MESSAGES = {
    "expect_column_values_to_be_in_set": "labels outside the model's {n} classes",
    "expect_column_values_to_be_unique": "repeated example ids",
    "expect_column_values_to_be_between": "rows with missing feature values",
    "expect_table_row_count_to_equal": "row count differs from the registered dataset",
    "expect_column_mean_to_be_between": "suspected label-error rate above threshold",
    "expect_column_sum_to_be_between": "unreviewed high-confidence suspects",
    "expect_column_min_to_be_between": "dataset-level mismatch between training and eval data",
}


_BOUND = {"min_value": ">=", "max_value": "<=", "value": "=="}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value) if isinstance(value, str) else str(value)


def _check_rows(
    result: Any, suite: str, n_classes: int, null_columns: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in result.results:
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in {"batch_id"}}
        res = dict(r.result or {})
        observed = res.get("observed_value", res.get("unexpected_count"))
        if isinstance(observed, np.generic):
            observed = observed.item()
        threshold = {k: kwargs[k] for k in ("min_value", "max_value", "value") if k in kwargs}
        what = _MESSAGES.get(cfg.type, cfg.type).format(n=n_classes)
        column = kwargs.get("column")
        message = f"{what}: observed {_fmt(observed)}"
        extra: dict[str, Any] = {}
        if column == MISSING_COLUMN:
            extra["null_columns"] = dict(null_columns or {})
            if null_columns:
                shown = ", ".join(f"{c}: {k}" for c, k in list(null_columns.items())[:8])
                if len(null_columns) > 8:
                    shown += f", +{len(null_columns) - 8} more"
                message += f" [null values per column: {shown}]"
        if column:
            message = f"{column}: {message}"
        if threshold:
            message += (
                " (allowed "
                + ", ".join(f"{_BOUND[k]} {_fmt(v)}" for k, v in threshold.items() if v is not None)
                + ")"
            )
        rows.append(
            {
                "suite": suite,
                "expectation": cfg.type,
                "column": column,
                "observed": observed,
                "threshold": threshold,
                "unexpected_examples": list(res.get("partial_unexpected_list") or [])[:10],
                "success": bool(r.success),
                "message": message,
                **extra,
            }
        )
    return rows


def verdict_from_result(
    checkpoint_result: Any, n_classes: int, null_columns: dict[str, int] | None = None
) -> GateVerdict:
    """Turn a GX ``CheckpointResult`` into a :class:`GateVerdict` (``null_columns``: null
    counts per feature column, reported with the missing-features check)."""
    checks: list[dict[str, Any]] = []
    for result in checkpoint_result.run_results.values():
        checks += _check_rows(result, result.suite_name, n_classes, null_columns)
    reasons = [c for c in checks if not c["success"]]
    return GateVerdict("passed" if not reasons else "blocked", reasons, checks)


VerdictSink = Callable[[GateVerdict], None]


_SINKS: dict[str, tuple[VerdictSink, int, dict[str, int]]] = {}
_ACTION_CLASS: list[type] = []


def _action_class() -> type:
    """The checkpoint action class, defined once (GX registers action types globally)."""
    if _ACTION_CLASS:
        return _ACTION_CLASS[0]
    from great_expectations.checkpoint.actions import ValidationAction

    class VerdictAction(ValidationAction):  # type: ignore[misc]
        """Checkpoint action: computes the verdict and hands it to this run's sink."""

        type: Literal["infgate_verdict"] = "infgate_verdict"
        name: str = "infgate_verdict"
        token: str = ""

        def run(self, checkpoint_result: Any, action_context: Any = None) -> dict[str, Any]:
            sink, n_classes, null_columns = _SINKS[self.token]
            verdict = verdict_from_result(checkpoint_result, n_classes, null_columns)
            sink(verdict)
            return {"verdict": verdict.verdict, "reasons": verdict.reasons}

    _ACTION_CLASS.append(VerdictAction)
    return VerdictAction


def run_gate(
    inputs: GateInputs, config: GateConfig | None = None, *, sink: VerdictSink | None = None
) -> GateVerdict:
    """Build both suites in an ephemeral GX context, run the checkpoint, return the verdict.

    Args:
        inputs: the scan's training frame and findings.
        config: thresholds (default: :func:`load_gate_config`).
        sink: called once with the verdict by the checkpoint's action (record it in SQL,
            tag the MLflow version, withdraw the deployment alias).
    """
    import great_expectations as gx

    config = config or load_gate_config()
    missing = [c for c in ("example_id", inputs.label_column) if c not in inputs.frame.columns]
    if missing:
        raise InvalidInputError(f"gate frame lacks columns {missing}")
    frame = build_gate_frame(inputs, config)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    ctx = gx.get_context(mode="ephemeral")
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = ctx.data_sources.add_pandas("infgate").add_dataframe_asset("scan")
    batch = asset.add_batch_definition_whole_dataframe("all")
    data_exp, finding_exp = _suites(inputs, config)
    definitions = []
    for suite_name, exps in (("training_data", data_exp), ("findings", finding_exp)):
        suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name, expectations=exps))
        definitions.append(
            ctx.validation_definitions.add(
                gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
            )
        )
    captured: list[GateVerdict] = []

    def capture(v: GateVerdict) -> None:
        captured.append(v)
        if sink is not None:
            sink(v)

    token = uuid.uuid4().hex
    nulls = inputs.frame[list(inputs.feature_columns)].isna().sum()
    null_columns = {str(c): int(k) for c, k in nulls.items() if k}
    _SINKS[token] = (capture, inputs.n_classes, null_columns)
    try:
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name="infgate_gate",
                validation_definitions=definitions,
                actions=[_action_class()(token=token)],
                result_format={"result_format": "SUMMARY"},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
    finally:
        _SINKS.pop(token, None)
    verdict = (
        captured[0] if captured else verdict_from_result(result, inputs.n_classes, null_columns)
    )
    log.info("gate %s: %s", verdict.verdict, verdict.summary())
    return verdict
