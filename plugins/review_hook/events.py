"""Prefect events for the webhook deliveries the receiver accepts.

An accepted ``model_version.created`` delivery becomes the Prefect event
``mlflow.model_version.created`` about the resource ``models:/<name>/<version>``: the
automation shipped with the ``scan-model-version/on-demand`` deployment
(``infgate.flows.serve``, a ``DeploymentEventTrigger`` passing ``{{ event.resource.id }}`` as
the flow's ``model``) waits for exactly this, and the Prefect UI's event feed shows it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infgate.plugins.review_hook.app import ScanRequest

__all__ = ["EMITTED", "emit_accepted", "model_version_event"]

log = logging.getLogger(__name__)

#: The MLflow webhook events turned into Prefect events (as ``mlflow.<event>``).
EMITTED = ("model_version.created",)


def model_version_event(req: ScanRequest) -> dict[str, Any]:
    """The ``emit_event`` keyword arguments for an accepted delivery."""
    return {
        "event": f"mlflow.{req.event}",
        "resource": {
            "prefect.resource.id": f"models:/{req.model_name}/{req.version}",
            "prefect.resource.name": f"{req.model_name} v{req.version}",
            "mlflow.model.name": req.model_name,
            "mlflow.model.version": req.version,
        },
        "payload": {"delivery_id": req.delivery_id, "action": req.action},
    }


def emit_accepted(req: ScanRequest) -> Any:
    """Emit the Prefect event for ``req`` when its MLflow event is in :data:`EMITTED` and a
    Prefect API is configured (``PREFECT_API_URL``: automations live on a running server;
    without one ``emit_event`` would start an ephemeral server inside the request, ~30 s).

    Returns:
        The event, or ``None`` when not emitted. Never raises: a Prefect API that cannot be
        reached is logged, and the delivery is still answered 202.
    """
    if req.event not in EMITTED:
        return None
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        log.debug("PREFECT_API_URL is unset: no Prefect event for %s", req.event)
        return None
    try:
        from prefect.events import emit_event

        event = emit_event(**model_version_event(req))
    except Exception:  # the receiver's answer must not depend on Prefect's API
        log.exception("could not emit the Prefect event for %s v%s", req.model_name, req.version)
        return None
    if event is None:
        log.info("Prefect events are not configured here: no event for %s", req.event)
    return event
