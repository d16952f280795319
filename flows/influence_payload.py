"""The influence stage's output as JSON, so it can travel between flow runs on different
machines: ``influence-stage`` (a GPU work pool) returns it, ``scan-model-version`` reads it.

JSON rather than Prefect's default pickle: the two sides may run different pandas or numpy
builds, and the stored result stays readable in the Prefect UI. Each frame travels column by
column with its dtypes (and ``attrs``), so the parent gets back the frames the in-process
path would have produced: same rows, order, dtypes and float64 values.
"""

from __future__ import annotations

from typing import Any, cast

import pandas as pd
from infgate.errors import DatasetMismatchError, InfluenceRunError
from infgate.scan.records import json_safe

__all__ = [
    "InfluenceRunError",
    "frame_from_payload",
    "frame_to_payload",
    "run_influence_deployment",
    "stage_from_payload",
    "stage_to_payload",
]

PAYLOAD_VERSION = 1


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


def stage_to_payload(
    ranking: pd.DataFrame,
    explanations: pd.DataFrame | None,
    timings: dict[str, float],
    *,
    dataset_hash: str,
) -> dict[str, Any]:
    """What ``influence_stage`` returned, plus the hash of the data it ranked."""
    return {
        "version": PAYLOAD_VERSION,
        "dataset_hash": dataset_hash,
        "ranking": frame_to_payload(ranking),
        "explanations": None if explanations is None else frame_to_payload(explanations),
        "timings": {str(k): float(v) for k, v in timings.items()},
    }


def stage_from_payload(
    payload: Any, *, dataset_hash: str
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, float]]:
    """``(ranking, explanations, timings)`` back from :func:`stage_to_payload`.

    Raises:
        InfluenceRunError: ``payload`` is not a payload of this version.
        DatasetMismatchError: it ranks other data than ``dataset_hash`` (the version's
            training data changed between the parent's load and the influence run).
    """
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
    return (
        frame_from_payload(payload["ranking"]),
        None if explanations is None else frame_from_payload(explanations),
        {str(k): float(v) for k, v in payload["timings"].items()},
    )


def run_influence_deployment(
    deployment: str,
    *,
    model: str,
    data_uri: str | None,
    options: dict[str, Any],
    tracking_uri: str | None,
    dataset_hash: str,
    poll_interval: float = 2.0,
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, float]]:
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
                "options": options,
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
