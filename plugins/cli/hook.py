"""``infgate hook``: the MLflow model-review webhook receiver and its registration."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from infgate.plugins.cli._common import (
    DbOpt,
    TrackingOpt,
    console,
    fail,
    guarded,
    settings_from,
)
from infgate.plugins.cli.ui import REVIEW_PAGE_PORT

__all__ = ["HOOK_PORT", "hook_app"]

#: The receiver's default port (the review page has REVIEW_PAGE_PORT).
HOOK_PORT = REVIEW_PAGE_PORT + 1

hook_app = typer.Typer(
    help="The MLflow model-review hook (webhook receiver).", no_args_is_help=True
)


@hook_app.command("serve")
@guarded
def hook_serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help=f"Port (the review page uses {REVIEW_PAGE_PORT}).")
    ] = HOOK_PORT,
    mode: Annotated[
        Literal["embedded", "deployment", "event"],
        typer.Option(
            help="embedded (flow runs in this process), deployment (run it on a Prefect "
            "server) or event (emit the Prefect event the deployment's trigger waits for)."
        ),
    ] = "embedded",
    deployment: Annotated[
        str, typer.Option(help="Deployment to run in deployment mode.")
    ] = "scan-model-version/on-demand",
    db: DbOpt = None,
    tracking_uri: TrackingOpt = None,
    gate_config: Annotated[
        str | None,
        typer.Option(
            help="Gate thresholds YAML (default $INFGATE_GATE_CONFIG or the packaged one)."
        ),
    ] = None,
) -> None:
    """Run the webhook receiver (secret from INFGATE_WEBHOOK_SECRET)."""
    import uvicorn
    from infgate.flows.runtime import handle_termination
    from infgate.plugins.cli.scan import build_scan_config
    from infgate.plugins.review_hook import (
        DeploymentStarter,
        EmbeddedStarter,
        EventStarter,
        HookSettings,
        create_app,
    )
    from infgate.settings import quiet_third_party_env

    quiet_third_party_env()
    handle_termination()  # SIGTERM/SIGHUP: runs marked Crashed, the ephemeral API stopped
    settings = settings_from(db, tracking_uri)
    hook_settings = HookSettings.from_env(settings)  # --db reaches the replay-id table
    starter: object
    if mode == "embedded":
        starter = EmbeddedStarter(
            db_url=settings.db_url,
            tracking_uri=settings.tracking_uri,
            deployment_alias=hook_settings.deployment_alias,
            config=build_scan_config(
                config=settings.scan_config_path,
                gate_config=gate_config or settings.gate_config_path,
            ),
        )
    elif mode == "deployment":
        starter = DeploymentStarter(
            deployment,
            deployment_alias=hook_settings.deployment_alias,
            tracking_uri=settings.tracking_uri,
        )
    else:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            fail("--mode event needs a Prefect server: set PREFECT_API_URL")
        starter = EventStarter(
            deployment_alias=hook_settings.deployment_alias, tracking_uri=settings.tracking_uri
        )
    console.print(f"infgate hook listening on http://{host}:{port}/webhook ({mode} mode)")
    uvicorn.run(create_app(hook_settings, starter), host=host, port=port, log_level="info")


@hook_app.command("register")
@guarded
def hook_register(
    url: Annotated[
        str,
        typer.Argument(
            help=f"The receiver's URL, e.g. http://127.0.0.1:{HOOK_PORT}/webhook "
            "(`infgate hook serve`'s address)."
        ),
    ],
    tracking_uri: TrackingOpt = None,
    name: Annotated[str, typer.Option(help="Webhook name in MLflow.")] = "infgate-review-hook",
) -> None:
    """Create (or update) the MLflow webhook pointing at the receiver."""
    from infgate.plugins.review_hook.register import register_webhook

    settings = settings_from(tracking_uri=tracking_uri)
    hook_id = register_webhook(url, name=name, tracking_uri=settings.tracking_uri)
    console.print(f"webhook {name!r} ({hook_id}) -> {url}", markup=False)
