"""The in-process assembly of the stages: :func:`run_scan` (a registry model version) and
:func:`scan_dataset` (a model and a dataset, no registry: the MLflow evaluator, notebooks).

The Prefect flow (``infgate.flows.scan``) chains the very same stage functions as tasks.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from infgate.config import ScanConfig, config_hash
from infgate.scan.results import LoadedScan, ScanResult
from infgate.scan.stages import (
    Progress,
    analyse,
    gate_inputs,
    gate_stage,
    load_stage,
    report_stage,
    store_stage,
)
from infgate.settings import Settings

if TYPE_CHECKING:
    from infgate.data.streamed import StreamedTrainingData
    from infgate.data.training import EvalData, TrainingData
    from infgate.store import Store
    from torch import nn

__all__ = ["run_scan", "scan_dataset"]

log = logging.getLogger(__name__)


def _stored_analysis(store: Store, scan_id: int, loaded: LoadedScan) -> Any:
    """The Analysis of a stored scan (reused instead of recomputed)."""
    from infgate.detect import MismatchReport
    from infgate.scan.results import Analysis, CurvatureSummary

    info = store.get_scan(scan_id)
    ranking = store.findings_frame(scan_id)
    ranking = ranking[ranking["kind"] == "label_error"].reset_index(drop=True)
    curvature = dict(getattr(info, "curvature", None) or {})
    summary = CurvatureSummary(
        method=str(curvature.get("method", info.method)),
        damping=float(curvature.get("damping", info.damping)),
        damping_source=str(curvature.get("damping_source", "stored scan")),
        n_params=int(curvature.get("n_params", 0)),
        choice=dict(curvature.get("choice") or {}),
    )
    mismatch = MismatchReport.from_dict(info.mismatch) if info.mismatch else None
    return Analysis(ranking, None, mismatch, summary, {})


def run_scan(
    ref: str,
    *,
    version: str | None = None,
    data_uri: str | None = None,
    eval_uri: str | None = None,
    config: ScanConfig | None = None,
    settings: Settings | None = None,
    store: Store | None = None,
    progress: Progress | None = None,
) -> ScanResult:
    """Scan one registry model version in-process: load, analyse, store, gate, report.

    A stored, completed scan with the same model version, training data, evaluation data and
    :meth:`ScanConfig.identity` is reused instead of recomputed.

    Args:
        ref: ``models:/name@alias``, ``models:/name/version`` or a registered name.
        version: the version when ``ref`` is a bare name.
        data_uri: training data (default: the version's tag, then its run's dataset input).
        eval_uri: evaluation/production data for the mismatch test.
        config: the whole scan configuration (default ``ScanConfig()``).
        settings: process settings (default ``Settings.from_env()``).
        store: an open findings store (default: ``settings.db_url``, migrated).
        progress: called with each stage's name as it starts (progress bars).
    """
    from infgate.review.queue import enqueue_scan
    from infgate.store import Store

    config = config or ScanConfig()
    settings = settings or Settings.from_env()
    note = progress or (lambda _stage: None)
    if store is None:
        store = Store.from_url(settings.db_url)
        store.upgrade()
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    note("load")
    loaded = load_stage(
        ref, version=version, data_uri=data_uri, eval_uri=eval_uri, config=config, settings=settings
    )
    timings["load"] = time.perf_counter() - t_all
    assert loaded.mv is not None
    existing = store.find_scan(
        loaded.mv.name,
        loaded.mv.version,
        loaded.train.data.content_hash,
        config_hash(scan_identity(config, loaded)),
    )
    reused = existing is not None and existing.status == "completed"
    if reused:
        assert existing is not None
        scan_id = existing.id
        analysis = _stored_analysis(store, scan_id, loaded)
        log.info("scan %d already covers this version, data and config: reusing it", scan_id)
    else:
        analysis = analyse(loaded, config, progress=note)
        timings.update(analysis.timings)
        note("store")
        t0 = time.perf_counter()
        scan_id = store_stage(store, loaded, config, analysis, scan_identity(config, loaded))
        timings["store"] = time.perf_counter() - t0
    queued = enqueue_scan(store, scan_id) if config.detect.enqueue else 0
    note("gate")
    t0 = time.perf_counter()
    verdict = gate_stage(store, loaded, scan_id, config, settings)
    timings["gate"] = time.perf_counter() - t0
    note("report")
    t0 = time.perf_counter()
    report = report_stage(loaded, analysis, verdict, scan_id, config, settings)
    timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    return ScanResult(
        scan_id=scan_id,
        subject=loaded.subject,
        mv=loaded.mv,
        verdict=verdict,
        analysis=analysis,
        n_rows=len(loaded.train.data),
        queued=queued,
        timings=timings,
        reused=reused,
        report=report,
    )


def scan_identity(config: ScanConfig, loaded: LoadedScan) -> dict[str, Any]:
    """What a stored scan must match to be reused: the config's identity, the evaluation
    data's hash and the damping actually in force (a re-logged weight decay changes it)."""
    return {
        **config.identity(),
        "eval_hash": loaded.eval_hash,
        "weight_decay": loaded.weight_decay if config.influence.damping_from_run else None,
    }


def scan_dataset(
    model: nn.Module,
    train: TrainingData | StreamedTrainingData,
    *,
    eval_data: EvalData | None = None,
    config: ScanConfig | None = None,
    weight_decay: float | None = None,
    true_labels: np.ndarray | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> ScanResult:
    """Scan a model and a dataset without a registry or a store: analyse, gate, report.

    The same stages as :func:`run_scan` (one curvature fit; the gate on the findings); nothing
    is stored, queued or tagged, and no MLflow scan run is created (``scan_id`` is ``None``).

    Args:
        model: the trained classifier (it is put in eval mode by the caller).
        train: the data to scan, in memory or streamed from Parquet
            (:class:`~infgate.data.streamed.StreamedTrainingData`: the same findings).
        eval_data: evaluation data for the mismatch test.
        config: the scan configuration.
        weight_decay: the model's training weight decay (the damping when none is set).
        true_labels: clean labels when known (recall figures).
        name: what to call the subject in the report.
    """
    from infgate.data import StreamedTrainingData
    from infgate.registry import ResolvedData, StreamedData, check_data_fits
    from infgate.scan.stages import streamed_resolved

    config = config or ScanConfig()
    note = progress or (lambda _stage: None)
    t_all = time.perf_counter()
    if isinstance(train, StreamedTrainingData):  # features stay in the Parquet file
        n_classes = check_data_fits(model, train, train.labels)
        resolved = streamed_resolved(
            StreamedData(
                train, train.source_uri or str(train.path), train.name, None, "label", train.plan
            )
        )
    else:
        n_classes = check_data_fits(model, train.features, train.labels)
        resolved = ResolvedData(
            train, train.to_frame(), train.source_uri or "in-memory", train.name, None, "label"
        )
    if eval_data is not None:
        check_data_fits(model, eval_data.features, eval_data.labels, what="evaluation data")
    loaded = LoadedScan(
        mv=None,
        model=model,
        train=resolved,
        eval_data=eval_data,
        n_classes=n_classes,
        true_labels=true_labels,
        weight_decay=weight_decay,
        subject=name or train.name,
    )
    analysis = analyse(loaded, config, progress=note)
    note("gate")
    from infgate.gate import run_gate

    verdict = run_gate(gate_inputs(loaded, analysis, mismatch=analysis.mismatch), config.gate)
    note("report")
    report = report_stage(loaded, analysis, verdict, None, config)
    timings = {**analysis.timings, "total": time.perf_counter() - t_all}
    return ScanResult(
        scan_id=None,
        subject=loaded.subject,
        mv=None,
        verdict=verdict,
        analysis=analysis,
        n_rows=len(train),
        queued=0,
        timings=timings,
        report=report,
    )
