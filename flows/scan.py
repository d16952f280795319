"""``scan_model_version``: the Prefect flow that scans one registry model version.

Tasks: load (registry I/O, retried on I/O errors only) -> analyse (influence + detect on one
curvature fit; cached on model version, training and evaluation data hashes, the config's
identity and the code version) -> store (database I/O, retried) -> gate -> report (Prefect
markdown and table artifacts, MLflow scan run). The flow ends Failed when the gate blocks, so a
blocked version is visible in the Prefect UI and to anything waiting on the run.

The influence stage runs in-process by default; give ``influence_deployment`` (e.g.
``"influence-stage/gpu"``, declared in ``flows/prefect.yaml`` on a GPU work pool, or
``"influence-stage/local"`` from ``infgate flows serve``) to run it as its own deployment via
``run_deployment``: a child flow run that returns the ranking, explanations and timings as
JSON (``infgate.flows.influence_payload``), so both paths store the same scan. The child's result
is persisted in the result storage of the machine that ran it and read back by this flow run:
one machine needs nothing more; a GPU pool on another machine needs result storage both
sides can read (``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``, e.g. an S3 bucket block, set on
both workers; or ``PREFECT_RESULTS_LOCAL_STORAGE_PATH`` on a filesystem both mount at the
same path), else the parent fails reading the result.

Large training sets shard over Dask: run the flow on ``DaskTaskRunner``
(``scan_model_version.with_options(task_runner=dask_task_runner(workers=4))``, or
``infgate scan --dask-workers 4`` / ``--dask-address tcp://scheduler:8786``) and the
analyse task splits its per-example sweep into shards of ``config.influence.shard_size`` rows
(default 20,000) across the cluster; the curvature is fitted once and shared.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infgate.config import ScanConfig, config_hash
from infgate.errors import InfgateError
from infgate.flows.artifacts import publish_artifacts, scan_run_name
from infgate.flows.runtime import RedactingFlow, mark_gate_blocked, resolve_db, tag_this_run
from infgate.gate import GateVerdict
from infgate.scan import (
    Analysis,
    LoadedScan,
    ReportOutcome,
    analyse,
    gate_stage,
    load_stage,
    report_stage,
    scan_identity,
    store_stage,
)
from infgate.settings import Settings
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import flow_run as _flow_run
from prefect.states import Completed, Failed, State

__all__ = [
    "code_version",
    "dask_task_runner",
    "default_config",
    "influence_stage_flow",
    "open_store",
    "scan_model_version",
]

_STORES: dict[str, Any] = {}
IO_RETRIES = 3
IO_DELAYS = [1.0, 5.0, 15.0]


def default_config(settings: Settings) -> ScanConfig:
    """The config a run without one uses: ``$INFGATE_SCAN_CONFIG`` (a ScanConfig YAML) else
    the defaults, with ``$INFGATE_GATE_CONFIG``'s thresholds as its gate part when set."""
    from infgate.gate import load_gate_config

    config = (
        ScanConfig.from_yaml(settings.scan_config_path)
        if settings.scan_config_path
        else ScanConfig()
    )
    if settings.gate_config_path:
        import dataclasses

        config = dataclasses.replace(config, gate=load_gate_config(settings.gate_config_path))
    return config


def open_store(db_url: str | None) -> Any:
    """One migrated :class:`~infgate.store.Store` per URL per process."""
    from infgate.store import Store

    key = db_url or Settings.from_env().db_url
    if key not in _STORES:
        store = Store.from_url(key)
        store.upgrade()
        _STORES[key] = store
    return _STORES[key]


def _retry_io_only(task: Any, task_run: Any, state: State) -> bool:
    """Retry transient failures; never an InfgateError (bad input fails the same way again)."""
    try:
        state.result()
    except InfgateError:
        return False
    except Exception:
        return True
    return False


@functools.cache
def code_version() -> str:
    """infgate's version plus a hash of its installed source: part of every cache key, so
    an upgrade (or a local edit) never serves a result computed by other code."""
    import infgate

    root = Path(infgate.__file__).resolve().parent
    h = hashlib.sha256(infgate.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        h.update(path.read_bytes())
    return f"{infgate.__version__}-{h.hexdigest()[:12]}"


def _analysis_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Every input of the analysis: the model version and its stored model's identity, the
    training and evaluation data hashes, the config's identity (and the logged weight decay
    in force) and the code version."""
    loaded: LoadedScan = parameters["loaded"]
    config: ScanConfig = parameters["config"]
    assert loaded.mv is not None
    model_id = hashlib.sha256(f"{loaded.mv.source}|{loaded.mv.run_id}".encode()).hexdigest()
    parts = [
        context.task.name,
        loaded.mv.name,
        loaded.mv.version,
        model_id[:12],
        loaded.train.data.content_hash[:16],
        (loaded.eval_hash or "no-eval")[:16],
        config_hash(scan_identity(config, loaded))[:16],
        code_version(),
    ]
    return "infgate-" + "-".join(parts)


@task(
    name="load",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_DELAYS,
    retry_condition_fn=_retry_io_only,
    cache_policy=NO_CACHE,
)
def load_task(
    model: str,
    version: str | None,
    data_uri: str | None,
    eval_uri: str | None,
    settings: Settings,
    config: ScanConfig | None = None,
) -> LoadedScan:
    """Resolve the version in the registry; load its model, training and eval data (columns
    and shape per ``config.data``)."""
    return load_stage(
        model,
        version=version,
        data_uri=data_uri,
        eval_uri=eval_uri,
        config=config,
        settings=settings,
    )


@task(
    name="analyse",
    cache_key_fn=_analysis_cache_key,
    cache_expiration=dt.timedelta(days=30),
    persist_result=True,
)
def analyse_task(loaded: LoadedScan, config: ScanConfig) -> Analysis:
    """One curvature fit; the label-error ranking of every example, the explanations of the
    suspects and the mismatch test against the evaluation data, all from that fit.

    On ``DaskTaskRunner`` this task runs on a Dask worker; it then hands the per-example
    sweep of a large training set to the whole cluster in shards, seceding from its worker
    slot while it waits (``distributed.worker_client``).
    """
    with _dask_client() as client:
        return analyse(loaded, config, client=client)


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
    name="store",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_DELAYS,
    retry_condition_fn=_retry_io_only,
    cache_policy=NO_CACHE,
)
def store_task(
    db_url: str | None, loaded: LoadedScan, config: ScanConfig, analysis: Analysis
) -> tuple[int, int]:
    """Write the scan in one transaction and queue its suspects; returns (scan id, queued)."""
    from infgate.review.queue import enqueue_scan

    store = open_store(db_url)
    scan_id = store_stage(store, loaded, config, analysis, scan_identity(config, loaded))
    queued = enqueue_scan(store, scan_id) if config.detect.enqueue else 0
    return scan_id, queued


@task(
    name="gate",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_DELAYS,
    retry_condition_fn=_retry_io_only,
    cache_policy=NO_CACHE,
)
def gate_task(
    db_url: str | None, loaded: LoadedScan, scan_id: int, config: ScanConfig, settings: Settings
) -> GateVerdict:
    """Great Expectations checkpoint; records the verdict in SQL and MLflow, guards the alias."""
    return gate_stage(open_store(db_url), loaded, scan_id, config, settings)


@task(name="report", retries=2, retry_delay_seconds=[2.0, 10.0], cache_policy=NO_CACHE)
def report_task(
    loaded: LoadedScan,
    analysis: Analysis,
    verdict: GateVerdict,
    scan_id: int,
    config: ScanConfig,
    settings: Settings,
) -> ReportOutcome:
    """Report files + MLflow scan run."""
    return report_stage(loaded, analysis, verdict, scan_id, config, settings)


@flow(name="influence-stage", persist_result=True, result_serializer="json")
def influence_stage_flow(
    model: str,
    version: str | None = None,
    data_uri: str | None = None,
    eval_uri: str | None = None,
    config: ScanConfig | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """The analysis alone (for a GPU work pool), started by ``scan_model_version``.

    ``$INFGATE_DEVICE`` (the GPU pool sets ``cuda``) replaces an ``"auto"`` device. The result
    is persisted as JSON in *this* worker's result storage, and the parent flow run reads it
    from there: on one machine the default local storage works; across machines set
    ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`` (e.g. an S3 bucket block) on both workers, or a
    ``PREFECT_RESULTS_LOCAL_STORAGE_PATH`` on a filesystem both mount at the same path.

    Returns:
        :func:`infgate.flows.influence_payload.stage_to_payload` of the analysis.
    """
    from infgate.flows.influence_payload import stage_to_payload

    settings = Settings.from_env(tracking_uri=tracking_uri)
    config = config or default_config(settings)
    if settings.device and config.influence.device == "auto":
        config = config.with_overrides(**{"influence.device": settings.device})
    loaded = load_stage(
        model,
        version=version,
        data_uri=data_uri,
        eval_uri=eval_uri,
        config=config,
        settings=settings,
    )
    analysis = analyse(loaded, config)
    return stage_to_payload(analysis, dataset_hash=loaded.train.data.content_hash)


@flow(name="scan-model-version", flow_run_name=scan_run_name, persist_result=True)
def scan_model_version(
    model: str,
    version: str | None = None,
    data_uri: str | None = None,
    eval_uri: str | None = None,
    config: ScanConfig | None = None,
    db_url: str | None = None,
    tracking_uri: str | None = None,
    influence_deployment: str | None = None,
) -> State:
    """Scan one model version: load, analyse, store, gate, report.

    Args:
        model: ``models:/name@alias``, ``models:/name/version`` or a registered name.
        version: the version, when ``model`` is a bare name.
        data_uri: training data URI (default: the version's tag, then its run's dataset).
        eval_uri: evaluation/production data for the mismatch test (optional).
        config: the whole scan configuration (:class:`~infgate.config.ScanConfig`; the
            deployment form shows its fields).
        db_url: the findings store, as a reference resolved inside the run
            (:func:`~infgate.flows.runtime.resolve_db`): ``None`` (the worker's
            ``$INFGATE_DB_URL``, else ``sqlite:///infgate.db``), ``"env:NAME"``,
            ``"secret:<Prefect Secret block>"`` or a URL. Prefect stores a URL's password
            masked, so a deployment (or a re-run from the UI) needs a reference.
        tracking_uri: MLflow tracking/registry URI (default: MLflow's own resolution).
        influence_deployment: run the analysis as this deployment (GPU pool).

    Returns:
        Completed with the scan summary, or Failed (one-line reason, the same summary as its
        data) when the gate blocks: a final state, logged without a traceback.
    """
    logger = get_run_logger()
    tag_this_run()
    settings = Settings.from_env(db_url=resolve_db(db_url), tracking_uri=tracking_uri)
    config = config or default_config(settings)
    loaded = load_task(model, version, data_uri, eval_uri, settings, config)
    assert loaded.mv is not None
    if influence_deployment:
        from infgate.flows.influence_payload import run_influence_deployment

        analysis = run_influence_deployment(
            influence_deployment,
            model=loaded.mv.uri,
            data_uri=data_uri,
            eval_uri=eval_uri,
            config=config,
            tracking_uri=settings.tracking_uri,
            dataset_hash=loaded.train.data.content_hash,
        )
    else:
        # submitted, not called: on DaskTaskRunner it runs on the cluster and can shard there
        analysis = analyse_task.submit(loaded, config).result()
    scan_id, queued = store_task(settings.db_url, loaded, config, analysis)
    verdict = gate_task(settings.db_url, loaded, scan_id, config, settings)
    report = report_task(loaded, analysis, verdict, scan_id, config, settings)
    publish_artifacts(loaded, report)
    summary = {
        "model": loaded.mv.name,
        "version": loaded.mv.version,
        "scan_id": scan_id,
        "verdict": verdict.verdict,
        "reasons": [c.to_dict() for c in verdict.reasons],
        "queued": queued,
        "n_rows": len(loaded.train.data),
        "n_suspects": analysis.n_suspects,
        "curvature": analysis.curvature.to_dict(),
        "metrics": report.metrics,
        "report_dir": str(report.directory),
        "scan_run_id": report.scan_run_id,
    }
    logger.info("scan %d of %s: gate %s", scan_id, loaded.mv.uri, verdict.verdict)
    if not verdict.passed:
        reason = " ".join(verdict.summary().split())  # one line in the UI and the logs
        mark_gate_blocked(_flow_run.id)
        return Failed(
            message=f"gate blocked {loaded.mv.uri} (scan {scan_id}): {reason}", data=summary
        )
    return Completed(message=f"gate passed {loaded.mv.uri} (scan {scan_id})", data=summary)


RedactingFlow.of(scan_model_version)
RedactingFlow.of(influence_stage_flow)
