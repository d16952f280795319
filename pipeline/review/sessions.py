"""Review-page sessions, kept server-side in the ``ui_sessions`` table.

The browser holds a random cookie value (32 bytes); the table holds only
HMAC-SHA256(key, cookie), so neither a copy of the table nor of the key alone signs anyone
in. Deleting the row ends the session: sign-out (:func:`end_session`),
:func:`~infgate.review.annotators.revoke_annotator` and
:func:`~infgate.review.annotators.deactivate_annotator` do. The CSRF token of a session is
HMAC(key, "csrf:" + cookie): one per session, never stored, checked in constant time.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets

from infgate.errors import InvalidInputError
from infgate.review.annotators import AnnotatorInfo
from infgate.store.models import Annotator, UISession, utcnow
from infgate.store.store import Store
from sqlalchemy import delete, select

__all__ = ["check_csrf", "csrf_token", "end_session", "open_session", "session_annotator"]

_COOKIE = re.compile(r"^[A-Za-z0-9_-]{43}$")
MIN_KEY_BYTES = 32


def _digest(key: bytes, cookie: str) -> str:
    return hmac.new(key, cookie.encode(), hashlib.sha256).hexdigest()


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise InvalidInputError(f"the session key must be at least {MIN_KEY_BYTES} bytes")
    return key


def open_session(store: Store, annotator_id: int, key: bytes, *, ttl_seconds: int) -> str:
    """Start a session for an annotator; returns the cookie value (expired rows are pruned).

    Raises:
        InvalidInputError: a key shorter than 32 bytes or a ttl outside 60 s .. 30 days.
    """
    _check_key(key)
    if isinstance(ttl_seconds, bool) or not 60 <= ttl_seconds <= 30 * 86_400:
        raise InvalidInputError(f"session ttl must be 60 s .. 30 days, got {ttl_seconds!r}")
    cookie = secrets.token_urlsafe(32)
    now = utcnow()
    with store.session() as s:
        s.execute(delete(UISession).where(UISession.expires_at < now))
        s.add(
            UISession(
                session_hash=_digest(key, cookie),
                annotator_id=annotator_id,
                created_at=now,
                expires_at=now + dt.timedelta(seconds=ttl_seconds),
            )
        )
    return cookie


def session_annotator(store: Store, cookie: str | None, key: bytes) -> AnnotatorInfo | None:
    """The active annotator of a live session, or ``None`` (unknown, ended or expired)."""
    if not isinstance(cookie, str) or not _COOKIE.match(cookie):
        return None
    with store.read_session() as s:
        row = s.execute(
            select(Annotator.id, Annotator.name)
            .join(UISession, UISession.annotator_id == Annotator.id)
            .where(
                UISession.session_hash == _digest(key, cookie),
                UISession.expires_at > utcnow(),
                Annotator.active.is_(True),
            )
        ).one_or_none()
    return None if row is None else AnnotatorInfo(int(row[0]), str(row[1]), True)


def end_session(store: Store, cookie: str | None, key: bytes) -> bool:
    """Delete the session behind ``cookie``; True when one was ended."""
    if not isinstance(cookie, str) or not _COOKIE.match(cookie):
        return False
    with store.session() as s:
        res = s.execute(delete(UISession).where(UISession.session_hash == _digest(key, cookie)))
        return bool(res.rowcount)  # type: ignore[attr-defined]


def csrf_token(cookie: str, key: bytes) -> str:
    """The session's CSRF token (put it in forms' ``csrf_token`` / ``X-CSRF-Token``)."""
    mac = hmac.new(key, b"csrf:" + cookie.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def check_csrf(cookie: str | None, key: bytes, token: str | None) -> bool:
    """True when ``token`` is the CSRF token of the session ``cookie`` (constant time)."""
    if not cookie or not token or len(token) > 100:
        return False
    return hmac.compare_digest(csrf_token(cookie, key), token)
