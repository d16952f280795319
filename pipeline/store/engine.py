"""Engines for SQLite (foreign keys on, WAL, immediate transactions) and PostgreSQL, and the
Alembic plumbing that upgrades or checks the schema revision."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from infgate.errors import InvalidInputError, SchemaVersionError
from infgate.settings import DEFAULT_DB_URL, Settings
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

__all__ = [
    "DEFAULT_DB_URL",
    "VERSION_TABLE",
    "current_revision",
    "head_revision",
    "make_engine",
    "resolve_url",
    "safe_url",
    "upgrade_schema",
    "verify_schema",
]

log = logging.getLogger(__name__)
VERSION_TABLE = "infgate_alembic_version"
_MIGRATIONS = Path(__file__).with_name("migrations")


def resolve_url(url: str | None) -> str:
    """``url``, else the settings' ``INFGATE_DB_URL``, else ``sqlite:///infgate.db``."""
    return url or Settings.from_env().db_url


def safe_url(engine: Engine) -> str:
    """The engine URL with any password masked, for messages and logs."""
    return engine.url.render_as_string(hide_password=True)


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets foreign keys, WAL, a busy timeout and BEGIN IMMEDIATE.

    BEGIN IMMEDIATE takes SQLite's write lock when a transaction starts, so two writers queue
    on the busy timeout instead of failing to upgrade a read lock mid-transaction.

    Raises:
        InvalidInputError: the URL names a back-end other than SQLite or PostgreSQL.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a terse message
        raise InvalidInputError(
            f"INFGATE_DB_URL / --db {url!r} is not a database URL: {exc}"
        ) from exc
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise InvalidInputError(
            f"the store supports sqlite:/// and postgresql:// URLs, got back-end {backend!r}"
        )
    if backend == "postgresql":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().resolve().parent
        if not folder.is_dir():
            raise InvalidInputError(
                f"cannot create the SQLite store {url!r}: {folder} does not exist"
            )
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    if parsed.database not in (None, "", ":memory:"):
        kwargs.update(pool_size=10, max_overflow=20)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the "begin" hook below starts transactions
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        if parsed.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # read-only sessions (Store.read_session) start a deferred transaction: in WAL mode
        # they read a snapshot without blocking writers
        read_only = conn.get_execution_options().get("infgate_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def head_revision() -> str:
    """The newest schema revision this infgate knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision (``None`` for an empty database)."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def upgrade_schema(engine: Engine, revision: str = "head") -> str:
    """Run the Alembic migrations up to ``revision`` in one transaction; returns the revision."""
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    rev = current_revision(engine)
    log.info("store %s is at schema revision %s", safe_url(engine), rev)
    return rev or ""


def verify_schema(engine: Engine) -> None:
    """Refuse to run against a schema revision this infgate does not know.

    Raises:
        SchemaVersionError: the database is empty, older, newer or unknown.
    """
    head = head_revision()
    rev = current_revision(engine)
    if rev == head:
        return
    where = safe_url(engine)
    if rev is None:
        msg = f"the store at {where} has no infgate schema yet"
    else:
        known = {
            s.revision for s in ScriptDirectory.from_config(_alembic_config()).walk_revisions()
        }
        state = "an older" if rev in known else "an unknown (newer?)"
        msg = f"the store at {where} is at {state} schema revision {rev!r}"
    raise SchemaVersionError(
        f"{msg}; this infgate needs revision {head!r}. Run `infgate db upgrade` "
        f"(with the same INFGATE_DB_URL / --db) and try again."
    )
