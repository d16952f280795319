"""The scan's stages as plain functions: load -> analyse (influence + detect, one curvature
fit) -> store -> gate -> report.

``run_scan`` / ``scan_dataset`` (:mod:`infgate.scan.run`), the Prefect flow
(``infgate.flows.scan``) and the MLflow evaluator all call these same functions with one
:class:`~infgate.config.ScanConfig`; each stage hands the next a typed result
(:mod:`infgate.scan.results`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infgate.config import ScanConfig
from infgate.gate import GateInputs, GateVerdict, run_gate
from infgate.registry import (
    ModelVersionRef,
    check_data_fits,
    load_model,
    load_training_data,
    resolve_model_version,
    set_gate_tags,
    stream_training_data,
    withdraw_alias,
)
from infgate.scan.records import findings_to_store, json_safe
from infgate.scan.results import Analysis, CurvatureSummary, LoadedScan, ReportOutcome
from infgate.settings import Settings

if TYPE_CHECKING:
    from distributed import Client
    from infgate.influence import InfluenceScorer
    from infgate.store import Store

__all__ = [
    "analyse",
    "detect_stage",
    "fit_stage",
    "gate_stage",
    "influence_stage",
    "load_stage",
    "loo_stage",
    "report_stage",
    "store_stage",
]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def load_stage(
    ref: str,
    *,
    version: str | None = None,
    data_uri: str | None = None,
    eval_uri: str | None = None,
    config: ScanConfig | None = None,
    settings: Settings | None = None,
) -> LoadedScan:
    """Resolve the version, load its model and training (and evaluation) data, check fit.

    Columns and input shape: ``config.data``, then the version's tags, then the model's
    signature, then the data (:mod:`infgate.data.columns`). The training features stream
    from Parquet in batches when ``config.data.stream`` says so (``auto``: a file too large
    to hold, :func:`infgate.data.streamed.should_stream`); every later stage works on either."""
    from infgate.data.columns import ColumnOptions
    from infgate.registry import load_eval_data, logged_weight_decay

    data_cfg = (config or ScanConfig()).data
    settings = settings or Settings()
    tracking_uri = settings.tracking_uri
    mv = resolve_model_version(ref, version=version, tracking_uri=tracking_uri)
    model = load_model(mv, tracking_uri=tracking_uri)
    columns = ColumnOptions(**data_cfg.column_options())
    eval_file = eval_uri or mv.tags.get("infgate.eval_data")
    length_from = (eval_file,) if eval_file else ()  # ragged tokens: one padded length
    if _streams(mv, data_uri, data_cfg.stream, settings):
        train = streamed_resolved(
            stream_training_data(
                mv,
                data_uri=data_uri,
                columns=columns,
                use_signature=data_cfg.use_signature,
                tracking_uri=tracking_uri,
                model=model,
                length_from=length_from,
            )
        )
    else:
        train = load_training_data(
            mv,
            data_uri=data_uri,
            columns=columns,
            use_signature=data_cfg.use_signature,
            tracking_uri=tracking_uri,
            model=model,
            length_from=length_from,
        )
    if train.plan is not None and train.plan.n_inputs > 1:  # forward(input_ids, mask, ...)
        from infgate.influence import SplitInputs

        model = SplitInputs(model, train.plan.n_inputs)
    n_classes = check_data_fits(model, _fit_rows(train.data), train.data.labels, plan=train.plan)
    eval_data = load_eval_data(mv, eval_uri, train)
    if eval_data is not None:
        check_data_fits(
            model, eval_data.features, eval_data.labels, what="evaluation data", plan=train.plan
        )
    return LoadedScan(
        mv,
        model,
        train,
        eval_data,
        n_classes,
        train.true_labels,
        weight_decay=logged_weight_decay(mv, tracking_uri=tracking_uri),
        subject=f"{mv.name} v{mv.version}",
        eval_uri=(eval_uri or mv.tags.get("infgate.eval_data")) if eval_data is not None else None,
    )


def _fit_rows(data: Any) -> Any:
    """What :func:`check_data_fits` reads: the streamed data itself, else the features."""
    from infgate.data import StreamedTrainingData

    return data if isinstance(data, StreamedTrainingData) else data.features


def _streams(mv: ModelVersionRef, data_uri: str | None, mode: str, settings: Settings) -> bool:
    """``data.stream``: ``always``/``never`` as said; ``auto`` asks
    :func:`~infgate.data.streamed.should_stream` about the resolved training file."""
    if mode != "auto":
        return mode == "always"
    from infgate.data.streamed import should_stream
    from infgate.registry.datasets import training_data_path

    path = training_data_path(mv, data_uri, settings.tracking_uri)
    stream, why = should_stream(path, settings.memory_budget_mb)
    log.info("training data %s: %s (data.stream=auto)", "streams" if stream else "read whole", why)
    return stream


def streamed_resolved(streamed: Any) -> Any:
    """A :class:`~infgate.registry.datasets.StreamedData` as the scan's training input: the
    features stay in the file; the frame the gate and the report read holds ids and labels
    only (the features passed the NaN/inf check when the file was opened, so the gate's
    missing-value count is 0 for every row, as it is for in-memory data that got this far)."""
    import pandas as pd
    from infgate.registry import ResolvedData

    data = streamed.data
    frame = pd.DataFrame(
        {"example_id": data.example_ids.astype(str), streamed.label_column: data.labels}
    )
    return ResolvedData(
        data,
        frame,
        streamed.uri,
        streamed.origin,
        streamed.registered_rows,
        streamed.label_column,
        streamed.true_labels,
        streamed.plan,
        streamed.spec,
    )


def _damping(loaded: LoadedScan, config: ScanConfig) -> tuple[float | None, str]:
    cfg = config.influence
    if cfg.damping is not None:
        return cfg.damping, "config"
    if cfg.damping_from_run and loaded.weight_decay:
        return loaded.weight_decay, "training run weight_decay"
    return None, "back-end rule"


def fit_stage(loaded: LoadedScan, config: ScanConfig) -> InfluenceScorer:
    """Fit the curvature ONCE for the whole scan (every consumer below reuses it)."""
    from infgate.influence import InfluenceScorer

    cfg = config.influence
    damping, _ = _damping(loaded, config)
    return InfluenceScorer(
        loaded.model,
        loaded.train.data,
        method=cfg.method,
        damping=damping,
        params=list(cfg.params) if cfg.params else None,
        loss=cfg.loss,
        batch_size=cfg.batch_size,
        device=cfg.device,
        progress=False,
        backend_options=cfg.backend_options or None,
    )


def curvature_summary(
    scorer: InfluenceScorer, loaded: LoadedScan, config: ScanConfig
) -> CurvatureSummary:
    """What the fit used: back-end, damping and its source, what ``auto`` chose and why."""
    _, source = _damping(loaded, config)
    choice: Any = getattr(scorer, "choice", None)
    if choice is not None and hasattr(choice, "to_dict"):
        choice = choice.to_dict()
    elif scorer.auto:
        choice = dict(scorer.auto)
    backend_rule = str(scorer.backend.describe().get("damping_rule", "back-end default"))
    return CurvatureSummary(
        method=scorer.backend.name,
        damping=float(scorer.backend.damping),
        damping_source=backend_rule if source == "back-end rule" else source,
        n_params=int(scorer.engine.n_params),
        choice=dict(choice or {}),
        fit_seconds=float(scorer.fit_seconds),
    )


def influence_stage(
    loaded: LoadedScan,
    config: ScanConfig,
    scorer: InfluenceScorer,
    *,
    client: Client | None = None,
    loo: Any = None,
) -> tuple[Any, Any, dict[str, float]]:
    """The label-error ranking of every example and the explanations of the top suspects,
    from the fitted ``scorer``. With labelled evaluation data the ranking also carries each
    example's influence on the evaluation loss (``eval_influence``: one extra solve).
    With a Dask ``client`` and more than ``shard_size`` rows the
    ranking's per-example sweep runs in shards on the cluster. ``loo``: the leave-one-out
    sweep already run (:func:`loo_stage`), reused instead of a second one."""
    from infgate.detect import NoiseModelOptions, explain, find_label_errors

    det, n = config.detect, len(loaded.train.data)
    shard = loo is None and client is not None and n > config.influence.shard_size
    t0 = time.perf_counter()
    options = dict(det.options)
    if det.method != "default":
        options["method"] = det.method
    if "noise_options" not in options:
        options["noise_options"] = NoiseModelOptions(
            calibration=det.noise_calibration, posterior=det.noise_posterior
        )
    plan = loaded.train.plan
    if plan is not None and plan.pad_token_id is not None:
        options.setdefault("pad_token_id", plan.pad_token_id)
    labelled_eval = loaded.eval_data
    if labelled_eval is not None and labelled_eval.labels is None:
        labelled_eval = None  # production data without labels: no I_up,loss on it
    ranking = find_label_errors(
        loaded.model,
        loaded.train.data,
        scorer=scorer,
        eval_data=labelled_eval,
        progress=False,
        shard_size=config.influence.shard_size if shard else None,
        client=client if shard else None,
        loo=loo,
        **options,
    )
    timings = {"rank": time.perf_counter() - t0}
    if shard:
        timings["influence_shards"] = float(-(-n // config.influence.shard_size))
    explanations = None
    suspects = ranking[ranking["is_suspect"].astype(bool)]
    if det.explain_top and len(suspects):
        t0 = time.perf_counter()
        examples = suspects["example_id"].head(det.explain_top).astype(str).tolist()
        explanations = explain(scorer, loaded.train.data, examples, top=det.explain_k)
        timings["explain"] = time.perf_counter() - t0
    return ranking, explanations, timings


def loo_stage(
    loaded: LoadedScan, config: ScanConfig, scorer: InfluenceScorer, *, client: Client | None = None
) -> tuple[Any, dict[str, float]]:
    """The leave-one-out sweep over every training row, ONCE per scan: the ranking and the
    mismatch test both read it. With a Dask ``client`` and more than ``shard_size`` rows it
    runs in shards on the cluster."""
    from infgate.detect.loo import approximate_loo, sharded_approximate_loo

    n, size = len(loaded.train.data), config.influence.shard_size
    if client is not None and n > size:
        out = sharded_approximate_loo(scorer, shard_size=size, client=client)
        return out, {"influence_shards": float(-(-n // size))}
    return approximate_loo(scorer), {}


def detect_stage(
    loaded: LoadedScan, config: ScanConfig, scorer: InfluenceScorer, *, loo: Any = None
) -> Any:
    """The dataset-level mismatch test against the evaluation data (``None`` without any),
    on the scan's fitted curvature (and its leave-one-out sweep, ``loo``, when given)."""
    from infgate.detect import MismatchDetector

    if loaded.eval_data is None:
        return None
    mm = config.mismatch
    plan = loaded.train.plan
    detector = MismatchDetector(
        loaded.model,
        loaded.train.data,
        pad_token_id=plan.pad_token_id if plan is not None else None,
        n_inputs=plan.n_inputs if plan is not None else 1,
        scorer=scorer,
        max_reference=mm.max_reference,
        n_permutations=mm.n_permutations,
        seed=mm.seed,
        loo=loo,
    )
    return detector.test(loaded.eval_data, alpha=mm.alpha)


def analyse(
    loaded: LoadedScan,
    config: ScanConfig,
    *,
    client: Client | None = None,
    progress: Progress | None = None,
) -> Analysis:
    """Influence + detect on ONE curvature fit: ranking, explanations, mismatch report."""
    note = progress or (lambda _stage: None)
    t0 = time.perf_counter()
    note("fit")
    scorer = fit_stage(loaded, config)
    timings = {"fit": time.perf_counter() - t0}
    note("influence")
    t0 = time.perf_counter()
    loo, t_loo = loo_stage(loaded, config, scorer, client=client)
    timings.update(t_loo, loo=time.perf_counter() - t0)
    ranking, explanations, t_rank = influence_stage(loaded, config, scorer, loo=loo)
    timings.update(t_rank)
    t0 = time.perf_counter()
    note("detect")
    mismatch = detect_stage(loaded, config, scorer, loo=loo)
    if mismatch is not None:
        timings["mismatch"] = time.perf_counter() - t0
    timings["influence"] = sum(v for k, v in timings.items() if k != "influence_shards")
    return Analysis(
        ranking, explanations, mismatch, curvature_summary(scorer, loaded, config), timings
    )


def store_stage(
    store: Store,
    loaded: LoadedScan,
    config: ScanConfig,
    analysis: Analysis,
    identity: dict[str, Any],
) -> int:
    """Write the scan (findings, mismatch report, the whole config) in one transaction;
    returns the scan id. ``identity`` (``run.scan_identity``) is what a later scan must
    match to reuse this one."""
    from infgate.store import ScanRecord

    if loaded.mv is None:
        raise ValueError("store_stage needs a registry model version (scan_dataset stores nothing)")
    data = loaded.train.data
    mismatch = analysis.mismatch.to_dict() if analysis.mismatch is not None else None
    record = ScanRecord(
        model_name=loaded.mv.name,
        model_version=loaded.mv.version,
        run_id=loaded.mv.run_id,
        dataset_hash=data.content_hash,
        dataset_uri=loaded.train.uri,
        n_rows=len(data),
        classes=list(data.classes) if data.classes else None,
        config={**config.to_dict(), "identity": identity},
        method=analysis.curvature.method,
        damping=analysis.curvature.damping,
        timings=analysis.timings,
        findings=findings_to_store(loaded, analysis.ranking, mismatch, config.detect.store_top),
        mismatch=json_safe(mismatch) if mismatch else None,
        image_shape=data.image_shape,
        feature_names=list(data.feature_names) if data.feature_names else None,
        explanations=analysis.explanations,
        n_outputs=int(loaded.n_classes),
        curvature=json_safe(analysis.curvature.to_dict()),
        columns=loaded.train.plan.to_dict() if loaded.train.plan is not None else None,
    )
    return int(store.record_scan(record))


def gate_inputs(
    loaded: LoadedScan,
    analysis_or_findings: Any,
    *,
    reviewed: frozenset[str] = frozenset(),
    mismatch: Any = None,
) -> GateInputs:
    """The gate's inputs from a loaded scan and its label-error findings."""
    findings = getattr(analysis_or_findings, "ranking", analysis_or_findings)
    frame = loaded.train.frame
    features = [c for c in loaded.train.feature_columns if c in frame.columns]
    return GateInputs(
        frame=frame,
        label_column=loaded.train.label_column,
        feature_columns=features,
        n_classes=loaded.n_classes,
        findings=findings,
        reviewed_ids=reviewed,
        mismatch_p_value=None if mismatch is None else float(mismatch.p_value),
        mismatch_alpha=None if mismatch is None else float(mismatch.alpha),
        registered_rows=loaded.train.registered_rows,
    )


def gate_stage(
    store: Store,
    loaded: LoadedScan,
    scan_id: int,
    config: ScanConfig,
    settings: Settings | None = None,
) -> GateVerdict:
    """Run the gate on a stored scan; record the verdict in SQL and MLflow; withdraw the
    deployment alias from a blocked version.

    Findings with a queue decision count as reviewed, so re-running this after review (or
    after a new scan of fixed data) is how a blocked version becomes promotable.
    """
    settings = settings or Settings()
    mv: ModelVersionRef | None = loaded.mv
    if mv is None:
        raise ValueError("gate_stage needs a registry model version")
    info = store.get_scan(scan_id)
    findings = store.findings_frame(scan_id)
    findings = findings[findings["kind"] == "label_error"]
    unreviewed = store.unreviewed_findings(scan_id, kind="label_error")
    reviewed = frozenset(
        set(findings["example_id"].astype(str)) - set(unreviewed["example_id"].astype(str))
    )
    from infgate.detect import MismatchReport

    mismatch = MismatchReport.from_dict(info.mismatch) if info.mismatch else None
    inputs = gate_inputs(loaded, findings, reviewed=reviewed, mismatch=mismatch)

    def record(v: GateVerdict) -> None:
        store.record_gate(
            scan_id, verdict=v.verdict, reasons=json_safe([c.to_dict() for c in v.checks])
        )
        set_gate_tags(
            mv,
            scan_id=scan_id,
            verdict=v.verdict,
            reason=v.summary(),
            tracking_uri=settings.tracking_uri,
        )
        if not v.passed:
            withdraw_alias(mv, settings.deployment_alias, tracking_uri=settings.tracking_uri)

    try:
        return run_gate(inputs, config.gate, sink=record)
    except Exception as exc:  # fail closed: a gate that cannot run blocks the version
        _record_gate_failure(record, exc, scan_id)
        raise


def _record_gate_failure(
    record: Callable[[GateVerdict], None], exc: Exception, scan_id: int
) -> None:
    """Record ``blocked`` for a gate that raised before its verdict (SQL, tags, alias), so
    a version that passed an earlier gate does not keep its ``passed`` tag and deployment
    alias through a scan whose checks never ran. Best effort: when recording fails too
    (the store is down), the gate's own error is what the caller sees."""
    from infgate.gate import GateCheck

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    check = GateCheck(
        name="gate_ran",
        suite="gate",
        success=False,
        observed=type(exc).__name__,
        threshold={},
        message=(
            f"the gate could not run ({type(exc).__name__}: {first}); the version stays "
            f"blocked until a gate runs on its scan (infgate promote, or scan again)"
        ),
    )
    try:
        record(GateVerdict("blocked", (check,)))
    except Exception as again:  # pragma: no cover - the store or registry is down as well
        log.error(
            "scan %d: the gate failed and its blocked verdict could not be recorded: %s",
            scan_id,
            again,
        )
    else:
        log.error("scan %d: %s", scan_id, check.message)


def report_stage(
    loaded: LoadedScan,
    analysis: Analysis,
    verdict: GateVerdict,
    scan_id: int | None,
    config: ScanConfig,
    settings: Settings | None = None,
) -> ReportOutcome:
    """Write the report files; log metrics, the whole config and the files as an MLflow
    scan run (when ``config.report.log_to_mlflow`` and there is a registry version)."""
    from infgate.registry import log_scan_run
    from infgate.registry.scan_run import run_url
    from infgate.scan.report import scan_datasets, write_report

    settings = settings or Settings()
    directory = Path(config.report.directory) if config.report.directory else None
    report = write_report(
        directory,
        loaded=loaded,
        analysis=analysis,
        verdict=verdict,
        scan_id=scan_id,
        top=config.report.top,
    )
    run_id = url = None
    if config.report.log_to_mlflow and loaded.mv is not None:
        params = {
            "scan_id": scan_id,
            **config.flat_params(),
            **{
                f"curvature.{k}": v
                for k, v in analysis.curvature.to_dict().items()
                if k != "choice"
            },
            "curvature.choice": analysis.curvature.choice,
        }
        run_id = log_scan_run(
            loaded.mv,
            metrics=report.metrics,
            params=params,
            artifact_dir=report.directory,
            tracking_uri=settings.tracking_uri,
            datasets=scan_datasets(loaded),
        )
        from infgate.registry import client

        experiment = client(settings.tracking_uri).get_run(run_id).info.experiment_id
        url = run_url(settings.tracking_uri, str(experiment), run_id)
    return ReportOutcome(
        directory=report.directory,
        metrics=report.metrics,
        files=tuple(report.files),
        markdown=report.markdown,
        top_table=tuple(report.top_table),
        scan_run_id=run_id,
        scan_run_url=url,
    )
