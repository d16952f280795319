"""FastAPI app of the review page: sign-in, next item, decisions, progress.

Annotators sign in with their token (or name + password); the page then keeps a signed,
HttpOnly, SameSite=Strict session cookie. API clients send ``Authorization: Bearer <token>``.
Anything without valid credentials gets 401. Every form field is validated here before the
queue sees it, and all SQL goes through SQLAlchemy's bound parameters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from infgate.errors import InvalidInputError
from infgate.plugins.review_ui.page import login_page, message_page, review_page
from infgate.review.annotators import (
    AnnotatorInfo,
    annotator_by_id,
    authenticate_password,
    authenticate_token,
)
from infgate.review.queue import ACTIONS, ClaimedItem, claim_next, decide, queue_stats
from infgate.store import LeaseExpiredError, NotFoundError, Store
from infgate.store.models import Decision, Finding, utcnow
from pydantic import BaseModel, Field
from sqlalchemy import func, select

__all__ = ["create_app"]

log = logging.getLogger(__name__)
COOKIE = "infgate_session"
SESSION_SECONDS = 12 * 3600


class DecisionIn(BaseModel):
    """JSON body of ``POST /api/decisions``."""

    item_id: int = Field(ge=1)
    action: str = Field(max_length=16)
    label: str | None = Field(default=None, max_length=255)
    lease_token: str | None = Field(default=None, max_length=64)


class _Sessions:
    """Signed session cookies: ``annotator_id.expiry.hmac``; the key lives in memory unless
    ``INFGATE_UI_SECRET`` is set (then sessions survive restarts)."""

    def __init__(self) -> None:
        env = os.environ.get("INFGATE_UI_SECRET")
        self.key = env.encode() if env else secrets.token_bytes(32)

    def _sig(self, payload: str) -> str:
        mac = hmac.new(self.key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def issue(self, annotator_id: int) -> str:
        payload = f"{annotator_id}.{int(time.time()) + SESSION_SECONDS}"
        return f"{payload}.{self._sig(payload)}"

    def read(self, cookie: str | None) -> int | None:
        if not cookie or cookie.count(".") != 2 or len(cookie) > 200:
            return None
        ident, expiry, sig = cookie.split(".")
        if not (ident.isdigit() and expiry.isdigit()):
            return None
        if not hmac.compare_digest(sig, self._sig(f"{ident}.{expiry}")):
            return None
        return int(ident) if int(expiry) > time.time() else None


def _nonce(request: Request) -> str:
    nonce: str = getattr(request.state, "nonce", "")
    return nonce


def _who(request: Request) -> AnnotatorInfo | None:
    store: Store = request.app.state.store
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return authenticate_token(store, auth[7:].strip())
    ident = request.app.state.sessions.read(request.cookies.get(COOKIE))
    return None if ident is None else annotator_by_id(store, ident)


def _require(request: Request) -> AnnotatorInfo:
    who = _who(request)
    if who is None:
        raise HTTPException(status_code=401, detail="sign in first: valid token or password needed")
    return who


Annotator = Annotated[AnnotatorInfo, Depends(_require)]


def create_app(store: Store) -> FastAPI:
    """The review page's ASGI app over ``store`` (schema checked now, not on first request)."""
    store.check_schema()
    app = FastAPI(title="infgate review", docs_url=None, redoc_url=None, openapi_url=None)
    sessions = _Sessions()
    app.state.store = store
    app.state.sessions = sessions

    @app.middleware("http")
    async def _security_headers(request: Request, call_next: Any) -> Response:
        request.state.nonce = secrets.token_urlsafe(16)
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src 'nonce-{request.state.nonce}'; form-action 'self'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        wants_html = "text/html" in request.headers.get("accept", "")
        if not request.url.path.startswith("/api/") and wants_html:
            if exc.status_code == 401:
                page = login_page(_nonce(request), None)
            else:
                page = message_page(_nonce(request), f"Error {exc.status_code}", str(exc.detail))
            return HTMLResponse(page, status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    def _thumbs(item: ClaimedItem) -> dict[str, tuple[list[float], str | None]]:
        expl = item.explanation or {}
        ids = [
            str(r["train_example_id"]) for k in ("supporting", "opposing") for r in expl.get(k, [])
        ]
        if not ids:
            return {}
        with store.read_session() as s:
            rows = s.execute(
                select(Finding.example_id, Finding.features, Finding.given_label).where(
                    Finding.scan_id == item.scan_id, Finding.example_id.in_(ids[:20])
                )
            ).all()
        return {ex: (feats, label) for ex, feats, label in rows if feats is not None}

    def _mine_today(who: AnnotatorInfo) -> int:
        today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
        with store.read_session() as s:
            n = s.scalar(
                select(func.count()).where(
                    Decision.annotator_id == who.id,
                    Decision.created_at >= today,
                    Decision.counted.is_(True),
                )
            )
        return int(n or 0)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Liveness for start scripts and compose (``/`` answers 401 without credentials)."""
        return JSONResponse({"status": "ok"})

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return HTMLResponse(login_page(_nonce(request)))

    @app.post("/login")
    def login(
        request: Request,
        token: Annotated[str, Form(max_length=200)] = "",
        name: Annotated[str, Form(max_length=64)] = "",
        password: Annotated[str, Form(max_length=1024)] = "",
    ) -> Response:
        who = None
        if token:
            who = authenticate_token(store, token.strip())
        elif name and password:
            who = authenticate_password(store, name.strip(), password)
        if who is None:
            log.info("failed sign-in for %r", name or "<token>")
            page = login_page(_nonce(request), "Wrong token, or wrong name/password.")
            return HTMLResponse(page, status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            sessions.issue(who.id),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
        )
        return response

    @app.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, who: Annotator, msg: str | None = None) -> HTMLResponse:
        item = claim_next(store, who.id)
        stats = queue_stats(store)
        flash = msg[:200] if msg else None
        thumbs = _thumbs(item) if item is not None else {}
        page = review_page(_nonce(request), who.name, item, stats, _mine_today(who), thumbs, flash)
        return HTMLResponse(page)

    def _parse(decision: str) -> tuple[str, str | None]:
        action, _, label = decision.partition(":")
        if action not in ACTIONS:
            raise HTTPException(400, f"unknown decision {decision!r}; use one of {ACTIONS}")
        if action == "relabel" and not label:
            raise HTTPException(400, "relabel needs a class, e.g. relabel:3")
        return action, (label if action == "relabel" else None)

    def _record(
        who: AnnotatorInfo, item_id: int, action: str, label: str | None, token: str | None
    ) -> Any:
        try:
            return decide(
                store,
                item_id,
                who.id,
                action,  # type: ignore[arg-type]  # checked by _parse / api_decide
                label=label,
                lease_token=token,
                source="ui",
            )
        except LeaseExpiredError as exc:
            raise HTTPException(409, str(exc)) from None
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        except InvalidInputError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.post("/decide")
    def decide_form(
        who: Annotator,
        item_id: Annotated[int, Form(ge=1)],
        decision: Annotated[str, Form(max_length=300)],
        lease_token: Annotated[str, Form(max_length=64)] = "",
    ) -> Response:
        action, label = _parse(decision)
        res = _record(who, item_id, action, label, lease_token or None)
        shown = res.action + (f" {res.label_after}" if res.action == "relabel" else "")
        return RedirectResponse(f"/?msg=Saved: item {res.item_id} {shown}", status_code=303)

    @app.get("/api/next")
    def api_next(who: Annotator, lease_seconds: int = 300) -> JSONResponse:
        if not 10 <= lease_seconds <= 3600:
            raise HTTPException(400, "lease_seconds must be between 10 and 3600")
        item = claim_next(store, who.id, lease_seconds=lease_seconds)
        if item is None:
            return JSONResponse({"item": None})
        body = {k: v for k, v in item.__dict__.items() if k != "lease_expires_at"}
        body["lease_expires_at"] = (
            item.lease_expires_at.isoformat() if item.lease_expires_at else None
        )
        return JSONResponse({"item": body})

    @app.post("/api/decisions")
    def api_decide(who: Annotator, body: DecisionIn) -> JSONResponse:
        if body.action not in ACTIONS:
            raise HTTPException(400, f"action must be one of {ACTIONS}, got {body.action!r}")
        res = _record(who, body.item_id, body.action, body.label, body.lease_token)
        return JSONResponse(res.__dict__)

    @app.get("/api/stats")
    def api_stats(who: Annotator) -> JSONResponse:
        stats = queue_stats(store)
        return JSONResponse({**stats.__dict__, "left": stats.left, "mine_today": _mine_today(who)})

    return app
