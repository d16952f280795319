"""No secret at rest outside its store: a scan against PostgreSQL with a password leaves the
password in none of Prefect's database (the test harness's SQLite file), the flow run's
stored parameters, MLflow's params and tags, or the logs; references resolve in the run."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.services import NoisyVersion
from tests.store.fixtures import with_schema


def _needles(password: str) -> list[str]:
    """What a leak looks like: ``:password@`` always; the bare password when it is
    distinctive (CI's Debian role uses 'infgate', which is also the role's name)."""
    return [f":{password}@"] + ([password] if len(password) >= 12 else [])


def _prefect_database_bytes() -> bytes:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    path = Path(str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).split(":///", 1)[1])
    files = sorted(path.parent.glob(path.name + "*"))  # the database, its -wal and -shm
    assert files, f"no Prefect database at {path}"
    return b"".join(p.read_bytes() for p in files)


def _mlflow_text(tracking_uri: str, name: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)
    parts: list[Any] = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            parts += [run.data.params, run.data.tags]
    for mv in client.search_model_versions(f"name='{name}'"):
        parts.append(mv.tags)
    return json.dumps(parts)


@pytest.fixture
def pg_schema_url(pg_url: str) -> Any:
    from sqlalchemy import create_engine

    schema = "s_" + uuid.uuid4().hex[:12]
    admin = create_engine(pg_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(pg_url, schema)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.mark.postgres
def test_a_postgresql_password_is_nowhere_at_rest(
    pg_schema_url: str,
    noisy_version: NoisyVersion,
    prefect_harness: None,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from infgate.flows.scan import open_store, scan_model_version
    from infgate.flows.sweep import registry_sweep
    from prefect.client.orchestration import get_client
    from sqlalchemy.engine import make_url

    password = make_url(pg_schema_url).password
    assert password
    caplog.set_level(logging.DEBUG)
    model = f"models:/noisy/{noisy_version.version}"
    uri = noisy_version.server.uri
    # an in-process call with the URL itself, and a sweep with a reference to the environment
    direct = scan_model_version(model, db_url=pg_schema_url, tracking_uri=uri, return_state=True)
    monkeypatch.setenv("INFGATE_TEST_STORE", pg_schema_url)
    swept = registry_sweep(
        tracking_uri=uri, db_url="env:INFGATE_TEST_STORE", name_filter="noisy", max_scans=0
    )

    summary = direct.result(raise_on_failure=False)
    assert summary["verdict"] == "blocked"
    latest = open_store(pg_schema_url).latest_scan("noisy", noisy_version.version)
    assert latest is not None and latest.id == summary["scan_id"]  # stored in PostgreSQL
    assert model in swept["current"]  # the sweep read that same store through the reference
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(direct.state_details.flow_run_id)
    assert run.parameters["db_url"] == pg_schema_url.replace(f":{password}@", ":***@")

    out, err = capfd.readouterr()
    places = {
        "Prefect's database": _prefect_database_bytes().decode("utf-8", "replace"),
        "MLflow params and tags": _mlflow_text(uri, "noisy"),
        "captured logs": caplog.text,
        "captured output": out + err,
    }
    for where, text in places.items():
        for needle in _needles(password):
            assert needle not in text, f"the test password is in {where}"


def test_references_resolve_inside_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from infgate.errors import ConfigError
    from infgate.flows.runtime import redact, resolve_db

    env = {"MY_DB": "postgresql://u:s3cret@h/db"}
    assert resolve_db("env:MY_DB", env) == "postgresql://u:s3cret@h/db"
    assert resolve_db(None, env) is None  # Settings reads INFGATE_DB_URL
    assert resolve_db("sqlite:///x.db", env) == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="MISSING is unset"):
        resolve_db("env:MISSING", env)
    assert redact({"db_url": "postgresql+psycopg2://u:p%40ss@h:5432/db?x=1", "n": 3}) == {
        "db_url": "postgresql+psycopg2://u:***@h:5432/db?x=1",
        "n": 3,
    }
    assert redact(["http://h/x", "sqlite:////tmp/a:b.db"]) == [
        "http://h/x",
        "sqlite:////tmp/a:b.db",
    ]
