"""Annotator credentials: login tokens and passwords, both stored as salted scrypt hashes.

A token reads ``igt_<16 hex>.<secret>``: the first part is the token id, a unique column
that finds the row BEFORE any hash runs (a forged token costs one indexed lookup, never a
scrypt); the secret is checked against its scrypt hash. Nothing is stored in plain text and
the token is shown once, at creation. Tokens issued before schema revision 0002
(``igt_<n>_<secret>``) have no token id and no longer sign in: issue a new one with
:func:`issue_token`.

A password sign-in for an unknown, deactivated or password-less name runs one scrypt
against a dummy hash, so the answer takes as long as for a real name.

:func:`revoke_annotator` ends every token and review-page session of an annotator (they may
still sign in with a password); :func:`deactivate_annotator` also stops them signing in or
deciding at all. Both keep every decision.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from functools import lru_cache

from infgate.errors import InvalidInputError, NotFoundError
from infgate.store.models import Annotator, QueueItem, UISession, utcnow
from infgate.store.store import Store
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

__all__ = [
    "AnnotatorInfo",
    "add_annotator",
    "annotator_by_id",
    "authenticate_password",
    "authenticate_token",
    "deactivate_annotator",
    "get_annotator",
    "issue_token",
    "list_annotators",
    "revoke_annotator",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_TOKEN = re.compile(r"^(igt_[0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
MAX_PASSWORD = 1024


@dataclass(frozen=True)
class AnnotatorInfo:
    """An annotator without credentials."""

    id: int
    name: str
    active: bool


def _scrypt(secret: str, salt: bytes, n: int) -> bytes:
    """The one place a credential is hashed (tests count the calls)."""
    return hashlib.scrypt(secret.encode(), salt=salt, dklen=32, n=n, r=8, p=1)


def _hash_secret(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _SCRYPT["n"])
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${b64(salt).decode()}${b64(digest).decode()}"


def _check_secret(password: str, stored: str) -> bool:
    try:
        scheme, n, salt, digest = stored.split("$")
        cost = int(n)
    except ValueError:
        return False
    if scheme != "scrypt" or cost not in (2**14, 2**15, 2**16):
        return False
    got = _scrypt(password, base64.b64decode(salt), cost)
    return hmac.compare_digest(got, base64.b64decode(digest))


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A stored-hash string with the real cost that no password matches (random salt and
    digest): checking against it costs exactly the one scrypt a real check costs, and making
    it costs none, so even the first unknown name of a process answers in the same time."""
    b64 = base64.b64encode
    salt, digest = secrets.token_bytes(16), secrets.token_bytes(32)
    return f"scrypt${_SCRYPT['n']}${b64(salt).decode()}${b64(digest).decode()}"


def check_name(name: str) -> str:
    """Validate an annotator name (letters, digits, ``_.@:-``; up to 64 characters)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(
            f"annotator name {name!r} is not allowed: use 1-64 letters, digits or _.@:- "
            f"starting with a letter or digit"
        )
    return name


def _new_token() -> tuple[str, str, str]:
    """``(token, token id, scrypt hash of the secret)``."""
    token_id = f"igt_{secrets.token_hex(8)}"
    secret = secrets.token_urlsafe(32)  # 43 characters
    return f"{token_id}.{secret}", token_id, _hash_secret(secret)


def add_annotator(
    store: Store, name: str, *, password: str | None = None, with_token: bool = True
) -> str | None:
    """Create annotator ``name``; returns the new login token (shown once), or ``None``.

    Raises:
        InvalidInputError: bad name, password shorter than 8 characters, or name taken.
    """
    check_name(name)
    if password is not None and not 8 <= len(password) <= MAX_PASSWORD:
        raise InvalidInputError(f"password must be 8-{MAX_PASSWORD} characters")
    token, token_id, token_hash = _new_token() if with_token else (None, None, None)
    with store.session() as s:
        if s.scalar(select(Annotator.id).where(Annotator.name == name)) is not None:
            raise InvalidInputError(f"annotator {name!r} already exists")
        s.add(
            Annotator(
                name=name,
                token_id=token_id,
                token_hash=token_hash,
                password_hash=_hash_secret(password) if password else None,
            )
        )
    return token


def issue_token(store: Store, name: str) -> str:
    """A new login token for active annotator ``name`` (shown once); their previous token
    stops working. Sessions already open are kept (end them with :func:`revoke_annotator`).

    Raises:
        NotFoundError: no such annotator.
        InvalidInputError: the annotator is deactivated.
    """
    token, token_id, token_hash = _new_token()
    with store.session() as s:
        ann = _row(s, name)
        if not ann.active:
            raise InvalidInputError(f"annotator {name!r} is deactivated; no token issued")
        ann.token_id, ann.token_hash = token_id, token_hash
    return token


def _row(s: Session, name: str) -> Annotator:
    ann = s.scalar(select(Annotator).where(Annotator.name == name))
    if ann is None:
        raise NotFoundError(f"no annotator named {name!r} (create one: infgate annotator add)")
    return ann


def revoke_annotator(store: Store, name: str) -> int:
    """End every login token and review-page session of annotator ``name``.

    The annotator stays active (a password, if set, still signs in; :func:`issue_token`
    gives a new token) and every decision is kept.

    Returns:
        The number of sessions ended.

    Raises:
        NotFoundError: no such annotator.
    """
    with store.session() as s:
        ann = _row(s, name)
        ann.token_id = None
        ann.token_hash = None
        ended = s.execute(delete(UISession).where(UISession.annotator_id == ann.id))
        return int(ended.rowcount or 0)  # type: ignore[attr-defined]


def deactivate_annotator(store: Store, name: str) -> AnnotatorInfo:
    """Deactivate annotator ``name``: no sign-in (token, password or open session), no new
    decisions or claims, their leases released; decisions and the row are kept.

    Raises:
        NotFoundError: no such annotator.
    """
    with store.session() as s:
        ann = _row(s, name)
        if ann.active:
            ann.active = False
            ann.deactivated_at = utcnow()
        s.execute(delete(UISession).where(UISession.annotator_id == ann.id))
        held = s.scalars(
            select(QueueItem).where(QueueItem.claimed_by == ann.id, QueueItem.state == "claimed")
        ).all()
        for item in held:
            item.state, item.claimed_by = "pending", None
            item.lease_token, item.lease_expires_at = None, None
        return AnnotatorInfo(ann.id, ann.name, ann.active)


def ensure_annotator(store: Store, name: str) -> int:
    """The id of annotator ``name``, creating it without credentials (import sources)."""
    check_name(name)
    with store.session() as s:
        found = s.scalar(select(Annotator.id).where(Annotator.name == name))
        if found is not None:
            return int(found)
        ann = Annotator(name=name)
        s.add(ann)
        s.flush()
        return ann.id


def get_annotator(store: Store, name: str) -> AnnotatorInfo:
    """Annotator ``name``; raises :class:`NotFoundError` naming it when missing."""
    with store.read_session() as s:
        ann = _row(s, name)
        return AnnotatorInfo(ann.id, ann.name, ann.active)


def annotator_by_id(store: Store, annotator_id: int) -> AnnotatorInfo | None:
    """The active annotator with this id, or ``None``."""
    if isinstance(annotator_id, bool) or not isinstance(annotator_id, int):
        return None
    if not 1 <= annotator_id <= 2**31 - 1:
        return None
    with store.read_session() as s:
        ann = s.get(Annotator, annotator_id)
        return AnnotatorInfo(ann.id, ann.name, ann.active) if ann and ann.active else None


def list_annotators(store: Store) -> list[AnnotatorInfo]:
    """Every annotator, by name."""
    with store.read_session() as s:
        rows = s.scalars(select(Annotator).order_by(Annotator.name)).all()
        return [AnnotatorInfo(a.id, a.name, a.active) for a in rows]


def authenticate_token(store: Store, token: str) -> AnnotatorInfo | None:
    """The active annotator owning ``token``, or ``None``.

    A malformed token, or one whose id no annotator holds, is refused before any scrypt.
    """
    if not isinstance(token, str) or len(token) > 200:
        return None
    match = _TOKEN.match(token)
    if match is None:
        return None
    with store.read_session() as s:
        ann = s.scalar(select(Annotator).where(Annotator.token_id == match.group(1)))
        if ann is None or not ann.active or not ann.token_hash:
            return None
        if not _check_secret(match.group(2), ann.token_hash):
            return None
        return AnnotatorInfo(ann.id, ann.name, ann.active)


def authenticate_password(store: Store, name: str, password: str) -> AnnotatorInfo | None:
    """The active annotator ``name`` if ``password`` matches, else ``None``.

    Exactly one scrypt runs whatever the outcome (a dummy hash for an unknown, deactivated
    or password-less name), so timing does not tell which names exist.
    """
    if not isinstance(name, str) or not isinstance(password, str):
        return None
    if len(password) > MAX_PASSWORD or len(name) > 255:
        return None
    with store.read_session() as s:
        ann = s.scalar(select(Annotator).where(Annotator.name == name))
        stored = ann.password_hash if ann is not None and ann.active else None
        ok = _check_secret(password, stored or _dummy_hash())
        if ann is None or stored is None or not ok:
            return None
        return AnnotatorInfo(ann.id, ann.name, ann.active)
