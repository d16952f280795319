"""FastAPI app of the review page: sign-in, next item, decisions, progress.

Annotators sign in with their token (or name + password); the page then keeps a
server-side session (``ui_sessions``) behind an HttpOnly, SameSite=Strict cookie, marked
``Secure`` over https (:class:`~infgate.plugins.review_ui.security.UIOptions`). Sign-out,
:func:`~infgate.review.annotators.revoke_annotator` and ``deactivate_annotator`` end it.
API clients send ``Authorization: Bearer <token>``. Anything without valid credentials gets
401.

State-changing requests signed in by cookie need the session's CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``) AND an ``Origin`` / ``Referer`` of the page itself
(403 otherwise); sign-in checks the origin (there is no session yet). Failed sign-ins are
rate limited per name and per client address (429, in memory, per process). Every form
field is validated here before the queue sees it; the page reads and writes only through
``infgate.review`` functions.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from infgate.errors import InvalidInputError, LeaseExpiredError, NotFoundError
from infgate.plugins.review_ui.page import login_page, message_page, review_page
from infgate.plugins.review_ui.security import LoginLimiter, UIOptions, same_origin, session_key
from infgate.review.annotators import AnnotatorInfo, authenticate_password, authenticate_token
from infgate.review.decisions import MAX_ID
from infgate.review.queue import (
    ACTIONS,
    ClaimedItem,
    claim_next,
    decide,
    decided_today,
    queue_stats,
    reference_examples,
)
from infgate.review.sessions import (
    check_csrf,
    csrf_token,
    end_session,
    open_session,
    session_annotator,
)
from infgate.settings import Settings, check_lease_seconds
from infgate.store import Store
from pydantic import BaseModel, Field

__all__ = ["create_app"]

log = logging.getLogger(__name__)
COOKIE = "infgate_session"
CSRF_HEADER = "X-CSRF-Token"


class DecisionIn(BaseModel):
    """JSON body of ``POST /api/decisions``."""

    item_id: int = Field(ge=1, le=MAX_ID, strict=True)  # `true` is not item 1
    action: str = Field(max_length=16)
    label: str | None = Field(default=None, max_length=255)
    lease_token: str | None = Field(default=None, max_length=64)


@dataclass(frozen=True)
class Caller:
    """Who sent a request, and how: ``token`` (bearer) or ``session`` (cookie)."""

    annotator: AnnotatorInfo
    via: str
    cookie: str | None = None


def _nonce(request: Request) -> str:
    nonce: str = getattr(request.state, "nonce", "")
    return nonce


def _caller(request: Request) -> Caller | None:
    store: Store = request.app.state.store
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        who = authenticate_token(store, auth[7:].strip())
        return None if who is None else Caller(who, "token")
    cookie = request.cookies.get(COOKIE)
    who = session_annotator(store, cookie, request.app.state.key)
    return None if who is None else Caller(who, "session", cookie)


def _require(request: Request) -> Caller:
    caller = _caller(request)
    if caller is None:
        raise HTTPException(status_code=401, detail="sign in first: valid token or password needed")
    return caller


SignedIn = Annotated[Caller, Depends(_require)]


def _check_origin(request: Request) -> None:
    host = request.headers.get("host", "")
    allowed = request.app.state.options.allowed_origins
    if not same_origin(
        request.headers.get("origin"), request.headers.get("referer"), host, allowed
    ):
        raise HTTPException(403, "cross-origin request refused: post from the review page itself")


def _check_write(request: Request, caller: Caller, token: str | None) -> None:
    """Cookie sessions need a same-origin request AND the session's CSRF token (403)."""
    if caller.via != "session":
        return  # a bearer token is never sent by a browser on its own: no CSRF risk
    _check_origin(request)
    if not check_csrf(caller.cookie, request.app.state.key, token):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


def _secure(request: Request) -> bool:
    wanted: bool | None = request.app.state.options.secure_cookies
    return request.url.scheme == "https" if wanted is None else wanted


def create_app(
    store: Store, settings: Settings | None = None, options: UIOptions | None = None
) -> FastAPI:
    """The review page's ASGI app over ``store`` (schema checked now, not on first request).

    Args:
        store: the findings store.
        settings: process settings (``ui_secret``, ``lease_seconds``); ``None`` reads
            :meth:`Settings.from_env`.
        options: cookie, session and rate-limit options.

    Raises:
        ConfigError: a weak ``INFGATE_UI_SECRET`` (see :func:`session_key`).
    """
    settings = settings if settings is not None else Settings.from_env()
    options = options if options is not None else UIOptions()
    store.check_schema()
    app = FastAPI(title="infgate review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.key = session_key(settings.ui_secret)
    app.state.options = options
    app.state.limiter = limiter = LoginLimiter(options)
    default_lease = settings.lease_seconds

    @app.middleware("http")
    async def _security_headers(request: Request, call_next: Any) -> Response:
        request.state.nonce = secrets.token_urlsafe(16)
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src 'nonce-{request.state.nonce}'; form-action 'self'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on
        # the page's own POSTs, and the origin check needs the real one
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        wants_html = "text/html" in request.headers.get("accept", "")
        headers = dict(exc.headers or {})
        if not request.url.path.startswith("/api/") and wants_html:
            if exc.status_code == 401:
                page = login_page(_nonce(request), None)
            else:
                page = message_page(_nonce(request), f"Error {exc.status_code}", str(exc.detail))
            return HTMLResponse(page, status_code=exc.status_code, headers=headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    def _thumbs(item: ClaimedItem) -> dict[str, tuple[list[float], str | None]]:
        expl = item.explanation or {}
        ids = [
            str(r["train_example_id"]) for k in ("supporting", "opposing") for r in expl.get(k, [])
        ]
        return reference_examples(store, item.scan_id, ids, limit=20)

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
        _check_origin(request)
        client = request.client.host if request.client else "unknown"
        keys = [f"client:{client}"] + ([f"user:{name.strip()}"] if name and not token else [])
        wait = limiter.retry_after(keys)
        if wait is not None:
            log.warning("sign-in refused (rate limited) for %r from %s", name or "<token>", client)
            raise HTTPException(
                429,
                f"too many failed sign-ins; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        who = None
        if token:
            who = authenticate_token(store, token.strip())
        elif name and password:
            who = authenticate_password(store, name.strip(), password)
        if who is None:
            limiter.failed(keys)
            log.info("failed sign-in for %r from %s", name or "<token>", client)
            page = login_page(_nonce(request), "Wrong token, or wrong name/password.")
            return HTMLResponse(page, status_code=401)
        limiter.succeeded(f"user:{who.name}")
        cookie = open_session(store, who.id, app.state.key, ttl_seconds=options.session_seconds)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=options.session_seconds,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )
        return response

    @app.post("/logout")
    def logout(
        request: Request, csrf_token_field: Annotated[str, Form(alias="csrf_token")] = ""
    ) -> Response:
        caller = _caller(request)
        if caller is not None and caller.via == "session":
            _check_write(request, caller, csrf_token_field or request.headers.get(CSRF_HEADER))
            end_session(store, caller.cookie, app.state.key)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=_secure(request))
        return response

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, caller: SignedIn, msg: str | None = None) -> HTMLResponse:
        who = caller.annotator
        item = _claim(who, default_lease)
        stats = queue_stats(store)
        flash = msg[:200] if msg else None
        thumbs = _thumbs(item) if item is not None else {}
        csrf = csrf_token(caller.cookie, app.state.key) if caller.cookie else ""
        mine = decided_today(store, who.id)
        page = review_page(_nonce(request), who.name, item, stats, mine, thumbs, flash, csrf=csrf)
        return HTMLResponse(page)

    def _claim(who: AnnotatorInfo, lease: int) -> ClaimedItem | None:
        try:
            return claim_next(store, who.id, lease_seconds=lease)
        except NotFoundError as exc:  # deactivated between sign-in and now
            raise HTTPException(401, str(exc)) from None

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
        request: Request,
        caller: SignedIn,
        item_id: Annotated[int, Form(ge=1, le=MAX_ID)],
        decision: Annotated[str, Form(max_length=300)],
        lease_token: Annotated[str, Form(max_length=64)] = "",
        csrf_token_field: Annotated[str, Form(alias="csrf_token", max_length=100)] = "",
        csrf_header: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
    ) -> Response:
        _check_write(request, caller, csrf_token_field or csrf_header)
        action, label = _parse(decision)
        res = _record(caller.annotator, item_id, action, label, lease_token or None)
        shown = res.action + (f" {res.label_after}" if res.action == "relabel" else "")
        return RedirectResponse(f"/?msg=Saved: item {res.item_id} {shown}", status_code=303)

    @app.get("/api/next")
    def api_next(caller: SignedIn, lease_seconds: int | None = None) -> JSONResponse:
        try:
            lease = check_lease_seconds(default_lease if lease_seconds is None else lease_seconds)
        except InvalidInputError as exc:
            raise HTTPException(400, str(exc)) from None
        item = _claim(caller.annotator, lease)
        if item is None:
            return JSONResponse({"item": None})
        body = {k: v for k, v in item.__dict__.items() if k != "lease_expires_at"}
        body["lease_expires_at"] = (
            item.lease_expires_at.isoformat() if item.lease_expires_at else None
        )
        return JSONResponse({"item": body})

    @app.post("/api/decisions")
    def api_decide(
        request: Request,
        caller: SignedIn,
        body: DecisionIn,
        csrf_header: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
    ) -> JSONResponse:
        _check_write(request, caller, csrf_header)
        if body.action not in ACTIONS:
            raise HTTPException(400, f"action must be one of {ACTIONS}, got {body.action!r}")
        res = _record(caller.annotator, body.item_id, body.action, body.label, body.lease_token)
        return JSONResponse(res.__dict__)

    @app.get("/api/stats")
    def api_stats(caller: SignedIn) -> JSONResponse:
        stats = queue_stats(store)
        mine = decided_today(store, caller.annotator.id)
        return JSONResponse({**stats.__dict__, "left": stats.left, "mine_today": mine})

    return app
