"""One scan, stage by stage: load -> influence -> detect -> store -> gate -> report.

Each stage is a plain function so the Prefect flow (``flows/scan.py``) can wrap it as a
task with its own retries and caching, and :func:`run_scan` chains them in-process (CLI,
MLflow evaluator plugin, tests). This module never imports ``flows`` or ``plugins``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from infgate.config import InfluenceConfig
from infgate.data.training import EvalData
from infgate.errors import InvalidInputError
from infgate.gate.core import GateConfig, GateInputs, GateVerdict, load_gate_config, run_gate
from infgate.registry.core import (
    ModelVersionRef,
    ResolvedData,
    check_data_fits,
    load_model,
    load_training_data,
    resolve_model_version,
    set_gate_tags,
    withdraw_alias,
)
from infgate.scan.records import findings_to_store, flat_params, json_safe
from torch import nn

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "LoadedScan",
    "ScanOptions",
    "ScanOutcome",
    "detect_stage",
    "gate_stage",
    "influence_stage",
    "load_stage",
    "report_stage",
    "run_scan",
    "store_stage",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanOptions:
    """What a scan computes (hashed with the model version and dataset into the scan id).

    Attributes:
        influence: influence-stage options (back-end, damping, batch size, device).
        detect_options: extra keyword options for ``find_label_errors``.
        mismatch_alpha: significance level of the train-vs-eval mismatch test.
        store_top: besides every suspect, store this many top-ranked rows as findings.
        explain_top: explain this many top suspects (supporting/opposing examples); 0 = off.
        enqueue: put the scan's suspects in the relabel queue.
        shard_size: when the influence stage has a Dask cluster (the flow runs on
            ``DaskTaskRunner``, e.g. ``infgate scan --dask-workers 2``) and the training set
            has more rows than this, the per-example sweep runs in shards of this many rows
            on the cluster's workers; the curvature is fitted once and shared. Results
            equal the single-process sweep up to floating-point summation order.
    """

    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    detect_options: dict[str, Any] = field(default_factory=dict)
    mismatch_alpha: float = 0.05
    store_top: int = 100
    explain_top: int = 20
    enqueue: bool = True
    shard_size: int = 20_000

    def __post_init__(self) -> None:
        if not 0.0 < self.mismatch_alpha < 1.0:
            raise InvalidInputError(
                f"`mismatch_alpha` must be in (0, 1), got {self.mismatch_alpha!r}"
            )
        for name in ("store_top", "explain_top"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise InvalidInputError(f"`{name}` must be an int >= 0, got {v!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise InvalidInputError(f"`shard_size` must be an int >= 1, got {self.shard_size!r}")
        object.__setattr__(self, "detect_options", dict(self.detect_options))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; its hash identifies the scan with model version and data."""
        d = dataclasses.asdict(self)
        d["influence"] = self.influence.to_dict()
        return d


@dataclass(frozen=True)
class LoadedScan:
    """The load stage's output: the version, its model and its data."""

    mv: ModelVersionRef
    model: nn.Module
    train: ResolvedData
    eval_data: EvalData | None
    n_classes: int
    true_labels: np.ndarray | None = None


@dataclass(frozen=True)
class ScanOutcome:
    """Everything one scan produced."""

    scan_id: int
    mv: ModelVersionRef
    verdict: GateVerdict
    ranking: pd.DataFrame
    mismatch: dict[str, Any] | None
    n_rows: int
    queued: int
    timings: dict[str, float]
    reused: bool = False
    report_dir: Path | None = None
    scan_run_id: str | None = None


def _load_eval(mv: ModelVersionRef, eval_uri: str | None, train: ResolvedData) -> EvalData | None:
    from infgate.registry.core import _download, _read_frame

    uri = eval_uri or mv.tags.get("infgate.eval_data")
    if not uri:
        return None
    df = _read_frame(_download(uri))
    cols = list(train.data.feature_names or [])
    if not cols:
        cols = [c for c in train.frame.columns if c not in {"example_id", train.label_column}]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InvalidInputError(f"evaluation data {uri!r} lacks feature columns {missing[:5]}")
    labels = df[train.label_column].to_numpy() if train.label_column in df.columns else None
    ids: Any = df["example_id"].to_numpy() if "example_id" in df.columns else None
    return EvalData(df[cols].to_numpy(np.float32), labels, ids, name="eval")


def load_stage(
    ref: str,
    *,
    version: str | None = None,
    data_uri: str | None = None,
    eval_uri: str | None = None,
    tracking_uri: str | None = None,
) -> LoadedScan:
    """Resolve the version, load its model and training (and evaluation) data, check fit."""
    mv = resolve_model_version(ref, version=version, tracking_uri=tracking_uri)
    model = load_model(mv, tracking_uri=tracking_uri)
    train = load_training_data(mv, data_uri=data_uri, tracking_uri=tracking_uri)
    n_classes = check_data_fits(model, train.data.features, train.data.labels)
    eval_data = _load_eval(mv, eval_uri, train)
    if eval_data is not None:
        check_data_fits(model, eval_data.features, eval_data.labels, what="evaluation data")
    return LoadedScan(mv, model, train, eval_data, n_classes, train.true_labels)


def influence_stage(
    loaded: LoadedScan, options: ScanOptions, *, client: Client | None = None
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, float]]:
    """The influence stage: fit the curvature once, then the full label-error ranking
    (``find_label_errors``) and the explanations of the top suspects (train -> suspect
    influence, ``explain``) from the same fitted scorer.

    With a Dask ``client`` and more than ``options.shard_size`` training rows, the ranking's
    per-example sweep runs in shards on the cluster (:func:`~infgate.detect.loo.
    sharded_approximate_loo`); the fit, the filtered model and the explanations stay here.
    """
    from infgate.detect import explain, find_label_errors
    from infgate.influence import InfluenceScorer

    cfg = options.influence
    t0 = time.perf_counter()
    scorer = InfluenceScorer(
        loaded.model,
        loaded.train.data,
        method=cfg.method,
        damping=cfg.damping,
        batch_size=cfg.batch_size,
        device=cfg.device,
        progress=False,
        backend_options=cfg.backend_options or None,
    )
    n = len(loaded.train.data)
    shard = client is not None and n > options.shard_size
    if shard:
        log.info(
            "influence stage: %d rows in shards of %d on the Dask cluster", n, options.shard_size
        )
    ranking = find_label_errors(
        loaded.model,
        loaded.train.data,
        scorer=scorer,
        progress=False,
        shard_size=options.shard_size if shard else None,
        client=client if shard else None,
        **options.detect_options,
    )
    timings = {"influence": time.perf_counter() - t0}
    if shard:
        timings["influence_shards"] = float(-(-n // options.shard_size))
    explanations = None
    suspects = ranking[ranking["is_suspect"].astype(bool)]
    if options.explain_top and len(suspects):
        t0 = time.perf_counter()
        examples = suspects["example_id"].head(options.explain_top).astype(str).tolist()
        explanations = explain(scorer, loaded.train.data, examples, top=5)
        timings["explain"] = time.perf_counter() - t0
    return ranking, explanations, timings


def detect_stage(
    loaded: LoadedScan, options: ScanOptions
) -> tuple[dict[str, Any] | None, dict[str, float]]:
    """The dataset-level mismatch test against the evaluation data, when there is any."""
    from infgate.detect import detect_mismatch

    if loaded.eval_data is None:
        return None, {}
    t0 = time.perf_counter()
    report = detect_mismatch(
        loaded.model,
        loaded.train.data,
        loaded.eval_data,
        alpha=options.mismatch_alpha,
        damping=options.influence.damping,
    )
    return report.to_dict(), {"mismatch": time.perf_counter() - t0}


def store_stage(
    store: Any,
    loaded: LoadedScan,
    options: ScanOptions,
    ranking: pd.DataFrame,
    mismatch: dict[str, Any] | None,
    explanations: pd.DataFrame | None,
    timings: dict[str, float],
) -> int:
    """Write the scan (findings, mismatch report) in one transaction; returns the scan id."""
    from infgate.store import ScanRecord

    data = loaded.train.data
    record = ScanRecord(
        model_name=loaded.mv.name,
        model_version=loaded.mv.version,
        run_id=loaded.mv.run_id,
        dataset_hash=data.content_hash,
        dataset_uri=loaded.train.uri,
        n_rows=len(data),
        classes=list(data.classes) if data.classes else None,
        config=options.to_dict(),
        method=options.influence.method,
        damping=float(options.influence.damping or 0.0),
        timings=timings,
        findings=findings_to_store(loaded, ranking, mismatch, options),
        mismatch=json_safe(mismatch) if mismatch else None,
        image_shape=data.image_shape,
        feature_names=list(data.feature_names) if data.feature_names else None,
        explanations=explanations,
    )
    return int(store.record_scan(record))


def gate_stage(
    store: Any,
    loaded: LoadedScan,
    scan_id: int,
    *,
    config: GateConfig | None = None,
    tracking_uri: str | None = None,
) -> GateVerdict:
    """Run the gate on a stored scan; record the verdict in SQL and MLflow, withdraw the alias.

    Findings with a queue decision count as reviewed, so re-running this after review (or
    after a new scan of fixed data) is how a blocked version becomes promotable.
    """
    config = config or load_gate_config()
    info = store.get_scan(scan_id)
    findings = store.findings_frame(scan_id)
    findings = findings[findings["kind"] == "label_error"]
    unreviewed = store.unreviewed_findings(scan_id, kind="label_error")
    reviewed = frozenset(
        set(findings["example_id"].astype(str)) - set(unreviewed["example_id"].astype(str))
    )
    frame = loaded.train.frame
    features = [c for c in frame.columns if c not in {"example_id", loaded.train.label_column}]
    inputs = GateInputs(
        frame=frame,
        label_column=loaded.train.label_column,
        feature_columns=features,
        n_classes=loaded.n_classes,
        findings=findings,
        reviewed_ids=reviewed,
        mismatch=info.mismatch,
        registered_rows=loaded.train.registered_rows,
    )

    def record(v: GateVerdict) -> None:
        store.record_gate(scan_id, verdict=v.verdict, reasons=json_safe(v.reasons))
        set_gate_tags(
            loaded.mv,
            scan_id=scan_id,
            verdict=v.verdict,
            reason=v.summary(),
            tracking_uri=tracking_uri,
        )
        if not v.passed:
            withdraw_alias(loaded.mv, config.deployment_alias, tracking_uri=tracking_uri)

    return run_gate(inputs, config, sink=record)


def report_stage(
    loaded: LoadedScan,
    ranking: pd.DataFrame,
    mismatch: dict[str, Any] | None,
    verdict: GateVerdict,
    scan_id: int,
    options: ScanOptions,
    *,
    report_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
) -> tuple[Any, str | None]:
    """Write the report files; log metrics, params and files as an MLflow scan run."""
    from infgate.registry.core import log_scan_run
    from infgate.scan.report import write_report

    report = write_report(
        Path(report_dir) if report_dir else None,
        loaded=loaded,
        ranking=ranking,
        mismatch=mismatch,
        verdict=verdict,
        scan_id=scan_id,
    )
    scan_run_id = None
    if log_to_mlflow:
        scan_run_id = log_scan_run(
            loaded.mv,
            metrics=report.metrics,
            params={"scan_id": scan_id, **flat_params(options.to_dict())},
            artifact_dir=report.directory,
            tracking_uri=tracking_uri,
        )
    return report, scan_run_id


def run_scan(
    ref: str,
    *,
    version: str | None = None,
    data_uri: str | None = None,
    eval_uri: str | None = None,
    options: ScanOptions | None = None,
    gate_config: GateConfig | None = None,
    store: Any = None,
    tracking_uri: str | None = None,
    report_dir: str | Path | None = None,
    log_to_mlflow: bool = True,
) -> ScanOutcome:
    """Scan one model version in-process: load, influence + detect, store, gate, report.

    A stored scan with the same model version, dataset hash and options is reused instead of
    recomputed (its findings are read back from SQL).
    """
    from infgate.review.queue import enqueue_scan
    from infgate.store import Store, config_hash

    options = options or ScanOptions()
    if store is None:
        store = Store.from_url(None)
        store.upgrade()
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    loaded = load_stage(
        ref, version=version, data_uri=data_uri, eval_uri=eval_uri, tracking_uri=tracking_uri
    )
    timings["load"] = time.perf_counter() - t_all
    existing = store.find_scan(
        loaded.mv.name,
        loaded.mv.version,
        loaded.train.data.content_hash,
        config_hash(options.to_dict()),
    )
    reused = existing is not None and existing.status == "completed"
    if reused:
        scan_id = existing.id
        ranking = store.findings_frame(scan_id)
        ranking = ranking[ranking["kind"] == "label_error"].reset_index(drop=True)
        mismatch = existing.mismatch
        log.info("scan %d already covers this version, data and options: reusing it", scan_id)
    else:
        ranking, explanations, stage_t = influence_stage(loaded, options)
        mismatch, mismatch_t = detect_stage(loaded, options)
        timings.update(stage_t)
        timings.update(mismatch_t)
        t0 = time.perf_counter()
        scan_id = store_stage(store, loaded, options, ranking, mismatch, explanations, timings)
        timings["store"] = time.perf_counter() - t0
    queued = enqueue_scan(store, scan_id) if options.enqueue else 0
    t0 = time.perf_counter()
    verdict = gate_stage(store, loaded, scan_id, config=gate_config, tracking_uri=tracking_uri)
    timings["gate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report, scan_run_id = report_stage(
        loaded,
        ranking,
        mismatch,
        verdict,
        scan_id,
        options,
        report_dir=report_dir,
        tracking_uri=tracking_uri,
        log_to_mlflow=log_to_mlflow,
    )
    timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    return ScanOutcome(
        scan_id=scan_id,
        mv=loaded.mv,
        verdict=verdict,
        ranking=ranking,
        mismatch=mismatch,
        n_rows=len(loaded.train.data),
        queued=queued,
        timings=timings,
        reused=reused,
        report_dir=report.directory,
        scan_run_id=scan_run_id,
    )
