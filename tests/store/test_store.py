"""The findings store against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import pandas as pd
import pytest
from infgate.errors import InvalidInputError
from infgate.store import NotFoundError, ScanRecord, SchemaVersionError, Store
from infgate.store.engine import VERSION_TABLE
from infgate.store.models import DatasetVersion, Finding, MismatchReportRow, ModelVersion, Scan
from sqlalchemy import func, select, text

from tests.store.fixtures import make_record


def _count(store: Store, model: type) -> int:
    with store.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_refuses_unknown_schema_until_upgrade(db_url: str) -> None:
    st = Store.from_url(db_url)
    with pytest.raises(SchemaVersionError, match="infgate db upgrade") as err:
        st.get_scan(1)
    assert "no infgate schema" in str(err.value)
    assert st.upgrade() == "0003"
    with pytest.raises(NotFoundError, match="no scan with id 1"):
        st.get_scan(1)
    with st.engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = :v"), {"v": "ffff"})
    fresh = Store.from_url(db_url)
    with pytest.raises(SchemaVersionError, match=r"unknown .*'ffff'.*infgate db upgrade"):
        fresh.latest_scan("m", "1")
    st.dispose()
    fresh.dispose()


def test_sqlite_runs_with_foreign_keys_and_wal(tmp_path: pytest.TempPathFactory) -> None:
    st = Store.from_url(f"sqlite:///{tmp_path}/x.db")
    with st.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    st.dispose()


def test_default_url_comes_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("INFGATE_DB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Store.from_url().url == "sqlite:///infgate.db"
    monkeypatch.setenv("INFGATE_DB_URL", f"sqlite:///{tmp_path}/env.db")
    assert Store.from_url().url.endswith("/env.db")
    with pytest.raises(InvalidInputError, match="mysql"):
        Store.from_url("mysql://u@h/db")
    with pytest.raises(InvalidInputError, match="does not exist"):
        Store.from_url(f"sqlite:///{tmp_path}/no/such/dir/x.db")


def test_record_scan_round_trip(store: Store) -> None:
    rec = make_record(12)
    scan_id = store.record_scan(rec)
    info = store.get_scan(scan_id)
    assert (info.model_name, info.model_version, info.run_id) == ("digits-clf", "1", "run123")
    assert info.dataset_hash == "d" * 64 and info.n_rows == 12 and info.image_shape == (8, 8)
    assert info.config == rec.config and info.config_hash == rec.config_hash
    assert info.n_findings == 12 and info.n_suspects == 12 and info.status == "completed"
    assert info.mismatch is not None and info.mismatch["p_value"] == 0.4
    frame = store.findings_frame(scan_id)
    assert list(frame["example_id"]) == list(rec.findings["example_id"])
    assert frame["score"].tolist() == pytest.approx(rec.findings["score"].tolist())
    # labels are kept as class names
    assert frame["given_label"].tolist() == [str(v) for v in rec.findings["given_label"]]
    assert store.latest_scan("digits-clf", "1") == info
    assert store.find_scan("digits-clf", "1", "d" * 64, rec.config_hash) == info
    assert store.find_scan("digits-clf", "1", "d" * 64, "other") is None
    assert store.latest_scan("digits-clf", "2") is None
    with store.session() as s:
        ex0 = s.scalar(select(Finding).where(Finding.example_id == "ex0"))
        assert ex0 is not None and ex0.features is not None and len(ex0.features) == 64
        assert ex0.explanation is not None
        assert [r["train_example_id"] for r in ex0.explanation["supporting"]] == ["ex5", "ex6"]
        assert ex0.explanation["opposing"][0]["influence"] == 0.75


def test_rerun_updates_instead_of_duplicating(store: Store) -> None:
    first = make_record(10)
    scan_id = store.record_scan(first)
    changed = first.findings.iloc[:8].copy()
    changed["score"] = changed["score"] + 100.0
    second = ScanRecord(**{**first.__dict__, "findings": changed, "timings": {"total": 9.0}})
    assert store.record_scan(second) == scan_id
    assert _count(store, Scan) == 1 and _count(store, ModelVersion) == 1
    assert _count(store, DatasetVersion) == 1 and _count(store, MismatchReportRow) == 1
    assert _count(store, Finding) == 10  # never deleted: two are now inactive
    info = store.get_scan(scan_id)
    assert info.n_runs == 2 and info.n_findings == 8 and info.timings == {"total": 9.0}
    assert store.findings_frame(scan_id)["score"].min() >= 100.0
    # a different config is a different scan
    other = make_record(10, config={"method": "exact", "damping": 0.1})
    assert store.record_scan(other) != scan_id


def test_gate_results_are_kept_and_latest_wins(store: Store) -> None:
    scan_id = store.record_scan(make_record(5))
    store.record_gate(scan_id, verdict="blocked", reasons=[{"check": "suspects", "n": 5}])
    store.record_gate(scan_id, verdict="passed", reasons=[])
    gate = store.get_scan(scan_id).gate
    assert gate is not None and gate["verdict"] == "passed"
    with pytest.raises(InvalidInputError, match="'maybe'"):
        store.record_gate(scan_id, verdict="maybe", reasons=[])  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="999"):
        store.record_gate(999, verdict="passed", reasons=[])


def test_bad_records_are_refused_and_write_nothing(store: Store) -> None:
    good = make_record(5)
    with pytest.raises(InvalidInputError, match="lacks columns \\['score'\\]"):
        ScanRecord(**{**good.__dict__, "findings": good.findings.drop(columns=["score"])})
    bad_kind = good.findings.assign(kind="typo")
    with pytest.raises(InvalidInputError, match=r"unknown kind.*typo"):
        ScanRecord(**{**good.__dict__, "findings": bad_kind})
    dup = pd.concat([good.findings, good.findings.iloc[:1]])
    with pytest.raises(InvalidInputError, match="repeats example_id"):
        ScanRecord(**{**good.__dict__, "findings": dup})
    out_of_range = good.findings.assign(given_label=[0, 1, 2, 3, 42])
    with pytest.raises(InvalidInputError, match="label index 42"):
        store.record_scan(ScanRecord(**{**good.__dict__, "findings": out_of_range}))
    assert _count(store, Scan) == 0 and _count(store, Finding) == 0
    assert _count(store, DatasetVersion) == 0


def test_unreviewed_findings_filters(store: Store) -> None:
    scan_id = store.record_scan(make_record(10))
    frame = store.unreviewed_findings(scan_id, min_score=5.0)
    assert (frame["score"] >= 5.0).all()
    assert len(store.unreviewed_findings(scan_id, kind="domain_mismatch")) == 0
    with pytest.raises(NotFoundError):
        store.findings_frame(77)


def test_concurrent_scans_share_dataset_and_model_versions(store: Store) -> None:
    import threading

    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def write(i: int) -> None:
        try:
            barrier.wait()
            # three model versions x the same dataset, each written twice at once
            store.record_scan(make_record(20, model_version=str(i % 3)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:2]
    assert _count(store, DatasetVersion) == 1 and _count(store, ModelVersion) == 3
    assert _count(store, Scan) == 3 and _count(store, Finding) == 60
    with store.session() as s:
        assert sorted(s.scalars(select(Scan.n_runs))) == [2, 2, 2]


def test_migrations_match_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from infgate.store.models import Base

    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []
