"""Crash safety: a process SIGKILLed in the middle of ``record_scan`` leaves no partial scan."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

from infgate.store import Store
from infgate.store.models import DatasetVersion, Finding, ModelVersion, Scan
from sqlalchemy import event, func, select

from tests.store.fixtures import make_record


def _child(url: str, marker: str) -> None:
    """Write a scan; right after the findings INSERT ran inside the open transaction,
    announce it and wait to be killed."""
    store = Store.from_url(url)

    @event.listens_for(store.engine, "after_cursor_execute")
    def _pause(conn, cursor, statement, params, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO FINDINGS"):
            Path(marker).write_text("inside")
            time.sleep(120)

    store.record_scan(make_record(500, seed=1))


def _counts(store: Store) -> tuple[int, ...]:
    with store.session() as s:
        return tuple(
            int(s.scalar(select(func.count()).select_from(m)) or 0)
            for m in (Scan, Finding, ModelVersion, DatasetVersion)
        )


def test_killed_mid_write_leaves_store_consistent(
    store: Store, db_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    store.dispose()  # the forked child opens its own connections
    # fork: the child inherits the imported modules, so it starts in milliseconds
    child = multiprocessing.get_context("fork").Process(target=_child, args=(db_url, str(marker)))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.is_alive(), f"child exited early with {child.exitcode}"
            assert time.monotonic() < deadline, "child never reached the findings insert"
            time.sleep(0.02)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == -signal.SIGKILL
    reopened = Store.from_url(db_url)
    try:
        # PostgreSQL aborts the dead client's transaction; SQLite rolls back its WAL frames.
        deadline = time.monotonic() + 30
        while True:
            try:
                counts = _counts(reopened)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert counts == (0, 0, 0, 0)
        scan_id = reopened.record_scan(make_record(500, seed=1))
        assert _counts(reopened) == (1, 500, 1, 1)
        assert reopened.get_scan(scan_id).n_findings == 500
    finally:
        reopened.dispose()
