"""``infgate hook register``: create (or update) the infgate webhook on an MLflow server."""

from __future__ import annotations

import logging
from typing import Any

from infgate.errors import InvalidInputError
from infgate.plugins.review_hook.app import EVENTS, check_secret
from infgate.settings import Settings

__all__ = ["register_webhook"]

log = logging.getLogger(__name__)


def register_webhook(
    url: str,
    *,
    name: str = "infgate-review-hook",
    tracking_uri: str | None = None,
    secret: str | None = None,
    events: tuple[str, ...] = EVENTS,
) -> str:
    """Point an MLflow webhook at the receiver's ``url`` (``http://host:port/webhook``).

    Idempotent: a webhook with the same name is updated in place. The secret comes from
    ``secret`` or ``INFGATE_WEBHOOK_SECRET`` and is never logged.

    Returns:
        The webhook id.

    Raises:
        InvalidInputError: no secret or a weak one, or a tracking URI that is not an MLflow
            server.
    """
    from mlflow import MlflowClient
    from mlflow.entities.webhook import WebhookEvent

    settings = Settings.from_env() if secret is None or tracking_uri is None else None
    secret = secret or (settings.webhook_secret if settings else None)
    if not secret:
        raise InvalidInputError("set INFGATE_WEBHOOK_SECRET (or pass --secret) before registering")
    check_secret(secret)  # the receiver refuses to start with a weak one: fail here first
    uri = tracking_uri or (settings.tracking_uri if settings else None) or ""
    if not uri.startswith(("http://", "https://")):
        raise InvalidInputError(
            f"webhooks need an `mlflow server` tracking URI (http[s]://...), got {uri!r}"
        )
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    wanted: list[Any] = [WebhookEvent.from_str(e) for e in events]  # type: ignore[arg-type]
    existing = [w for w in client.list_webhooks() if w.name == name]
    if existing:
        hook = client.update_webhook(existing[0].webhook_id, url=url, events=wanted, secret=secret)
        log.info("updated webhook %s -> %s", name, url)
    else:
        hook = client.create_webhook(name=name, url=url, events=wanted, secret=secret)
        log.info("created webhook %s -> %s", name, url)
    return str(hook.webhook_id)
