"""Shared fixtures. Services are started once per session; data is built lazily in fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import pytest
import torch

from tests.services import (  # noqa: F401  (session services)
    mlflow_server,
    noisy_version,
    prefect_harness,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; torch sees no GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real PostgreSQL test database (a role with a password, over TCP).

    ``INFGATE_TEST_PG_URL`` when set (`.ci/run` starts the Debian cluster); otherwise a
    throwaway server from the ``pgserver`` wheel's binaries, started once for the session
    (tests/postgres.py) and removed at the end.
    """
    url = os.environ.get("INFGATE_TEST_PG_URL")
    if url:
        yield url
        return
    from tests.postgres import remove, start_throwaway_postgres
    from tests.services import free_port

    server = start_throwaway_postgres(tmp_path_factory.mktemp("postgres"), free_port())
    try:
        yield server.url
    finally:
        remove(server)
