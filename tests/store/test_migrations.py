"""Schema revisions over older stores, on SQLite and PostgreSQL: 0002 over 0001 (data kept,
new columns and tables usable, old-format tokens no longer sign in, and back down) and 0003
over 0002 (dataset versions keep the column plan they were read with)."""

from __future__ import annotations

import dataclasses
import datetime as dt

from alembic import command
from infgate.review.annotators import authenticate_password, authenticate_token, revoke_annotator
from infgate.store import Store
from infgate.store.deliveries import record_delivery
from infgate.store.engine import _alembic_config, current_revision
from sqlalchemy import inspect, text

from tests.store.fixtures import make_record


def test_upgrade_from_0001_keeps_data_and_adds_the_new_schema(db_url: str) -> None:
    st = Store.from_url(db_url)
    try:
        assert st.upgrade("0001") == "0001"
        now = dt.datetime.now(dt.UTC)
        with st.engine.begin() as conn:  # what an 0001 store holds: an annotator, a scan
            conn.execute(
                text(
                    "INSERT INTO annotators (name, token_hash, password_hash, active, created_at)"
                    " VALUES ('old', 'scrypt$16384$AAAA$AAAA', NULL, :t, :now)"
                ),
                {"t": True, "now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO dataset_versions (content_hash, n_rows, created_at)"
                    " VALUES ('h', 3, :now)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO model_versions (name, version, created_at) VALUES ('m', '1', :now)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO scans (model_version_id, dataset_version_id, config_hash, config,"
                    " method, damping, timings, status, n_runs, created_at, updated_at)"
                    " VALUES (1, 1, 'c', '{}', 'exact', 0.001, '{}', 'completed', 1, :now, :now)"
                ),
                {"now": now},
            )
        assert st.upgrade() == "0003" == current_revision(st.engine)
        insp = inspect(st.engine)
        assert {"ui_sessions", "webhook_deliveries"} <= set(insp.get_table_names())
        assert {"token_id", "deactivated_at"} <= {c["name"] for c in insp.get_columns("annotators")}
        assert {"n_outputs", "curvature"} <= {c["name"] for c in insp.get_columns("scans")}
        old = st.get_scan(1)
        assert (old.method, old.n_outputs, old.curvature) == ("exact", None, None)
        # an old-format token has no token id: refused without a hash check
        assert authenticate_token(st, "igt_1_" + "a" * 43) is None
        assert authenticate_password(st, "old", "whatever1") is None
        assert revoke_annotator(st, "old") == 0
        assert record_delivery(st, "d-1", keep_seconds=60)
        assert not record_delivery(st, "d-1", keep_seconds=60)
        curvature = {"method": "exact", "damping": 1e-3, "rank": 650}
        record = make_record(3, model_version="2")
        new_id = st.record_scan(dataclasses.replace(record, n_outputs=10, curvature=curvature))
        got = st.get_scan(new_id)
        assert got.n_outputs == 10 and got.curvature == curvature
        cfg = _alembic_config()  # and back down
        with st.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        assert current_revision(st.engine) == "0001"
        assert "ui_sessions" not in inspect(st.engine).get_table_names()
        assert "n_outputs" not in {c["name"] for c in inspect(st.engine).get_columns("scans")}
        with st.engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM annotators")).scalars().all() == ["old"]
    finally:
        st.dispose()


def test_upgrade_from_0002_adds_the_dataset_column_plan(db_url: str) -> None:
    st = Store.from_url(db_url)
    try:
        assert st.upgrade("0002") == "0002"
        now = dt.datetime.now(dt.UTC)
        with st.engine.begin() as conn:  # a scan an 0002 store wrote: its data has no plan
            conn.execute(
                text(
                    "INSERT INTO dataset_versions (content_hash, n_rows, created_at)"
                    " VALUES ('h', 3, :now)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO model_versions (name, version, created_at) VALUES ('m', '1', :now)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO scans (model_version_id, dataset_version_id, config_hash, config,"
                    " method, damping, timings, status, n_runs, created_at, updated_at)"
                    " VALUES (1, 1, 'c', '{}', 'exact', 0.001, '{}', 'completed', 1, :now, :now)"
                ),
                {"now": now},
            )
        old_id = 1
        assert st.upgrade() == "0003" == current_revision(st.engine)
        assert "columns" in {c["name"] for c in inspect(st.engine).get_columns("dataset_versions")}
        assert st.get_scan(old_id).columns is None
        plan = {"kind": "array", "columns": ["tokens"], "pad_token_id": 0, "input_shape": [24]}
        new_id = st.record_scan(
            dataclasses.replace(make_record(4, model_version="2"), columns=plan)
        )
        assert st.get_scan(new_id).columns == plan
        cfg = _alembic_config()
        with st.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
        assert "columns" not in {
            c["name"] for c in inspect(st.engine).get_columns("dataset_versions")
        }
        assert current_revision(st.engine) == "0002"
    finally:
        st.dispose()
