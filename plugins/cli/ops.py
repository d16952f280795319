"""CLI commands for the pipeline: ``infgate scan``, ``infgate promote``, ``infgate hook ...``,
``infgate flows serve``. Flow and plugin modules are imported inside the commands only."""

from __future__ import annotations

import os
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["embedded_prefect_env", "flows_app", "hook_app", "promote", "scan"]

console = Console()
err = Console(stderr=True)

hook_app = typer.Typer(
    help="The MLflow model-review hook (webhook receiver).", no_args_is_help=True
)
flows_app = typer.Typer(help="Prefect deployments of the infgate flows.", no_args_is_help=True)

_DB = typer.Option(
    None,
    "--db",
    "--db-url",
    help="Findings store URL (default $INFGATE_DB_URL or sqlite:///infgate.db).",
)
_MLFLOW = typer.Option(
    None, "--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)."
)
_GATE = typer.Option(
    None, "--gate-config", help="Gate thresholds YAML (default pipeline/gate_defaults.yaml)."
)


def embedded_prefect_env() -> None:
    """Defaults for Prefect's ephemeral API on a busy or small machine (set before import)."""
    # Prefect's own default (20 s) is too short on a loaded 2-core machine.
    key = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    if float(os.environ.get(key) or 0) < 300:
        os.environ[key] = "300"
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def _reasons_table(reasons: list[dict]) -> Table:
    table = Table(title="Why the gate blocks")
    for col in ("check", "column", "observed", "allowed"):
        table.add_column(col)
    for r in reasons:
        table.add_row(
            str(r.get("expectation", "")),
            str(r.get("column") or ""),
            str(r.get("observed")),
            str(r.get("threshold", "")),
        )
    return table


def scan(
    model: str = typer.Argument(..., help="models:/name@alias, models:/name/version or a name."),
    version: str | None = typer.Option(None, help="Version, when MODEL is a bare name."),
    data: str = typer.Option(
        None, "--data", help="Training data URI (overrides tag and run input)."
    ),
    eval_data: str = typer.Option(
        None, "--eval", help="Evaluation data URI for the mismatch test."
    ),
    db_url: str | None = _DB,
    tracking_uri: str | None = _MLFLOW,
    gate_config: str | None = _GATE,
    report_dir: str | None = typer.Option(None, help="Where report files go."),
    use_flow: bool = typer.Option(True, "--flow/--no-flow", help="Run as a Prefect flow run."),
    dask_workers: int | None = typer.Option(
        None,
        help="Run the flow on a local Dask cluster of this many one-thread worker processes; "
        "training sets above --shard-size rows are scored in shards across them.",
    ),
    dask_address: str | None = typer.Option(
        None, help="Run the flow's tasks on the Dask scheduler at this address."
    ),
    shard_size: int | None = typer.Option(
        None, help="Rows per influence shard on Dask (default 20,000)."
    ),
) -> None:
    """Scan a model version: influence, findings, SQL, gate, report. Exit 2 when blocked."""
    from infgate.errors import InfgateError

    try:
        if use_flow:
            embedded_prefect_env()
            from infgate.flows.scan import dask_task_runner, scan_model_version

            flow_fn = scan_model_version
            if dask_workers or dask_address:
                flow_fn = scan_model_version.with_options(
                    task_runner=dask_task_runner(dask_workers, dask_address)
                )
            state = flow_fn(
                model,
                options={"shard_size": shard_size} if shard_size else None,
                version=version,
                data_uri=data,
                eval_uri=eval_data,
                db_url=db_url,
                tracking_uri=tracking_uri,
                gate_config=gate_config,
                report_dir=report_dir,
                return_state=True,
            )
            summary = state.result(raise_on_failure=False)
            if not isinstance(summary, dict):
                _fail(f"the scan flow failed: {state.message}")
            verdict, reasons, scan_id = summary["verdict"], summary["reasons"], summary["scan_id"]
        else:
            from infgate.gate.core import load_gate_config
            from infgate.scan.stages import run_scan

            if dask_workers or dask_address:
                _fail("--dask-workers/--dask-address need the flow (drop --no-flow)")

            out = run_scan(
                model,
                version=version,
                data_uri=data,
                eval_uri=eval_data,
                gate_config=load_gate_config(gate_config),
                tracking_uri=tracking_uri,
                report_dir=report_dir,
                store=_store(db_url),
            )
            verdict, reasons, scan_id = out.verdict.verdict, out.verdict.reasons, out.scan_id
    except InfgateError as e:
        _fail(str(e))
    console.print(f"scan {scan_id}: gate [bold]{verdict}[/bold]")
    if verdict != "passed":
        console.print(_reasons_table(reasons))
        raise typer.Exit(2)


def _store(db_url: str | None):  # type: ignore[no-untyped-def]
    from infgate.store import Store

    store = Store.from_url(db_url)
    store.upgrade()
    return store


def promote(
    model: str = typer.Argument(..., help="models:/name/version, models:/name@alias or a name."),
    version: str | None = typer.Option(None, help="Version, when MODEL is a bare name."),
    alias: str = typer.Option(
        None, help="Deployment alias (default from the gate config: champion)."
    ),
    db_url: str | None = _DB,
    tracking_uri: str | None = _MLFLOW,
    gate_config: str | None = _GATE,
) -> None:
    """Give the version the deployment alias, only if its gate passes (re-checked now)."""
    from infgate.errors import GateBlockedError, InfgateError
    from infgate.gate.core import load_gate_config
    from infgate.scan.promote import promote as do_promote

    try:
        do_promote(
            _store(db_url),
            model,
            version=version,
            alias=alias,
            config=load_gate_config(gate_config),
            tracking_uri=tracking_uri,
        )
    except GateBlockedError as e:
        err.print(f"[red]refused:[/red] {e}")
        console.print(_reasons_table(e.reasons))
        raise typer.Exit(2) from e
    except InfgateError as e:
        _fail(str(e))
    target = alias or load_gate_config(gate_config).deployment_alias
    console.print(f"[green]promoted[/green] {model} to {target!r}")


@hook_app.command("serve")
def hook_serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8766, help="Port (the review page uses 8765)."),
    mode: str = typer.Option(
        "embedded", help="embedded (flow runs in this process) or deployment."
    ),
    deployment: str = typer.Option(
        "scan-model-version/on-demand", help="Deployment to run in deployment mode."
    ),
    db_url: str | None = _DB,
    tracking_uri: str | None = _MLFLOW,
    gate_config: str | None = _GATE,
) -> None:
    """Run the webhook receiver (secret from INFGATE_WEBHOOK_SECRET)."""
    import uvicorn
    from infgate.errors import InfgateError
    from infgate.plugins.review_hook import (
        DeploymentStarter,
        EmbeddedStarter,
        HookSettings,
        create_app,
    )

    embedded_prefect_env()
    try:
        settings = HookSettings.from_env()
    except InfgateError as e:
        _fail(str(e))
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if mode == "embedded":
        starter: object = EmbeddedStarter(
            db_url=db_url,
            tracking_uri=tracking_uri,
            gate_config=gate_config,
            deployment_alias=settings.deployment_alias,
        )
    elif mode == "deployment":
        starter = DeploymentStarter(
            deployment, deployment_alias=settings.deployment_alias, tracking_uri=tracking_uri
        )
    else:
        _fail(f"--mode must be embedded or deployment, got {mode!r}")
    console.print(f"infgate hook listening on http://{host}:{port}/webhook ({mode} mode)")
    uvicorn.run(create_app(settings, starter), host=host, port=port, log_level="info")


@hook_app.command("register")
def hook_register(
    url: str = typer.Argument(..., help="The receiver's URL, e.g. http://127.0.0.1:8765/webhook."),
    tracking_uri: str | None = _MLFLOW,
    name: str = typer.Option("infgate-review-hook", help="Webhook name in MLflow."),
) -> None:
    """Create (or update) the MLflow webhook pointing at the receiver."""
    from infgate.errors import InfgateError
    from infgate.plugins.review_hook.register import register_webhook

    try:
        hook_id = register_webhook(url, name=name, tracking_uri=tracking_uri)
    except InfgateError as e:
        _fail(str(e))
    console.print(f"webhook {name!r} ({hook_id}) -> {url}")


@flows_app.command("serve")
def flows_serve(
    sweep_cron: str = typer.Option("0 2 * * *", help="Cron schedule of the registry sweep."),
    limit: int = typer.Option(
        2, min=1, help="Flow runs at once (a scan waiting on an influence-stage run holds one)."
    ),
) -> None:
    """Serve the scan, sweep, relabel and influence-stage deployments from this process."""
    embedded_prefect_env()
    from infgate.flows.serve import serve_all

    serve_all(sweep_cron=sweep_cron, limit=limit)
