"""Shared fixtures. Services are started once per session; data is built lazily in fixtures."""

from __future__ import annotations

import os

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
def pg_url() -> str:
    """URL of the real PostgreSQL test database that `.ci/run` starts (skips when unset)."""
    url = os.environ.get("INFGATE_TEST_PG_URL")
    if not url:
        pytest.skip(
            "INFGATE_TEST_PG_URL is unset: start PostgreSQL with `bash infra/start-postgres.sh` "
            "and export INFGATE_TEST_PG_URL (as .ci/run does)"
        )
    return url
