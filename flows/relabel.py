"""``relabel``: apply a scan's queue decisions, log the corrected dataset, re-run the gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infgate.flows.runtime import RedactingFlow, mark_gate_blocked, resolve_db
from infgate.flows.scan import IO_DELAYS, IO_RETRIES, open_store
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

__all__ = ["relabel"]


@task(
    name="apply-decisions", retries=IO_RETRIES, retry_delay_seconds=IO_DELAYS, cache_policy=NO_CACHE
)
def apply_task(
    scan_id: int, db_url: str | None, tracking_uri: str | None, out_dir: str | None
) -> dict[str, Any]:
    """Corrected dataset version from the scan's resolved decisions (Parquet + MLflow)."""
    from infgate.registry import load_training_data, resolve_model_version
    from infgate.registry.datasets import training_data_path
    from infgate.review.queue import apply_decisions, scanned_dataset

    store = open_store(resolve_db(db_url))
    info = store.get_scan(scan_id)
    mv = resolve_model_version(
        info.model_name, version=info.model_version, tracking_uri=tracking_uri
    )
    data: Any
    if info.columns:  # decoded as the scan did; the corrected file keeps its layout
        path = training_data_path(mv, data_uri=info.dataset_uri, tracking_uri=tracking_uri)
        data = scanned_dataset(store, scan_id, path)
    else:  # a scan stored before plans were kept: resolve the columns again
        data = load_training_data(mv, data_uri=info.dataset_uri, tracking_uri=tracking_uri).data
    out = (
        Path(out_dir or ".")
        / f"{info.model_name}-v{info.model_version}-scan{scan_id}-corrected.parquet"
    )
    applied = apply_decisions(
        store,
        data,
        scan_id=scan_id,
        out_path=out,
        tracking_uri=tracking_uri,
        note=f"relabel flow for scan {scan_id}",
    )
    return {
        "model": mv.uri,
        "path": str(applied.path) if applied.path else None,
        "relabeled": applied.n_relabeled,
        "dropped": applied.n_dropped,
        "kept": applied.n_kept,
        "mlflow_run_id": applied.mlflow_run_id,
        "content_hash": applied.content_hash,
    }


@task(name="gate-recheck", retries=IO_RETRIES, retry_delay_seconds=IO_DELAYS, cache_policy=NO_CACHE)
def recheck_task(
    model: str, db_url: str | None, tracking_uri: str | None, gate_config: str | None
) -> dict[str, Any]:
    """Re-run the gate on the version's latest scan (decisions now count as reviews)."""
    from infgate.config import ScanConfig
    from infgate.gate import load_gate_config
    from infgate.scan.promote import recheck
    from infgate.settings import Settings

    settings = Settings.from_env(db_url=resolve_db(db_url), tracking_uri=tracking_uri)
    gate = load_gate_config(gate_config or settings.gate_config_path)
    scan_id, verdict = recheck(
        open_store(settings.db_url), model, config=ScanConfig(gate=gate), settings=settings
    )
    return {
        "scan_id": scan_id,
        "verdict": verdict.verdict,
        "reasons": [c.to_dict() for c in verdict.reasons],
    }


@flow(name="relabel")
def relabel(
    scan_id: int,
    db_url: str | None = None,
    tracking_uri: str | None = None,
    out_dir: str | None = None,
    gate_config: str | None = None,
) -> State:
    """Apply decisions, log the corrected dataset, re-run the gate; Failed if still blocked."""
    logger = get_run_logger()
    applied = apply_task(scan_id, db_url, tracking_uri, out_dir)
    gate = recheck_task(applied["model"], db_url, tracking_uri, gate_config)
    summary = {**applied, "gate": gate}
    logger.info(
        "scan %d: %d relabeled, %d dropped; gate %s",
        scan_id,
        applied["relabeled"],
        applied["dropped"],
        gate["verdict"],
    )
    if gate["verdict"] != "passed":
        from prefect.runtime import flow_run

        mark_gate_blocked(flow_run.id)
        return Failed(message=f"gate still blocks {applied['model']}", data=summary)
    return Completed(message=f"gate passes {applied['model']}", data=summary)


RedactingFlow.of(relabel)
