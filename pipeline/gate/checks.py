"""The deployment gate's checks: Great Expectations suites built from a scan.

Two expectation suites run in one checkpoint over one frame (a row per training example):

* training data: label values in the model's class set, no missing features, unique
  example ids, row count as registered;
* findings: suspected label-error rate (unreviewed suspects only) <= ``max_suspect_rate``,
  at most ``max_unreviewed_high_confidence`` unreviewed high-confidence suspects, and no
  dataset-level mismatch (the scan's own test decision, at the scan's ``mismatch.alpha``).

A suspect with a decision in the relabel queue counts as reviewed, so a version passes
once the data is fixed (a new scan passes) or every blocking finding has a decision.
The checkpoint's action hands the typed verdict to a sink (SQL + MLflow tags + alias
withdrawal in production, see :mod:`infgate.scan.stages`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from infgate.config import GateConfig
from infgate.errors import InvalidInputError
from infgate.gate.verdict import CHECK_NAMES, GateCheck, GateVerdict, fmt_value
from infgate.settings import quiet_third_party_env

__all__ = ["GateInputs", "build_gate_frame", "run_gate", "verdict_from_result"]

log = logging.getLogger(__name__)


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
        mismatch_p_value: the scan's dataset-level mismatch p-value (``None``: no eval data).
        mismatch_alpha: the level that test was run at (its rejection blocks).
        registered_rows: row count MLflow registered for the dataset, if known.
    """

    frame: pd.DataFrame
    label_column: str
    feature_columns: list[str]
    n_classes: int
    findings: pd.DataFrame
    reviewed_ids: frozenset[str] = frozenset()
    mismatch_p_value: float | None = None
    mismatch_alpha: float | None = None
    registered_rows: int | None = None


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
    if inputs.mismatch_p_value is not None:
        df["mismatch_p_value"] = float(inputs.mismatch_p_value)
    return df


def _suites(inputs: GateInputs, config: GateConfig) -> tuple[list[Any], list[Any]]:
    import great_expectations.expectations as gxe

    def named(name: str, exp: Any) -> Any:
        exp.meta = {"infgate_check": name}
        return exp

    data: list[Any] = [
        named(
            "labels_in_range",
            gxe.ExpectColumnValuesToBeInSet(
                column=inputs.label_column, value_set=list(range(inputs.n_classes))
            ),
        ),
        named("unique_ids", gxe.ExpectColumnValuesToBeUnique(column="example_id")),
        named(
            "missing_features",
            gxe.ExpectColumnValuesToBeBetween(column=MISSING_COLUMN, min_value=0, max_value=0),
        ),
    ]
    if config.check_row_count and inputs.registered_rows is not None:
        data.append(
            named("row_count", gxe.ExpectTableRowCountToEqual(value=int(inputs.registered_rows)))
        )
    findings: list[Any] = [
        named(
            "suspect_rate",
            gxe.ExpectColumnMeanToBeBetween(
                column="suspect_unreviewed", min_value=0.0, max_value=config.max_suspect_rate
            ),
        ),
        named(
            "high_confidence_suspects",
            gxe.ExpectColumnSumToBeBetween(
                column="high_confidence_unreviewed",
                min_value=0,
                max_value=config.max_unreviewed_high_confidence,
            ),
        ),
    ]
    if inputs.mismatch_p_value is not None:
        alpha = 0.05 if inputs.mismatch_alpha is None else float(inputs.mismatch_alpha)
        findings.append(
            named(
                "mismatch",
                gxe.ExpectColumnMinToBeBetween(
                    column="mismatch_p_value", min_value=alpha, max_value=1.0
                ),
            )
        )
    return data, findings


_BOUND = {"min_value": "min", "max_value": "max", "value": "equal"}


def _check_rows(
    result: Any, suite: str, n_classes: int, null_columns: dict[str, int] | None = None
) -> list[GateCheck]:
    rows: list[GateCheck] = []
    for r in result.results:
        cfg = r.expectation_config
        name = str((cfg.meta or {}).get("infgate_check", cfg.type))
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in {"batch_id"}}
        res = dict(r.result or {})
        observed = res.get("observed_value", res.get("unexpected_count"))
        if isinstance(observed, np.generic):
            observed = observed.item()
        threshold = {
            _BOUND[k]: kwargs[k] for k in ("min_value", "max_value", "value") if k in kwargs
        }
        what = CHECK_NAMES.get(name, name)
        if name == "labels_in_range":
            what = f"labels outside the model's {n_classes} classes"
        column = kwargs.get("column")
        details: dict[str, Any] = {}
        message = f"{what}: observed {fmt_value(observed)}"
        if name == "missing_features":
            details["null_columns"] = dict(null_columns or {})
            if null_columns:
                shown = ", ".join(f"{c}: {k}" for c, k in list(null_columns.items())[:8])
                if len(null_columns) > 8:
                    shown += f", +{len(null_columns) - 8} more"
                message += f" [null values per column: {shown}]"
        check = GateCheck(
            name=name,
            suite=suite,
            success=bool(r.success),
            observed=observed,
            threshold=threshold,
            message="",
            column=column,
            expectation=cfg.type,
            unexpected_examples=tuple(list(res.get("partial_unexpected_list") or [])[:10]),
            details=details,
        )
        if check.allowed:
            message += f" (allowed {check.allowed})"
        rows.append(GateCheck(**{**check.__dict__, "message": message}))
    return rows


def verdict_from_result(
    checkpoint_result: Any, n_classes: int, null_columns: dict[str, int] | None = None
) -> GateVerdict:
    """Turn a GX ``CheckpointResult`` into a :class:`GateVerdict` (``null_columns``: null
    counts per feature column, reported with the missing-features check)."""
    checks: list[GateCheck] = []
    for result in checkpoint_result.run_results.values():
        checks += _check_rows(result, result.suite_name, n_classes, null_columns)
    return GateVerdict.from_checks(checks)


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
            return {"verdict": verdict.verdict, "failed": [c.name for c in verdict.reasons]}

    _ACTION_CLASS.append(VerdictAction)
    return VerdictAction


def run_gate(
    inputs: GateInputs, config: GateConfig | None = None, *, sink: VerdictSink | None = None
) -> GateVerdict:
    """Build both suites in an ephemeral GX context, run the checkpoint, return the verdict.

    Args:
        inputs: the scan's training frame and findings.
        config: thresholds (default: :class:`~infgate.config.GateConfig`'s defaults).
        sink: called once with the verdict by the checkpoint's action (record it in SQL,
            tag the MLflow version, withdraw the deployment alias).
    """
    import great_expectations as gx

    config = config or GateConfig()
    missing = [c for c in ("example_id", inputs.label_column) if c not in inputs.frame.columns]
    if missing:
        raise InvalidInputError(f"gate frame lacks columns {missing}")
    frame = build_gate_frame(inputs, config)
    quiet_third_party_env()
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
