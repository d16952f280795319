"""The analysis (influence + detect) output as JSON, so it can travel between flow runs on different
machines: ``influence-stage`` (a GPU work pool) returns it, ``scan-model-version`` reads it.

JSON rather than Prefect's default pickle: the two sides may run different pandas or numpy
builds, and the stored result stays readable in the Prefect UI. Each frame travels column by
column with its dtypes (and ``attrs``), so the parent gets back the frames the in-process
path would have produced: same rows, order, dtypes and float64 values.
"""

from __future__ import annotations

from typing import Any, cast

import pandas as pd
from infgate.config import ScanConfig
from infgate.errors import DatasetMismatchError, InfluenceRunError
from infgate.scan.records import json_safe
from infgate.scan.results import Analysis, CurvatureSummary

__all__ = [
    "InfluenceRunError",
    "frame_from_payload",
    "frame_to_payload",
    "run_influence_deployment",
    "stage_from_payload",
    "stage_to_payload",
]

PAYLOAD_VERSION = 2


def frame_to_payload(frame: pd.DataFrame) -> dict[str, Any]:
    """``{"columns", "dtypes", "data", "attrs"}``: plain Python values, one list per column."""
    columns = [str(c) for c in frame.columns]
    return {
        "columns": columns,
        "dtypes": [str(t) for t in frame.dtypes],
        "data": {c: json_safe(frame[c].tolist()) for c in columns},
        "attrs": json_safe(dict(frame.attrs)),
    }


def frame_from_payload(payload: dict[str, Any]) -> pd.DataFrame:
    """Inverse of :func:`frame_to_payload`."""
    columns, dtypes = payload["columns"], payload["dtypes"]
    frame = pd.DataFrame(
        {c: pd.Series(payload["data"][c], dtype=t) for c, t in zip(columns, dtypes, strict=True)},
        columns=columns,
    )
    frame.attrs.update(payload.get("attrs") or {})
    return frame


def stage_to_payload(analysis: Analysis, *, dataset_hash: str) -> dict[str, Any]:
    """An :class:`~infgate.scan.results.Analysis` as JSON, plus the hash of the data ranked."""
    mm = analysis.mismatch
    return {
        "version": PAYLOAD_VERSION,
        "dataset_hash": dataset_hash,
        "ranking": frame_to_payload(analysis.ranking),
        "explanations": None
        if analysis.explanations is None
        else frame_to_payload(analysis.explanations),
        "mismatch": None if mm is None else json_safe(mm.to_dict()),
        "curvature": json_safe(analysis.curvature.to_dict()),
        "timings": {str(k): float(v) for k, v in analysis.timings.items()},
    }


def stage_from_payload(payload: Any, *, dataset_hash: str) -> Analysis:
    """The :class:`~infgate.scan.results.Analysis` back from :func:`stage_to_payload`.

    Raises:
        InfluenceRunError: ``payload`` is not a payload of this version.
        DatasetMismatchError: it ranks other data than ``dataset_hash`` (the version's
            training data changed between the parent's load and the influence run).
    """
    from infgate.detect import MismatchReport

    if not isinstance(payload, dict) or payload.get("version") != PAYLOAD_VERSION:
        got = payload.get("version") if isinstance(payload, dict) else type(payload).__name__
        raise InfluenceRunError(
            f"influence-stage returned {got!r}; expected a payload of version {PAYLOAD_VERSION}"
        )
    if payload["dataset_hash"] != dataset_hash:
        raise DatasetMismatchError(
            f"the influence run ranked data with hash {payload['dataset_hash'][:16]}..., "
            f"but this scan loaded {dataset_hash[:16]}..."
        )
    explanations = payload.get("explanations")
    mismatch = payload.get("mismatch")
    return Analysis(
        ranking=frame_from_payload(payload["ranking"]),
        explanations=None if explanations is None else frame_from_payload(explanations),
        mismatch=None if mismatch is None else MismatchReport.from_dict(mismatch),
        curvature=CurvatureSummary(**payload["curvature"]),
        timings={str(k): float(v) for k, v in payload["timings"].items()},
    )


def run_influence_deployment(
    deployment: str,
    *,
    model: str,
    data_uri: str | None,
    eval_uri: str | None,
    config: ScanConfig,
    tracking_uri: str | None,
    dataset_hash: str,
    poll_interval: float = 2.0,
) -> Analysis:
    """Run the ``influence-stage`` deployment as a child flow run, wait, read its result.

    The child persists its result where *its* worker's result storage points; this process
    must be able to read it (same machine, or shared result storage: see ``flows/scan.py``).

    Raises:
        InfluenceRunError: the child run ended in any state but Completed.
    """
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    # a sync caller (this flow) gets the FlowRun itself, not a coroutine
    run = cast(
        FlowRun,
        run_deployment(
            deployment,
            parameters={
                "model": model,
                "data_uri": data_uri,
                "eval_uri": eval_uri,
                "config": config.to_dict(),
                "tracking_uri": tracking_uri,
            },
            timeout=None,
            poll_interval=poll_interval,
        ),
    )
    state = run.state
    if state is None or not state.is_completed():
        how = f"{state.name}: {state.message}" if state else "without a state"
        raise InfluenceRunError(
            f"influence run {run.name!r} ({run.id}) of {deployment} ended {how}"
        )
    return stage_from_payload(state.result(), dataset_hash=dataset_hash)
