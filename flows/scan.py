"""``scan_model_version``: the Prefect flow that scans one registry model version.

Tasks: load (registry I/O, retried) -> influence (cached on model version + dataset hash +
options) -> detect -> store (database I/O, retried) -> gate -> report (Prefect markdown
and table artifacts, MLflow scan run). The flow ends Failed when the gate blocks, so a
blocked version is visible in the Prefect UI and to anything waiting on the run.

The influence stage runs in-process by default; give ``influence_deployment`` (e.g.
``"influence-stage/gpu"``, declared in ``flows/prefect.yaml`` on a GPU work pool, or
``"influence-stage/local"`` from ``infgate flows serve``) to run it as its own deployment via
``run_deployment``: a child flow run that returns the ranking, explanations and timings as
JSON (``flows/influence_payload.py``), so both paths store the same scan. The child's result
is persisted in the result storage of the machine that ran it and read back by this flow run:
one machine needs nothing more; a GPU pool on another machine needs result storage both
sides can read (``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``, e.g. an S3 bucket block, set on
both workers; or ``PREFECT_RESULTS_LOCAL_STORAGE_PATH`` on a filesystem both mount at the
same path), else the parent fails reading the result.

Large training sets shard over Dask: run the flow on ``DaskTaskRunner``
(``scan_model_version.with_options(task_runner=dask_task_runner(workers=4))``, or
``infgate scan --dask-workers 4`` / ``--dask-address tcp://scheduler:8786``) and the
influence task splits its per-example sweep into shards of ``options["shard_size"]`` rows
(default 20,000) across the cluster; the curvature is fitted once and shared.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from infgate.gate.core import GateVerdict, load_gate_config
from infgate.scan.stages import (
    LoadedScan,
    ScanOptions,
    detect_stage,
    gate_stage,
    influence_stage,
    load_stage,
    report_stage,
    store_stage,
)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.states import Completed, Failed, State

__all__ = [
    "dask_task_runner",
    "influence_stage_flow",
    "open_store",
    "options_from_dict",
    "scan_model_version",
]

_STORES: dict[str, Any] = {}
IO_RETRIES = 3
IO_DELAYS = [1.0, 5.0, 15.0]


def open_store(db_url: str | None) -> Any:
    """One migrated :class:`~infgate.store.Store` per URL per process."""
    from infgate.store import Store

    key = db_url or ""
    if key not in _STORES:
        store = Store.from_url(db_url)
        store.upgrade()
        _STORES[key] = store
    return _STORES[key]


def options_from_dict(options: dict[str, Any] | None) -> ScanOptions:
    """Rebuild :class:`ScanOptions` from flow parameters (JSON)."""
    from infgate.config import InfluenceConfig

    raw = dict(options or {})
    influence = InfluenceConfig(**raw.pop("influence", {}))
    return ScanOptions(influence=influence, **raw)


def _scan_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Model version (and its stored model's identity) + dataset content hash + options hash:
    same inputs, same scan. The model source (``models:/m-<id>`` or the run) keeps two
    registries that both have a ``name/1`` apart."""
    import hashlib

    from infgate.store import config_hash

    loaded: LoadedScan = parameters["loaded"]
    opts: ScanOptions = parameters["options"]
    model_id = hashlib.sha256(f"{loaded.mv.source}|{loaded.mv.run_id}".encode()).hexdigest()
    return (
        f"infgate-{context.task.name}-{loaded.mv.name}-{loaded.mv.version}-{model_id[:12]}-"
        f"{loaded.train.data.content_hash[:16]}-{config_hash(opts.to_dict())[:16]}"
    )


@task(name="load", retries=IO_RETRIES, retry_delay_seconds=IO_DELAYS, cache_policy=NO_CACHE)
def load_task(
    model: str,
    version: str | None,
    data_uri: str | None,
    eval_uri: str | None,
    tracking_uri: str | None,
) -> LoadedScan:
    """Resolve the version in the registry; load its model, training and eval data."""
    return load_stage(
        model, version=version, data_uri=data_uri, eval_uri=eval_uri, tracking_uri=tracking_uri
    )


@task(
    name="influence",
    cache_key_fn=_scan_cache_key,
    cache_expiration=dt.timedelta(days=30),
    persist_result=True,
)
def influence_task(
    loaded: LoadedScan, options: ScanOptions
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, float]]:
    """Curvature fit, label-error ranking of every example, explanations of the suspects.

    On ``DaskTaskRunner`` this task runs on a Dask worker; it then hands the per-example
    sweep of a large training set to the whole cluster in shards (``options.shard_size``),
    seceding from its worker slot while it waits (``distributed.worker_client``).
    """
    with _dask_client() as client:
        return influence_stage(loaded, options, client=client)


@contextmanager
def _dask_client() -> Iterator[Any]:
    """A client of the Dask cluster this task runs on, or ``None`` outside Dask."""
    try:
        from distributed import get_worker, worker_client

        get_worker()
    except (ImportError, ValueError):
        yield None
        return
    with worker_client() as client:
        yield client


def dask_task_runner(workers: int | None = None, address: str | None = None) -> Any:
    """A ``DaskTaskRunner`` for :func:`scan_model_version` (``.with_options(task_runner=...)``):
    a local cluster of ``workers`` one-thread processes, or the scheduler at ``address``."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers or 2,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


@task(
    name="detect",
    cache_key_fn=_scan_cache_key,
    cache_expiration=dt.timedelta(days=30),
    persist_result=True,
)
def detect_task(
    loaded: LoadedScan, options: ScanOptions
) -> tuple[dict[str, Any] | None, dict[str, float]]:
    """Dataset-level mismatch test against the evaluation data (if any)."""
    return detect_stage(loaded, options)


@task(name="store", retries=IO_RETRIES, retry_delay_seconds=IO_DELAYS, cache_policy=NO_CACHE)
def store_task(
    db_url: str | None,
    loaded: LoadedScan,
    options: ScanOptions,
    ranking: pd.DataFrame,
    mismatch: dict[str, Any] | None,
    explanations: pd.DataFrame | None,
    timings: dict[str, float],
) -> tuple[int, int]:
    """Write the scan in one transaction and queue its suspects; returns (scan id, queued)."""
    from infgate.review.queue import enqueue_scan

    store = open_store(db_url)
    scan_id = store_stage(store, loaded, options, ranking, mismatch, explanations, timings)
    queued = enqueue_scan(store, scan_id) if options.enqueue else 0
    return scan_id, queued


@task(name="gate", retries=IO_RETRIES, retry_delay_seconds=IO_DELAYS, cache_policy=NO_CACHE)
def gate_task(
    db_url: str | None,
    loaded: LoadedScan,
    scan_id: int,
    gate_config: str | None,
    tracking_uri: str | None,
) -> GateVerdict:
    """Great Expectations checkpoint; records the verdict in SQL and MLflow, guards the alias."""
    return gate_stage(
        open_store(db_url),
        loaded,
        scan_id,
        config=load_gate_config(gate_config),
        tracking_uri=tracking_uri,
    )


@task(name="report", retries=2, retry_delay_seconds=[2.0, 10.0], cache_policy=NO_CACHE)
def report_task(
    loaded: LoadedScan,
    ranking: pd.DataFrame,
    mismatch: dict[str, Any] | None,
    verdict: GateVerdict,
    scan_id: int,
    options: ScanOptions,
    report_dir: str | None,
    tracking_uri: str | None,
) -> dict[str, Any]:
    """Report files + MLflow scan run + Prefect artifacts (markdown summary, suspects table)."""
    report, run_id = report_stage(
        loaded,
        ranking,
        mismatch,
        verdict,
        scan_id,
        options,
        report_dir=report_dir,
        tracking_uri=tracking_uri,
    )
    key = f"infgate-{loaded.mv.name}-v{loaded.mv.version}".lower().replace("_", "-")
    create_markdown_artifact(report.markdown, key=f"{key}-summary", description="infgate scan")
    if report.top_table:
        create_table_artifact(
            report.top_table, key=f"{key}-suspects", description="top suspected label errors"
        )
    return {"metrics": report.metrics, "report_dir": str(report.directory), "scan_run_id": run_id}


@flow(name="influence-stage", persist_result=True, result_serializer="json")
def influence_stage_flow(
    model: str,
    version: str | None = None,
    data_uri: str | None = None,
    options: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """The influence stage alone (for a GPU work pool), started by ``scan_model_version``.

    ``$INFGATE_DEVICE`` (the GPU pool sets ``cuda``) replaces an ``"auto"`` device in
    ``options``. The result is persisted as JSON in *this* worker's result storage, and the
    parent flow run reads it from there: on one machine the default local storage works; across
    machines set ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`` (e.g. an S3 bucket block) on both
    workers, or a ``PREFECT_RESULTS_LOCAL_STORAGE_PATH`` on a filesystem both mount at the same
    path.

    Returns:
        :func:`infgate.flows.influence_payload.stage_to_payload`: the ranking, the explanations of
        the top suspects, the stage timings and the hash of the data ranked.
    """
    import dataclasses
    import os

    from infgate.flows.influence_payload import stage_to_payload

    opts = options_from_dict(options)
    device = os.environ.get("INFGATE_DEVICE")
    if device and opts.influence.device == "auto":
        influence = dataclasses.replace(opts.influence, device=device)
        opts = dataclasses.replace(opts, influence=influence)
    loaded = load_stage(model, version=version, data_uri=data_uri, tracking_uri=tracking_uri)
    ranking, explanations, timings = influence_stage(loaded, opts)
    return stage_to_payload(
        ranking, explanations, timings, dataset_hash=loaded.train.data.content_hash
    )


@flow(name="scan-model-version", persist_result=True)
def scan_model_version(
    model: str,
    version: str | None = None,
    data_uri: str | None = None,
    eval_uri: str | None = None,
    options: dict[str, Any] | None = None,
    gate_config: str | None = None,
    db_url: str | None = None,
    tracking_uri: str | None = None,
    report_dir: str | None = None,
    influence_deployment: str | None = None,
) -> State:
    """Scan one model version: load, influence, detect, store, gate, report.

    Args:
        model: ``models:/name@alias``, ``models:/name/version`` or a registered name.
        version: the version, when ``model`` is a bare name.
        data_uri: training data URI (default: the version's tag, then its run's dataset).
        eval_uri: evaluation/production data for the mismatch test (optional).
        options: :class:`~infgate.scan.stages.ScanOptions` as a dict.
        gate_config: path of a gate thresholds YAML (default: the documented defaults).
        db_url: findings store URL (default ``$INFGATE_DB_URL`` or ``sqlite:///infgate.db``).
        tracking_uri: MLflow tracking/registry URI (default: MLflow's own resolution).
        report_dir: where report files go (default: a temporary directory).
        influence_deployment: run the influence stage as this deployment (GPU pool).

    Returns:
        Completed with the scan summary, or Failed when the gate blocks the version.
    """
    logger = get_run_logger()
    opts = options_from_dict(options)
    loaded = load_task(model, version, data_uri, eval_uri, tracking_uri)
    if influence_deployment:
        from infgate.flows.influence_payload import run_influence_deployment

        ranking, explanations, timings = run_influence_deployment(
            influence_deployment,
            model=loaded.mv.uri,
            data_uri=data_uri,
            options=opts.to_dict(),
            tracking_uri=tracking_uri,
            dataset_hash=loaded.train.data.content_hash,
        )
    else:
        # submitted, not called: on DaskTaskRunner it runs on the cluster and can shard there
        ranking, explanations, timings = influence_task.submit(loaded, opts).result()
    mismatch, mismatch_t = detect_task(loaded, opts)
    timings = {**timings, **mismatch_t}
    scan_id, queued = store_task(db_url, loaded, opts, ranking, mismatch, explanations, timings)
    verdict = gate_task(db_url, loaded, scan_id, gate_config, tracking_uri)
    report = report_task(
        loaded, ranking, mismatch, verdict, scan_id, opts, report_dir, tracking_uri
    )
    summary = {
        "model": loaded.mv.name,
        "version": loaded.mv.version,
        "scan_id": scan_id,
        "verdict": verdict.verdict,
        "reasons": verdict.reasons,
        "queued": queued,
        **report,
    }
    logger.info("scan %d of %s: gate %s", scan_id, loaded.mv.uri, verdict.verdict)
    if not verdict.passed:
        return Failed(
            message=f"gate blocked {loaded.mv.uri} (scan {scan_id}): {verdict.summary()}",
            data=summary,
        )
    return Completed(message=f"gate passed {loaded.mv.uri} (scan {scan_id})", data=summary)
