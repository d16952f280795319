"""The webhook receiver (FastAPI).

MLflow signs each delivery: ``X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret,
"{delivery_id}.{timestamp}.{body}")>`` with ``X-MLflow-Delivery-Id`` and
``X-MLflow-Timestamp`` headers (``mlflow/webhooks/delivery.py``). The receiver

* refuses a body over ``max_body_bytes`` (413) before reading it (``Content-Length``), or
  as soon as a streamed body passes the limit;
* rejects a missing or wrong signature (401), a timestamp older or newer than
  ``max_age_seconds`` (401), a payload that is not a JSON object (400), and a delivery id
  it has already accepted (409; kept in the findings store's ``webhook_deliveries`` table,
  so a replay is refused after a restart too);
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
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from infgate.errors import ConfigError, InvalidInputError
from infgate.settings import Settings
from infgate.store import Store
from infgate.store.deliveries import MAX_DELIVERY_ID, record_delivery

__all__ = [
    "HookSettings",
    "ReplayGuard",
    "ScanRequest",
    "check_secret",
    "create_app",
    "verify_signature",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
EVENTS = ("model_version.created", "model_version_alias.created", "model_version_tag.set")
MIN_SECRET_CHARS = 32
MAX_BODY_BYTES = 1 << 20  # MLflow's payloads are a few hundred bytes


def check_secret(secret: Any) -> str:
    """``secret`` if it is strong enough to sign webhooks, else a :class:`ConfigError`.

    Strong: at least 32 characters with at least 8 different non-blank ones (a hex or
    base64 string of 32 random bytes passes; 32 spaces, ``"s" * 32`` or ``"ab" * 16`` do
    not). The message never shows the secret.
    """
    if not isinstance(secret, str) or not secret:
        raise ConfigError("set INFGATE_WEBHOOK_SECRET to the webhook's shared secret")
    distinct = len(set(secret) - set(" \t\r\n\f\v"))
    if len(secret) < MIN_SECRET_CHARS or distinct < 8:
        raise ConfigError(
            f"the webhook secret is too weak ({len(secret)} characters, {distinct} distinct "
            f"non-blank): use at least {MIN_SECRET_CHARS} random characters, e.g. "
            f'`python -c "import secrets; print(secrets.token_urlsafe(32))"`'
        )
    return secret


@dataclass(frozen=True)
class HookSettings:
    """Receiver settings.

    Attributes:
        secret: the shared HMAC secret (``INFGATE_WEBHOOK_SECRET``); never logged; checked
            by :func:`check_secret` at start-up.
        max_age_seconds: how far a delivery's timestamp may be from now.
        deployment_alias: setting this alias on a version enforces the gate.
        review_aliases: setting one of these aliases starts a scan.
        rescan_tags: setting one of these model-version tags starts a scan.
        db_url: the findings store that keeps accepted delivery ids (``None``: the store's
            own default, ``INFGATE_DB_URL`` else ``sqlite:///infgate.db``).
        max_body_bytes: larger deliveries are refused with 413 before they are read.
    """

    secret: str = field(repr=False)
    max_age_seconds: int = 300
    deployment_alias: str = "champion"
    review_aliases: tuple[str, ...] = ("candidate",)
    rescan_tags: tuple[str, ...] = ("infgate.train_data", "infgate.rescan")
    db_url: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES

    def __post_init__(self) -> None:
        check_secret(self.secret)
        for name, value, low in (
            ("max_age_seconds", self.max_age_seconds, 1),
            ("max_body_bytes", self.max_body_bytes, 1024),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"{name} must be an int >= {low}, got {value!r}")

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> HookSettings:
        """The receiver's settings from :class:`~infgate.settings.Settings` (``None``:
        :meth:`Settings.from_env`): ``webhook_secret`` (required), ``webhook_max_age``,
        ``deployment_alias``, ``review_aliases`` and ``db_url``."""
        env = settings if settings is not None else Settings.from_env()
        if not env.webhook_secret:
            raise ConfigError("set INFGATE_WEBHOOK_SECRET to the webhook's shared secret")
        return cls(
            secret=env.webhook_secret,
            max_age_seconds=env.webhook_max_age,
            deployment_alias=env.deployment_alias,
            review_aliases=env.review_aliases,
            db_url=env.db_url,
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
    """Accepted delivery ids, in the findings store (``webhook_deliveries``) for twice the
    allowed age (older deliveries fail the timestamp check anyway): a replay is refused
    after a receiver restart, and by every replica that shares the store."""

    def __init__(self, store: Store, max_age_seconds: int) -> None:
        self.store = store
        self.ttl = 2 * max_age_seconds

    def first_time(self, delivery_id: str) -> bool:
        """Record ``delivery_id``; False when it was already seen."""
        return record_delivery(self.store, delivery_id, keep_seconds=self.ttl)


def route(settings: HookSettings, payload: dict[str, Any], delivery_id: str) -> ScanRequest | None:
    """What an MLflow event asks of infgate, or ``None`` to ignore it."""
    event = f"{payload.get('entity')}.{payload.get('action')}"
    data = payload.get("data") or {}
    if not isinstance(data, dict):
        return None
    name, version = data.get("name"), data.get("version")
    if event not in EVENTS or not isinstance(name, str) or not name:
        return None
    if isinstance(version, bool) or not isinstance(version, str | int):
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


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it passes ``limit`` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: HookSettings, starter: Any, *, store: Store | None = None) -> FastAPI:
    """The receiver app. ``starter.submit(ScanRequest)`` must return at once.

    Args:
        settings: the receiver's settings.
        starter: what starts the work for an accepted event.
        store: the store that keeps delivery ids (``None``: ``settings.db_url``, upgraded
            to the current schema now).
    """
    if store is None:
        store = Store.from_url(settings.db_url)
        store.upgrade()
    store.check_schema()
    app = FastAPI(title="infgate model-review hook", docs_url=None, redoc_url=None)
    guard = ReplayGuard(store, settings.max_age_seconds)
    app.state.settings = settings
    app.state.starter = starter
    app.state.store = store
    limit = settings.max_body_bytes

    def reject(status: int, why: str) -> JSONResponse:
        log.warning("webhook delivery rejected: %s", why)
        return JSONResponse({"accepted": False, "error": why}, status_code=status)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            return reject(400, "Content-Length is not a byte count")
        if declared is not None and (len(declared) > 18 or int(declared) > limit):
            return reject(413, f"body over the {limit}-byte limit (Content-Length {declared[:20]})")
        delivery_id = request.headers.get(DELIVERY_HEADER, "")
        stamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not (delivery_id and stamp and signature):
            return reject(401, "missing signature, timestamp or delivery id header")
        if len(delivery_id) > MAX_DELIVERY_ID:
            return reject(400, f"delivery id longer than {MAX_DELIVERY_ID} characters")
        body = await _read_capped(request, limit)
        if body is None:
            return reject(413, f"body over the {limit}-byte limit")
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
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return reject(400, "body is not JSON")
        if not isinstance(payload, dict):
            return reject(400, f"payload must be a JSON object, got {type(payload).__name__}")
        if not guard.first_time(delivery_id):
            return reject(409, f"delivery {delivery_id} was already accepted (replay)")
        req = route(settings, payload, delivery_id)
        if req is None:
            return JSONResponse({"accepted": True, "action": "ignored"}, status_code=202)
        starter.submit(req)  # starts the scan (or emits the event that does) exactly once
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
