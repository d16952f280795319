"""Session-scoped real services for the pipeline/flow/hook tests (imported by tests/conftest.py).

* ``mlflow_server``: a real ``mlflow server`` on 127.0.0.1 with webhooks enabled
  (sqlite backend and artifacts under a session tmp dir), started once per session.
* ``prefect_harness``: Prefect's test harness (a temporary API server), once per session.
* ``digits_small``: a small digits subset with planted flips (built lazily).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server``."""

    uri: str
    root: Path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server`` with webhooks allowed to reach 127.0.0.1 over http."""
    from cryptography.fernet import Fernet

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        # the server caches "which webhooks listen to this event" for 60 s by default; a
        # webhook registered after earlier events would stay silent that long
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    }
    log = (root / "server.log").open("w")
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen(
        [
            mlflow_bin,
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--default-artifact-root",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{uri}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.terminate()
        raise RuntimeError("mlflow server did not start within 120 s")
    try:
        yield MlflowServer(uri, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's temporary API server, started once for every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@dataclass(frozen=True)
class SmallDigits:
    """A digits subset with planted flips."""

    data: object
    flipped: np.ndarray
    clean: np.ndarray


def small_digits(n: int = 500, noise: float = 0.1, seed: int = 0) -> SmallDigits:
    """The first ``n`` digits with ``noise`` of labels flipped (uniform, seeded)."""
    from infgate.data.training import TrainingData, flip_labels
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data[:n] / 16.0).astype(np.float32), d.target[:n].astype(np.int64)
    noisy, flipped = flip_labels(y, noise, 10, np.random.default_rng(seed))
    data = TrainingData(
        features=x, labels=noisy, classes=tuple(str(c) for c in range(10)), image_shape=(8, 8)
    )
    return SmallDigits(data, flipped, y)


@dataclass(frozen=True)
class NoisyVersion:
    """A registered model version trained on digits with planted flips."""

    server: MlflowServer
    name: str
    version: str
    data_path: Path
    digits: SmallDigits


@pytest.fixture(scope="session")
def noisy_version(
    mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> NoisyVersion:
    """``noisy`` v1 on the session's mlflow server: 500 digits, 10% flips, pt2 format."""
    from infgate.examples.demo_registry import register_model_with_data

    digits = small_digits(n=500, noise=0.1, seed=3)
    reg = register_model_with_data(
        digits.data,  # type: ignore[arg-type]
        name="noisy",
        workdir=tmp_path_factory.mktemp("noisy"),
        tracking_uri=mlflow_server.uri,
        true_labels=digits.clean,
    )
    return NoisyVersion(mlflow_server, reg.name, reg.version, reg.data_path, digits)
