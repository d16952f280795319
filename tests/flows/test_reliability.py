"""Nothing slips through the gate (flows on the test harness, a real ``mlflow server``).

* a second scan with evaluation data is not served the first scan's cached analysis: it
  stores its mismatch report and the gate runs its mismatch check;
* a deterministic input error (a data URI that does not exist) fails the load task once,
  fast, with a one-line reason: no retries;
* a blocked scan ends Failed with a one-line reason and no ERROR record in its logs;
* a webhook delivered while the receiver is down is caught by the registry sweep (the
  version is scanned and ends blocked), and the sweep takes the deployment alias from a
  version it did not scan.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import MlflowServer, NoisyVersion, free_port, small_digits


def task_runs(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name.rsplit("-", 1)[0]: r for r in runs}


def flow_run_logs(flow_run_id: Any, wait_s: float = 15.0) -> list[Any]:
    """The flow run's stored logs. An in-process flow's records reach the API through
    Prefect's background log worker: flush it, then read until some have landed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            if logs or time.monotonic() > deadline:
                return logs
            time.sleep(0.25)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('reliability')}/infgate.db"


def test_a_scan_with_eval_data_after_a_plain_scan_runs_its_mismatch_check(
    noisy_version: NoisyVersion, prefect_harness: None, store_url: str
) -> None:
    from infgate.flows.scan import open_store, scan_model_version

    model = f"models:/noisy/{noisy_version.version}"
    kwargs = {"db_url": store_url, "tracking_uri": noisy_version.server.uri, "return_state": True}
    plain = scan_model_version(model, **kwargs)
    with_eval = scan_model_version(model, eval_uri=str(noisy_version.data_path), **kwargs)
    assert task_runs(with_eval.state_details.flow_run_id)["analyse"].state.name == "Completed"
    first = plain.result(raise_on_failure=False)
    second = with_eval.result(raise_on_failure=False)
    store = open_store(store_url)
    assert store.get_scan(first["scan_id"]).mismatch is None
    info = store.get_scan(second["scan_id"])
    assert info.mismatch is not None and 0.0 <= info.mismatch["p_value"] <= 1.0
    assert info.gate is not None
    checks = {c["name"]: c for c in info.gate["reasons"]}
    assert "mismatch" in checks, sorted(checks)
    assert checks["mismatch"]["observed"] == pytest.approx(info.mismatch["p_value"])


def test_a_missing_data_uri_fails_once_fast_with_one_line(
    noisy_version: NoisyVersion, prefect_harness: None, store_url: str, tmp_path: Path
) -> None:
    from infgate.flows.scan import scan_model_version

    t0 = time.monotonic()
    state = scan_model_version(
        f"models:/noisy/{noisy_version.version}",
        data_uri=str(tmp_path / "no-such-file.parquet"),
        db_url=store_url,
        tracking_uri=noisy_version.server.uri,
        return_state=True,
    )
    elapsed = time.monotonic() - t0
    assert state.is_failed()
    load = task_runs(state.state_details.flow_run_id)["load"]
    assert load.run_count == 1 and load.state.is_failed(), (load.run_count, load.state)
    assert elapsed < 20, f"{elapsed:.1f} s: retried? (1 + 5 + 15 s of retry delays)"
    message = str(state.message)
    assert "\n" not in message and "no-such-file.parquet" in message, message


def test_a_blocked_scan_is_a_clean_final_state(
    noisy_version: NoisyVersion, prefect_harness: None, store_url: str
) -> None:
    from infgate.flows.scan import scan_model_version

    state = scan_model_version(
        f"models:/noisy/{noisy_version.version}",
        db_url=store_url,
        tracking_uri=noisy_version.server.uri,
        return_state=True,
    )
    assert state.is_failed() and state.message.startswith("gate blocked")
    assert "\n" not in state.message
    assert state.result(raise_on_failure=False)["verdict"] == "blocked"
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert logs, "no flow-run logs were stored"
    errors = [r.message for r in logs if r.level >= 40]
    assert errors == [], errors
    assert not any("Traceback" in r.message for r in logs)


class DownReceiver:
    """A real receiver under uvicorn that can be stopped (its URL then refuses connections)."""

    def __init__(self, db_url: str, secret: str) -> None:
        import uvicorn
        from infgate.plugins.review_hook import HookSettings, create_app

        self.requests: list[Any] = []
        app = create_app(HookSettings(secret=secret, db_url=db_url), self)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/webhook"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started

    def submit(self, request: Any) -> None:
        self.requests.append(request)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


@pytest.fixture
def stopped_receiver(
    mlflow_server: MlflowServer, tmp_path: Path
) -> Iterator[tuple[DownReceiver, str]]:
    import secrets

    from infgate.plugins.review_hook.register import register_webhook
    from mlflow import MlflowClient

    receiver = DownReceiver(f"sqlite:///{tmp_path}/hook.db", secrets.token_urlsafe(32))
    name = f"infgate-down-{receiver.port}"
    webhook_id = register_webhook(
        receiver.url, name=name, tracking_uri=mlflow_server.uri, secret=secrets.token_urlsafe(32)
    )
    receiver.stop()
    try:
        yield receiver, webhook_id
    finally:
        MlflowClient(mlflow_server.uri, mlflow_server.uri).delete_webhook(webhook_id)


def test_a_missed_webhook_is_caught_by_the_sweep(
    stopped_receiver: tuple[DownReceiver, str],
    mlflow_server: MlflowServer,
    prefect_harness: None,
    tmp_path: Path,
) -> None:
    from infgate.examples.demo_registry import register_model_with_data
    from infgate.flows.scan import open_store
    from infgate.flows.sweep import registry_sweep
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    receiver, _ = stopped_receiver
    digits = small_digits(n=400, noise=0.15, seed=11)
    missed = register_model_with_data(
        digits.data,  # type: ignore[arg-type]
        name="missed",
        workdir=tmp_path / "missed",
        tracking_uri=mlflow_server.uri,
        true_labels=digits.clean,
    )
    # a second version whose data cannot be resolved (its file was deleted) holds the
    # deployment alias
    client = MlflowClient(mlflow_server.uri, mlflow_server.uri)
    second = register_model_with_data(
        digits.data,  # type: ignore[arg-type]
        name="missed",
        workdir=tmp_path / "second",
        tracking_uri=mlflow_server.uri,
    )
    orphan = client.get_model_version("missed", second.version)
    deleted = str(tmp_path / "deleted.parquet")
    client.set_model_version_tag("missed", orphan.version, "infgate.train_data", deleted)
    client.set_registered_model_alias("missed", "champion", orphan.version)
    time.sleep(2)  # MLflow's delivery to the stopped receiver fails meanwhile
    assert receiver.requests == []
    assert "infgate.gate" not in client.get_model_version("missed", missed.version).tags

    db_url = f"sqlite:///{tmp_path}/sweep.db"
    result = registry_sweep(tracking_uri=mlflow_server.uri, db_url=db_url, name_filter="missed")
    uri, orphan_uri = f"models:/missed/{missed.version}", f"models:/missed/{orphan.version}"
    assert result["scanned"] == [uri] and result["blocked"] == [uri], result
    assert result["unresolvable"] == [orphan_uri]
    assert result["withdrawn"] == [orphan_uri]
    assert client.get_model_version("missed", missed.version).tags["infgate.gate"] == "blocked"
    info = open_store(db_url).latest_scan("missed", missed.version)
    assert info is not None and info.gate is not None and info.gate["verdict"] == "blocked"
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("missed", "champion")
    # the next sweep finds it current: one scan per version, not one per sweep
    again = registry_sweep(tracking_uri=mlflow_server.uri, db_url=db_url, name_filter="missed")
    assert again["current"] == [uri] and again["scanned"] == []
