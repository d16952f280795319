"""The webhook receiver (FastAPI).

MLflow signs each delivery: ``X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret,
"{delivery_id}.{timestamp}.{body}")>`` with ``X-MLflow-Delivery-Id`` and
``X-MLflow-Timestamp`` headers (``mlflow/webhooks/delivery.py``). The receiver

* rejects a missing or wrong signature (401), a timestamp older or newer than
  ``max_age_seconds`` (401), and a delivery id it has already accepted (409);
* answers 202 at once and hands the event to a
  :class:`~infgate.plugins.review_hook.starters.Starter` that starts one flow run per
  event in the background.

Events: ``model_version.created`` scans the new version; ``model_version_alias.created``
scans a version nominated with a review alias (``candidate``) and enforces the gate when
the deployment alias (``champion``) is set; ``model_version_tag.set`` rescans when
``infgate.train_data`` or ``infgate.rescan`` is set (infgate's own result tags are ignored,
so the receiver never loops on its own writes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from infgate.errors import InvalidInputError

__all__ = ["HookSettings", "ReplayGuard", "ScanRequest", "create_app", "verify_signature"]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
EVENTS = ("model_version.created", "model_version_alias.created", "model_version_tag.set")


@dataclass(frozen=True)
class HookSettings:
    """Receiver settings.

    Attributes:
        secret: the shared HMAC secret (``INFGATE_WEBHOOK_SECRET``); never logged.
        max_age_seconds: how far a delivery's timestamp may be from now.
        deployment_alias: setting this alias on a version enforces the gate.
        review_aliases: setting one of these aliases starts a scan.
        rescan_tags: setting one of these model-version tags starts a scan.
    """

    secret: str = field(repr=False)
    max_age_seconds: int = 300
    deployment_alias: str = "champion"
    review_aliases: tuple[str, ...] = ("candidate",)
    rescan_tags: tuple[str, ...] = ("infgate.train_data", "infgate.rescan")

    def __post_init__(self) -> None:
        if not isinstance(self.secret, str) or len(self.secret) < 16:
            raise InvalidInputError("the webhook secret must be a string of at least 16 characters")
        if self.max_age_seconds < 1:
            raise InvalidInputError(f"max_age_seconds must be >= 1, got {self.max_age_seconds}")

    @classmethod
    def from_env(cls) -> HookSettings:
        """Read ``INFGATE_WEBHOOK_SECRET`` (required), ``INFGATE_WEBHOOK_MAX_AGE``,
        ``INFGATE_DEPLOYMENT_ALIAS`` and ``INFGATE_REVIEW_ALIASES`` (comma-separated)."""
        secret = os.environ.get("INFGATE_WEBHOOK_SECRET")
        if not secret:
            raise InvalidInputError("set INFGATE_WEBHOOK_SECRET to the webhook's shared secret")
        aliases = os.environ.get("INFGATE_REVIEW_ALIASES", "candidate")
        return cls(
            secret=secret,
            max_age_seconds=int(os.environ.get("INFGATE_WEBHOOK_MAX_AGE", "300")),
            deployment_alias=os.environ.get("INFGATE_DEPLOYMENT_ALIAS", "champion"),
            review_aliases=tuple(a.strip() for a in aliases.split(",") if a.strip()),
        )


@dataclass(frozen=True)
class ScanRequest:
    """One accepted event: what to do for which model version."""

    action: Literal["scan", "enforce"]
    event: str
    model_name: str
    version: str
    delivery_id: str
    received_at: float


def verify_signature(
    secret: str, delivery_id: str, timestamp: str, body: bytes, header: str
) -> bool:
    """True when ``header`` is MLflow's v1 HMAC-SHA256 signature of this delivery."""
    version, _, sig = header.partition(",")
    if version != "v1" or not sig:
        return False
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, sig)


class ReplayGuard:
    """Remembers accepted delivery ids for twice the allowed age (older ones fail the
    timestamp check anyway). Per process: run one receiver replica, or put it behind
    sticky routing."""

    def __init__(self, max_age_seconds: int) -> None:
        self.ttl = 2 * max_age_seconds
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_time(self, delivery_id: str) -> bool:
        """Record ``delivery_id``; False when it was already seen."""
        now = time.time()
        with self._lock:
            for k in [k for k, t in self._seen.items() if now - t > self.ttl]:
                del self._seen[k]
            if delivery_id in self._seen:
                return False
            self._seen[delivery_id] = now
            return True


def route(settings: HookSettings, payload: dict[str, Any], delivery_id: str) -> ScanRequest | None:
    """What an MLflow event asks of infgate, or ``None`` to ignore it."""
    event = f"{payload.get('entity')}.{payload.get('action')}"
    data = payload.get("data") or {}
    name, version = data.get("name"), data.get("version")
    if event not in EVENTS or not name or version is None:
        return None
    action: Literal["scan", "enforce"] | None = None
    if event == "model_version.created":
        action = "scan"
    elif event == "model_version_alias.created":
        alias = data.get("alias")
        if alias == settings.deployment_alias:
            action = "enforce"
        elif alias in settings.review_aliases:
            action = "scan"
    elif event == "model_version_tag.set" and data.get("key") in settings.rescan_tags:
        action = "scan"
    if action is None:
        return None
    return ScanRequest(action, event, str(name), str(version), delivery_id, time.time())


def create_app(settings: HookSettings, starter: Any) -> FastAPI:
    """The receiver app. ``starter.submit(ScanRequest)`` must return at once."""
    app = FastAPI(title="infgate model-review hook", docs_url=None, redoc_url=None)
    guard = ReplayGuard(settings.max_age_seconds)
    app.state.settings = settings
    app.state.starter = starter

    def reject(status: int, why: str) -> JSONResponse:
        log.warning("webhook delivery rejected: %s", why)
        return JSONResponse({"accepted": False, "error": why}, status_code=status)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        body = await request.body()
        delivery_id = request.headers.get(DELIVERY_HEADER, "")
        stamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not (delivery_id and stamp and signature):
            return reject(401, "missing signature, timestamp or delivery id header")
        if not verify_signature(settings.secret, delivery_id, stamp, body, signature):
            return reject(401, "bad signature")
        try:
            age = abs(time.time() - int(stamp))
        except ValueError:
            return reject(401, "timestamp is not a unix time")
        if age > settings.max_age_seconds:
            return reject(
                401, f"stale timestamp ({age:.0f}s old, limit {settings.max_age_seconds}s)"
            )
        if not guard.first_time(delivery_id):
            return reject(409, f"delivery {delivery_id} was already accepted (replay)")
        try:
            payload = json.loads(body)
        except ValueError:
            return reject(400, "body is not JSON")
        req = route(settings, payload, delivery_id)
        if req is None:
            return JSONResponse({"accepted": True, "action": "ignored"}, status_code=202)
        starter.submit(req)
        log.info("accepted %s for %s v%s: %s", req.event, req.model_name, req.version, req.action)
        return JSONResponse(
            {
                "accepted": True,
                "action": req.action,
                "model": req.model_name,
                "version": req.version,
            },
            status_code=202,
        )

    return app
