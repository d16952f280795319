"""``infgate promote``: give a version the deployment alias only if its gate passes."""

from __future__ import annotations

from typing import Annotated

import typer
from infgate.plugins.cli._common import (
    EXIT_BLOCKED,
    DbOpt,
    JsonOpt,
    TrackingOpt,
    console,
    emit_json,
    err,
    gate_reasons_table,
    guarded,
    open_store,
    reasons_json,
    results_only_on_stdout,
    settings_from,
)

__all__ = ["promote"]


@guarded
def promote(
    model: Annotated[
        str, typer.Argument(help="models:/name/version, models:/name@alias or a name.")
    ],
    version: Annotated[str | None, typer.Option(help="Version, when MODEL is a bare name.")] = None,
    alias: Annotated[
        str | None,
        typer.Option(help="Deployment alias (default $INFGATE_DEPLOYMENT_ALIAS or champion)."),
    ] = None,
    db: DbOpt = None,
    tracking_uri: TrackingOpt = None,
    gate_config: Annotated[
        str | None,
        typer.Option(
            help="Gate thresholds YAML (default $INFGATE_GATE_CONFIG or the packaged one)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Give the version the deployment alias, only if its gate passes. Exit 2 when blocked.

    The gate is re-checked now, so decisions made in the relabel queue count.
    """
    from infgate.errors import GateBlockedError
    from infgate.plugins.cli.scan import build_scan_config
    from infgate.scan.promote import promote as do_promote

    settings = settings_from(db, tracking_uri)
    target = alias or settings.deployment_alias
    config = build_scan_config(
        config=settings.scan_config_path, gate_config=gate_config or settings.gate_config_path
    )
    document = {"model": model, "version": version, "alias": target}
    try:
        with results_only_on_stdout():
            do_promote(
                open_store(settings.db_url, upgrade=True),
                model,
                version=version,
                alias=target,
                config=config,
                settings=settings,
            )
    except GateBlockedError as exc:
        if as_json:
            emit_json(
                {
                    **document,
                    "promoted": False,
                    "verdict": "blocked",
                    "message": str(exc),
                    "reasons": reasons_json(exc.reasons),
                }
            )
        else:
            err.print(f"[red]refused:[/red] {exc}", soft_wrap=True)
            gate_reasons_table(exc.reasons)
        raise typer.Exit(EXIT_BLOCKED) from None
    if as_json:
        emit_json({**document, "promoted": True, "verdict": "passed", "reasons": []})
    else:
        console.print(f"[green]promoted[/green] {model} to {target!r}")
