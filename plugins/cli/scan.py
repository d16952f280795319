"""``infgate scan``: scan one model version (influence, findings, SQL, gate, report).

One :class:`infgate.config.ScanConfig` is built from ``--config`` (or
``$INFGATE_SCAN_CONFIG``), then ``--gate-config``'s keys (the ``gate`` section), then the
flags; it travels whole to the Prefect flow or to the in-process ``run_scan``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from infgate.plugins.cli._common import (
    EXIT_BLOCKED,
    DbOpt,
    JsonOpt,
    TrackingOpt,
    console,
    describe_error,
    emit_json,
    err,
    fail,
    gate_reasons_table,
    guarded,
    open_store,
    print_table,
    reasons_json,
    results_only_on_stdout,
    settings_from,
)
from infgate.plugins.cli._progress import scan_progress

__all__ = ["build_scan_config", "scan"]

TOP_COLUMNS = (
    "rank",
    "example_id",
    "score",
    "given_label",
    "suggested_label",
    "suggestion_confidence",
)


def _yaml_mapping(path: str, what: str) -> dict[str, Any]:
    import yaml
    from infgate.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {path!r} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path!r} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path!r} must be a mapping, got {type(loaded).__name__}")
    return loaded


def _split_params(params: list[str] | None) -> tuple[str, ...] | None:
    if not params:
        return None
    names = tuple(p.strip() for item in params for p in item.split(",") if p.strip())
    return names or None


def build_scan_config(
    *,
    config: str | None = None,
    gate_config: str | None = None,
    method: str | None = None,
    damping: float | None = None,
    params: list[str] | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    shard_size: int | None = None,
    report_dir: str | None = None,
    feature_columns: list[str] | None = None,
    label_column: str | None = None,
    stream: str | None = None,
    pad_token_id: int | None = None,
    model_inputs: list[str] | None = None,
) -> Any:
    """The one ScanConfig of a scan: the YAML (or defaults), the gate YAML's keys as the
    ``gate`` section, then every flag that was given (``None`` = not given)."""
    from infgate.config import ScanConfig

    base = ScanConfig.from_yaml(config) if config else ScanConfig()
    overrides: dict[str, Any] = {}
    if gate_config:
        gate = _yaml_mapping(gate_config, "gate config")
        overrides.update({f"gate.{key}": value for key, value in gate.items()})
    overrides.update(
        {
            "influence.method": method,
            "influence.damping": damping,
            "influence.params": _split_params(params),
            "influence.batch_size": batch_size,
            "influence.device": device,
            "influence.shard_size": shard_size,
            "report.directory": report_dir,
            "data.feature_columns": _split_params(feature_columns),
            "data.label_column": label_column,
            "data.stream": stream,
            "data.pad_token_id": pad_token_id,
            "data.model_inputs": _split_params(model_inputs),
        }
    )
    return base.with_overrides(**overrides)


def _run_flow(
    model: str,
    version: str | None,
    data: str | None,
    eval_data: str | None,
    cfg: Any,
    settings: Any,
    dask_workers: int | None,
    dask_address: str | None,
    verbose: bool,
) -> dict[str, Any]:
    from infgate.settings import quiet_third_party_env

    quiet_third_party_env()
    from infgate.flows.scan import dask_task_runner, scan_model_version

    flow_fn: Any = scan_model_version
    if dask_workers or dask_address:
        flow_fn = scan_model_version.with_options(
            task_runner=dask_task_runner(dask_workers, dask_address)
        )
    with scan_progress(follow_prefect=True, quiet_prefect=not verbose) as progress:
        state = flow_fn(
            model,
            version=version,
            data_uri=data,
            eval_uri=eval_data,
            config=cfg,
            db_url=settings.db_url,
            tracking_uri=settings.tracking_uri,
            return_state=True,
        )
        summary = state.result(raise_on_failure=False)
        if isinstance(summary, BaseException):
            fail(describe_error(summary) or f"the scan flow failed: {summary}")
        if not isinstance(summary, dict):
            fail(f"the scan flow failed: {state.message}")
        progress.finish_all(summary.get("timings"))
    return summary


def _run_in_process(
    model: str,
    version: str | None,
    data: str | None,
    eval_data: str | None,
    cfg: Any,
    settings: Any,
) -> dict[str, Any]:
    from infgate.scan import run_scan

    store = open_store(settings.db_url, upgrade=True)
    with scan_progress(follow_prefect=False, quiet_prefect=False) as progress:
        out = run_scan(
            model,
            version=version,
            data_uri=data,
            eval_uri=eval_data,
            config=cfg,
            settings=settings,
            store=store,
            progress=progress.start,
        )
        progress.finish_all(out.timings)
    report = out.report
    return {
        "model": out.mv.name if out.mv is not None else out.subject,
        "version": out.mv.version if out.mv is not None else None,
        "scan_id": out.scan_id,
        "verdict": out.verdict.verdict,
        "reasons": [c.to_dict() for c in out.verdict.reasons],
        "queued": out.queued,
        "reused": out.reused,
        "report_dir": str(report.directory) if report is not None else None,
        "scan_run_id": report.scan_run_id if report is not None else None,
        "metrics": report.metrics if report is not None else None,
    }


def _top_suspects(db_url: str, scan_id: int, top: int) -> list[dict[str, Any]]:
    from infgate.plugins.cli._common import json_value

    frame = open_store(db_url).findings_frame(scan_id)
    frame = frame[frame["kind"] == "label_error"]
    if "is_suspect" in frame.columns:
        frame = frame[frame["is_suspect"].astype(bool)]
    if "rank" in frame.columns:
        frame = frame.sort_values("rank")
    cols = [c for c in TOP_COLUMNS if c in frame.columns]
    rows = frame[cols].head(top).itertuples(index=False)
    return [{c: json_value(v) for c, v in zip(cols, row, strict=True)} for row in rows]


def _run_url(tracking_uri: str | None, run_id: str | None) -> str | None:
    """The MLflow UI address of a run, when the tracking URI is a server."""
    if not run_id or not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return None
    from mlflow import MlflowClient

    try:
        experiment = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    except Exception:  # the link is a convenience; the run id is printed anyway
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


def _report_file(report_dir: str | None) -> str | None:
    if not report_dir:
        return None
    for name in ("report.html", "summary.md"):
        if (Path(report_dir) / name).is_file():
            return str(Path(report_dir) / name)
    return report_dir


@guarded
def scan(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(help="models:/name@alias, models:/name/version or a name.")
    ],
    version: Annotated[str | None, typer.Option(help="Version, when MODEL is a bare name.")] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Training data URI (overrides tag and run input).")
    ] = None,
    eval_data: Annotated[
        str | None, typer.Option("--eval", help="Evaluation data URI for the mismatch test.")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="ScanConfig YAML (sections influence/detect/mismatch/gate/report; "
            "default $INFGATE_SCAN_CONFIG).",
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="Curvature back-end: auto, exact, cg, lissa, arnoldi, kfac, ekfac, tracin."
        ),
    ] = None,
    damping: Annotated[float | None, typer.Option(help="Damping lambda (> 0).")] = None,
    params: Annotated[
        list[str] | None,
        typer.Option(help="Parameters to differentiate (repeatable or comma-separated)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per batch.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N].")] = None,
    feature_columns: Annotated[
        list[str] | None,
        typer.Option(
            help="The model's input columns (repeatable or comma-separated; default: the "
            "version's tags, then the model signature, then the numeric columns)."
        ),
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="The label column (default: tag, else 'label').")
    ] = None,
    stream: Annotated[
        str | None,
        typer.Option(
            help="Stream the training features from Parquet in batches: auto (default: when "
            "the file has > 1,000,000 rows or exceeds $INFGATE_MEMORY_BUDGET_MB), always "
            "or never. Same findings either way."
        ),
    ] = None,
    model_inputs: Annotated[
        list[str] | None,
        typer.Option(help="A model's several inputs' list columns, in argument order."),
    ] = None,
    pad_token_id: Annotated[
        int | None,
        typer.Option(min=0, help="Pad token sequences of different lengths with this id."),
    ] = None,
    gate_config: Annotated[
        str | None,
        typer.Option(
            help="Gate thresholds YAML; its keys become the config's gate section "
            "(default $INFGATE_GATE_CONFIG)."
        ),
    ] = None,
    report_dir: Annotated[str | None, typer.Option(help="Where report files go.")] = None,
    db: DbOpt = None,
    tracking_uri: TrackingOpt = None,
    use_flow: Annotated[
        bool, typer.Option("--flow/--no-flow", help="Run as a Prefect flow run.")
    ] = True,
    dask_workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Run the flow on a local Dask cluster of this many one-thread worker "
            "processes; training sets above --shard-size rows are scored in shards.",
        ),
    ] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="Run the flow's tasks on the Dask scheduler here.")
    ] = None,
    shard_size: Annotated[
        int | None, typer.Option(help="Rows per influence shard on Dask (default 20,000).")
    ] = None,
    top: Annotated[int, typer.Option(min=0, help="Top suspects to print.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Scan a model version: influence, findings, SQL, gate, report. Exit 2 when blocked."""
    if not use_flow and (dask_workers or dask_address):
        raise typer.BadParameter("--dask-workers/--dask-address need the flow (drop --no-flow)")
    settings = settings_from(db, tracking_uri)
    cfg = build_scan_config(
        config=config or settings.scan_config_path,
        gate_config=gate_config or settings.gate_config_path,
        method=method,
        damping=damping,
        params=params,
        batch_size=batch_size,
        device=device,
        shard_size=shard_size,
        report_dir=report_dir,
        feature_columns=feature_columns,
        label_column=label_column,
        stream=stream,
        pad_token_id=pad_token_id,
        model_inputs=model_inputs,
    )
    verbose = bool(ctx.find_root().params.get("verbose"))
    with results_only_on_stdout():
        if use_flow:
            from infgate.flows.runtime import handle_termination

            handle_termination()  # SIGTERM: the run ends Crashed, no orphaned Prefect server
            summary = _run_flow(
                model, version, data, eval_data, cfg, settings, dask_workers, dask_address, verbose
            )
        else:
            summary = _run_in_process(model, version, data, eval_data, cfg, settings)
    _show(summary, settings, top=top, as_json=as_json)


def _show(summary: dict[str, Any], settings: Any, *, top: int, as_json: bool) -> None:
    scan_id, verdict = int(summary["scan_id"]), str(summary["verdict"])
    suspects = _top_suspects(settings.db_url, scan_id, top) if top else []
    run_id = summary.get("scan_run_id")
    url = _run_url(settings.tracking_uri, run_id)
    report = _report_file(summary.get("report_dir"))
    if as_json:
        emit_json(
            {
                "scan_id": scan_id,
                "model": summary.get("model"),
                "version": summary.get("version"),
                "verdict": verdict,
                "reasons": reasons_json(summary.get("reasons") or []),
                "queued": summary.get("queued"),
                "top_suspects": suspects,
                "report": report,
                "report_dir": summary.get("report_dir"),
                "mlflow_run_id": run_id,
                "mlflow_run_url": url,
                "metrics": summary.get("metrics"),
            }
        )
    else:
        color = "green" if verdict == "passed" else "red"
        console.print(
            f"scan {scan_id} of models:/{summary.get('model')}/{summary.get('version')}: "
            f"gate [bold {color}]{verdict}[/]"
        )
        if verdict != "passed":
            gate_reasons_table(summary.get("reasons") or [])
        if suspects:
            cols = list(suspects[0])
            (console if console.is_terminal else err).print(
                f"[bold]Top {len(suspects)} suspected label errors[/] (higher score = more "
                "suspicious)"
            )
            print_table(cols, [[s[c] for c in cols] for s in suspects], numeric=["rank", "score"])
        console.print(f"report: {report or '-'}", markup=False, highlight=False)
        where = f" ({url})" if url else ""
        console.print(f"MLflow run: {run_id or '-'}{where}", markup=False, highlight=False)
    if verdict != "passed":
        raise typer.Exit(EXIT_BLOCKED)
