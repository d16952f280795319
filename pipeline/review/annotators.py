"""Annotator credentials: login tokens and passwords, both stored as salted scrypt hashes.

A token reads ``igt_<annotator id>_<secret>``: the id finds the row, the secret is checked
against its hash. Nothing is stored in plain text and the token is shown once, at creation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from infgate.errors import InvalidInputError, NotFoundError
from infgate.store.models import Annotator
from infgate.store.store import Store
from sqlalchemy import select

__all__ = [
    "AnnotatorInfo",
    "add_annotator",
    "annotator_by_id",
    "authenticate_password",
    "authenticate_token",
    "get_annotator",
    "list_annotators",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_TOKEN = re.compile(r"^igt_([0-9]{1,12})_([A-Za-z0-9_-]{20,100})$")


@dataclass(frozen=True)
class AnnotatorInfo:
    """An annotator without credentials."""

    id: int
    name: str
    active: bool


def _hash_secret(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${b64(salt).decode()}${b64(digest).decode()}"


def _check_secret(password: str, stored: str) -> bool:
    try:
        scheme, n, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    got = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), dklen=32, n=int(n), r=8, p=1
    )
    return hmac.compare_digest(got, base64.b64decode(digest))


def check_name(name: str) -> str:
    """Validate an annotator name (letters, digits, ``_.@:-``; up to 64 characters)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(
            f"annotator name {name!r} is not allowed: use 1-64 letters, digits or _.@:- "
            f"starting with a letter or digit"
        )
    return name


def add_annotator(
    store: Store, name: str, *, password: str | None = None, with_token: bool = True
) -> str | None:
    """Create annotator ``name``; returns the new login token (shown once), or ``None``.

    Raises:
        InvalidInputError: bad name, password shorter than 8 characters, or name taken.
    """
    check_name(name)
    if password is not None and len(password) < 8:
        raise InvalidInputError("password must be at least 8 characters")
    secret = secrets.token_urlsafe(32) if with_token else None
    with store.session() as s:
        if s.scalar(select(Annotator.id).where(Annotator.name == name)) is not None:
            raise InvalidInputError(f"annotator {name!r} already exists")
        ann = Annotator(
            name=name,
            token_hash=_hash_secret(secret) if secret else None,
            password_hash=_hash_secret(password) if password else None,
        )
        s.add(ann)
        s.flush()
        token = f"igt_{ann.id}_{secret}" if secret else None
    return token


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
        ann = s.scalar(select(Annotator).where(Annotator.name == name))
        if ann is None:
            raise NotFoundError(f"no annotator named {name!r} (create one: infgate annotator add)")
        return AnnotatorInfo(ann.id, ann.name, ann.active)


def annotator_by_id(store: Store, annotator_id: int) -> AnnotatorInfo | None:
    """The active annotator with this id, or ``None``."""
    with store.read_session() as s:
        ann = s.get(Annotator, annotator_id)
        return AnnotatorInfo(ann.id, ann.name, ann.active) if ann and ann.active else None


def list_annotators(store: Store) -> list[AnnotatorInfo]:
    """Every annotator, by name."""
    with store.read_session() as s:
        rows = s.scalars(select(Annotator).order_by(Annotator.name)).all()
        return [AnnotatorInfo(a.id, a.name, a.active) for a in rows]


def authenticate_token(store: Store, token: str) -> AnnotatorInfo | None:
    """The active annotator owning ``token``, or ``None``."""
    if not isinstance(token, str) or len(token) > 200:
        return None
    match = _TOKEN.match(token)
    if match is None:
        return None
    with store.read_session() as s:
        ann = s.get(Annotator, int(match.group(1)))
        if ann is None or not ann.active or not ann.token_hash:
            return None
        if not _check_secret(match.group(2), ann.token_hash):
            return None
        return AnnotatorInfo(ann.id, ann.name, ann.active)


def authenticate_password(store: Store, name: str, password: str) -> AnnotatorInfo | None:
    """The active annotator ``name`` if ``password`` matches, else ``None``."""
    if not isinstance(name, str) or not isinstance(password, str) or len(password) > 1024:
        return None
    with store.read_session() as s:
        ann = s.scalar(select(Annotator).where(Annotator.name == name))
        if ann is None or not ann.active or not ann.password_hash:
            return None
        ok = _check_secret(password, ann.password_hash)
        return AnnotatorInfo(ann.id, ann.name, ann.active) if ok else None
