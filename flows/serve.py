"""Deployments for a long-running Prefect setup; ``infgate flows serve`` runs them locally.

* ``scan-model-version/on-demand``: started by the review hook (``DeploymentStarter``) and
  by an event trigger on ``mlflow.model_version.created`` events (emit them with
  ``prefect.events.emit_event`` or forward MLflow webhooks through the hook receiver);
* ``registry-sweep/nightly``: cron sweep of versions with no scan of their current data;
* ``relabel/on-demand``: apply queue decisions and re-run the gate;
* ``influence-stage/local``: the influence stage alone (``flows/prefect.yaml`` declares
  the same flow on a GPU work pool for ``prefect deploy``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_deployments", "serve_all"]


def build_deployments(*, sweep_cron: str = "0 2 * * *") -> list[Any]:
    """The runner deployments ``serve_all`` serves (settings come from the environment)."""
    from infgate.flows.relabel import relabel
    from infgate.flows.scan import influence_stage_flow, scan_model_version
    from infgate.flows.sweep import registry_sweep
    from prefect.events import DeploymentEventTrigger

    # No URLs or secrets in deployment parameters (they are stored in Prefect's database and
    # shown in its UI): each flow run reads them from the worker's environment through
    # infgate.settings.Settings (INFGATE_DB_URL, MLFLOW_TRACKING_URI, INFGATE_GATE_CONFIG...).
    common: dict[str, Any] = {}
    trigger = DeploymentEventTrigger(
        name="scan-on-model-version-created",
        expect={"mlflow.model_version.created"},
        parameters={"model": "{{ event.resource.id }}"},
    )
    return [
        scan_model_version.to_deployment(
            name="on-demand", parameters=common, triggers=[trigger], tags=["infgate"]
        ),
        registry_sweep.to_deployment(
            name="nightly", cron=sweep_cron, parameters=common, tags=["infgate"]
        ),
        relabel.to_deployment(
            name="on-demand",
            parameters=common,
            tags=["infgate"],
        ),
        influence_stage_flow.to_deployment(name="local", parameters=common, tags=["infgate"]),
    ]


def serve_all(*, sweep_cron: str = "0 2 * * *", limit: int | None = 2) -> None:
    """Serve every deployment from this process until interrupted (at most ``limit`` flow
    runs at once). A scan run with ``influence_deployment="influence-stage/local"`` holds
    its slot while its child influence run needs another: keep ``limit`` above the number
    of such scans running at once, or the children never start."""
    from prefect import serve

    serve(*build_deployments(sweep_cron=sweep_cron), limit=limit)
