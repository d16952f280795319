"""``infgate flows``: serve the Prefect deployments of the infgate flows."""

from __future__ import annotations

from typing import Annotated

import typer
from infgate.plugins.cli._common import guarded

__all__ = ["flows_app"]

flows_app = typer.Typer(help="Prefect deployments of the infgate flows.", no_args_is_help=True)


@flows_app.command("serve")
@guarded
def flows_serve(
    sweep_cron: Annotated[
        str, typer.Option(help="Cron schedule of the registry sweep.")
    ] = "0 2 * * *",
    limit: Annotated[
        int,
        typer.Option(
            min=1, help="Flow runs at once (a scan waiting on an influence-stage run holds one)."
        ),
    ] = 2,
) -> None:
    """Serve the scan, sweep, relabel and influence-stage deployments from this process."""
    from infgate.settings import quiet_third_party_env

    quiet_third_party_env()
    from infgate.flows.serve import serve_all

    serve_all(sweep_cron=sweep_cron, limit=limit)
