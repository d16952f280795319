"""Deployment runs executed by a real Prefect runner against the test harness's API server.

One ``prefect.runner.Runner`` (a background thread of this process, polling every second)
serves ``scan-model-version/on-demand`` and ``influence-stage/local`` from
``infgate.flows.serve.build_deployments()``; it starts each flow run as its own subprocess, as
``infgate flows serve`` does. Checked:

* ``scan_model_version(..., influence_deployment="influence-stage/local")`` runs the influence
  stage as a child flow run of that deployment (another process) and reads its result back:
  the parent stores the same ranking, explanations and timing keys as the in-process path,
  and still ends Failed with the gate blocking the noisy version;
* ``DeploymentStarter``, fed by the webhook receiver, creates a run of
  ``scan-model-version/on-demand`` with the version, the deployment's default parameters and
  the webhook tags; the runner executes it and the version ends tagged ``blocked``; the
  ``enforce`` action withdraws the deployment alias from the blocked version.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.services import NoisyVersion

SERVED = {("scan-model-version", "on-demand"), ("influence-stage", "local")}
RUN_TIMEOUT = 240.0


@dataclass
class Served:
    """The runner serving :data:`SERVED`, and the on-demand deployment's default store."""

    runner: Any
    thread: threading.Thread
    db_url: str
    deployment_ids: dict[str, Any]


@pytest.fixture(scope="module")
def served(
    noisy_version: NoisyVersion, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    from infgate.flows.serve import build_deployments
    from prefect.runner import Runner
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("served")
    db_url = f"sqlite:///{root}/deployed.db"
    with pytest.MonkeyPatch.context() as mp:
        # the deployments' default parameters come from the environment (flows/serve.py)
        mp.setenv("INFGATE_DB_URL", db_url)
        mp.setenv("MLFLOW_TRACKING_URI", noisy_version.server.uri)
        mp.delenv("INFGATE_GATE_CONFIG", raising=False)
        # flow-run subprocesses inherit os.environ: point them at the harness's server
        mp.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
        deployments = [d for d in build_deployments() if (d.flow_name, d.name) in SERVED]
        assert {(d.flow_name, d.name) for d in deployments} == SERVED
        runner = Runner(
            name="infgate-test-runner", query_seconds=1, limit=3, pause_on_shutdown=False
        )
        ids: dict[str, Any] = {}
        errors: list[BaseException] = []

        async def serve() -> None:
            for d in deployments:
                ids[f"{d.flow_name}/{d.name}"] = await runner.aadd_deployment(d)
            await runner.start()

        def main() -> None:
            try:
                asyncio.run(serve())
            except BaseException as e:  # surfaced by the fixture and by wait_final
                errors.append(e)

        thread = threading.Thread(target=main, name="infgate-test-runner", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not runner.started and not errors and time.monotonic() < deadline:
            time.sleep(0.1)
        assert runner.started, f"the runner did not start: {errors}"
        served = Served(runner, thread, db_url, ids)
        try:
            yield served
        finally:
            runner.execute_in_background(runner.astop).result(timeout=60)
            thread.join(timeout=60)
            assert not thread.is_alive(), "the runner thread did not stop"
            assert not errors, errors


def wait_final(served: Served, flow_run_id: Any, timeout: float = RUN_TIMEOUT) -> Any:
    """The flow run once its state is final (fails early when the runner thread died)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            assert served.thread.is_alive(), "the runner thread died"
            assert time.monotonic() < deadline, (
                f"flow run {run.name} still {run.state.name if run.state else None} "
                f"after {timeout:.0f} s"
            )
            time.sleep(0.5)


def flow_run_logs(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )


def child_runs(parent_flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_flow_run_id])
            )
        )


def analyse_task_result(flow_run_id: Any) -> Any:
    """What the in-process ``analyse`` task of a flow run returned (persisted Analysis)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    (run,) = [r for r in runs if r.name.rsplit("-", 1)[0] == "analyse"]
    return run.state.result()  # type: ignore[union-attr,return-value]


def stored(db_url: str, scan_id: int) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """The scan's label-error findings, explanations by example id, and stored timings."""
    from infgate.flows.scan import open_store
    from infgate.store.models import Finding
    from sqlalchemy import select

    store = open_store(db_url)
    findings = store.findings_frame(scan_id)
    findings = findings[findings["kind"] == "label_error"].reset_index(drop=True)
    with store.read_session() as s:
        rows = s.execute(
            select(Finding.example_id, Finding.explanation).where(Finding.scan_id == scan_id)
        ).all()
    return findings, {str(e): x for e, x in rows if x}, store.get_scan(scan_id).timings


def assert_same_ranking(a: pd.DataFrame, b: pd.DataFrame, atol: float = 5e-5) -> None:
    """Same rows, scores within ``atol``, and the same order and suspects up to rows whose
    scores tie within ``atol`` (a child process computes in float32 with its own thread
    count: scores, margins in [-1, 1], agree to ~1e-6 typically and differed by up to
    1.7e-5 on 7 of 500 rows in one CI run, so two rows that close may swap places)."""
    sa = a.set_index(a["example_id"].astype(str))["score"].astype(float)
    sb = b.set_index(b["example_id"].astype(str))["score"].astype(float)
    assert sorted(sa.index) == sorted(sb.index)
    np.testing.assert_allclose(sa.to_numpy(), sb.reindex(sa.index).to_numpy(), atol=atol)
    for x, y in zip(sa.index, sb.index, strict=True):
        assert x == y or abs(sa[x] - sa[y]) <= 2 * atol, (x, y, sa[x], sa[y])
    sus_a = set(sa.index[a["is_suspect"].astype(bool).to_numpy()])
    sus_b = set(sb.index[b["is_suspect"].astype(bool).to_numpy()])
    assert len(sus_a) == len(sus_b)
    if sus_a != sus_b:  # only a near-tie at the boundary may differ
        edge = min(sa[list(sus_a)].min(), sb[list(sus_b)].min())
        assert all(abs(sa[x] - edge) <= 2 * atol for x in sus_a ^ sus_b), sus_a ^ sus_b


def test_influence_stage_runs_as_a_child_deployment_like_in_process(
    served: Served, noisy_version: NoisyVersion, tmp_path: Path
) -> None:
    from infgate.config import ScanConfig
    from infgate.flows.influence_payload import stage_from_payload
    from infgate.flows.scan import scan_model_version

    model = f"models:/noisy/{noisy_version.version}"
    # not the defaults: they must travel
    config = ScanConfig().with_overrides(**{"detect.explain_top": 5, "detect.store_top": 50})
    kwargs = {"config": config, "tracking_uri": noisy_version.server.uri}
    remote_db, local_db = f"sqlite:///{tmp_path}/remote.db", f"sqlite:///{tmp_path}/local.db"
    remote = scan_model_version(
        model,
        db_url=remote_db,
        influence_deployment="influence-stage/local",
        return_state=True,
        **kwargs,
    )
    local = scan_model_version(model, db_url=local_db, return_state=True, **kwargs)

    # the parent ends Failed: the noisy version is blocked, its findings stored and queued
    assert remote.is_failed() and "gate blocked" in remote.message, remote.message
    summary = remote.result(raise_on_failure=False)
    assert summary["verdict"] == "blocked" and summary["queued"] > 0
    assert local.is_failed()
    local_summary = local.result(raise_on_failure=False)

    # the influence stage ran as a separate, completed child flow run of the deployment
    parent_id = remote.state_details.flow_run_id
    (child,) = child_runs(parent_id)
    assert child.id != parent_id
    assert child.deployment_id == served.deployment_ids["influence-stage/local"]
    assert child.state.is_completed(), child.state
    assert child.parameters["model"] == model
    assert child.parameters["config"]["detect"]["explain_top"] == 5
    assert child_runs(local.state_details.flow_run_id) == []

    # its result (JSON, read back from the child's result storage) equals the in-process one
    payload = child.state.result()
    json.dumps(payload)
    data_hash = payload["dataset_hash"]
    remote_analysis = stage_from_payload(payload, dataset_hash=data_hash)
    ranking, explanations, timings = (
        remote_analysis.ranking,
        remote_analysis.explanations,
        remote_analysis.timings,
    )
    ref = analyse_task_result(local.state_details.flow_run_id)
    ref_ranking, ref_explanations, ref_timings = ref.ranking, ref.explanations, ref.timings
    assert list(ranking.columns) == list(ref_ranking.columns)
    assert list(ranking.dtypes) == list(ref_ranking.dtypes)
    assert_same_ranking(ranking, ref_ranking)
    assert ranking.attrs["n_estimated_errors"] == ref_ranking.attrs["n_estimated_errors"]
    assert explanations is not None and ref_explanations is not None
    pd.testing.assert_frame_equal(
        explanations.drop(columns="influence"), ref_explanations.drop(columns="influence")
    )
    # float32 sums over every training gradient, reduced in another order by the child's
    # thread count: measured up to 1.8e-4 relative on values ~100 (one CI run)
    np.testing.assert_allclose(explanations["influence"], ref_explanations["influence"], rtol=1e-3)
    assert set(timings) == set(ref_timings) and {"influence", "explain"} <= set(timings)

    # and both paths store the same findings, explanations and timing keys
    remote_rows, remote_expl, remote_t = stored(remote_db, summary["scan_id"])
    local_rows, local_expl, local_t = stored(local_db, local_summary["scan_id"])
    assert_same_ranking(remote_rows, local_rows)
    assert len(remote_rows) >= 50
    assert set(remote_expl) == set(local_expl) and len(remote_expl) == 5
    for ex, e in remote_expl.items():
        for role in ("supporting", "opposing"):
            ids = [r["train_example_id"] for r in e[role]]
            assert ids == [r["train_example_id"] for r in local_expl[ex][role]]
    assert set(remote_t) == set(local_t) and {"influence", "explain"} <= set(remote_t)


def _signed(secret: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    did, stamp = str(uuid.uuid4()), str(int(time.time()))
    mac = hmac.new(secret.encode(), f"{did}.{stamp}.".encode() + body, hashlib.sha256)
    return body, {
        "X-MLflow-Delivery-Id": did,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": "v1," + base64.b64encode(mac.digest()).decode(),
    }


def test_deployment_starter_runs_the_scan_deployment_then_enforces(
    served: Served, noisy_version: NoisyVersion
) -> None:
    from fastapi.testclient import TestClient
    from infgate.flows.scan import open_store
    from infgate.plugins.review_hook import DeploymentStarter, HookSettings, create_app
    from infgate.plugins.review_hook.app import ScanRequest
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, version = noisy_version.name, noisy_version.version
    mlflow = MlflowClient(noisy_version.server.uri, noisy_version.server.uri)
    for key in ("infgate.gate", "infgate.scan_id"):  # earlier scans set them: start clean
        mlflow.delete_model_version_tag(name, version, key)
    starter = DeploymentStarter(tracking_uri=noisy_version.server.uri)
    settings = HookSettings(secret="Zq3-v8Kp_x1Lw9Yt2Rb7Nc4Hd6Jf0Gm5Ae", db_url=served.db_url)
    try:
        body, headers = _signed(
            settings.secret,
            {
                "entity": "model_version",
                "action": "created",
                "data": {"name": name, "version": version},
            },
        )
        with TestClient(create_app(settings, starter)) as http:
            r = http.post("/webhook", content=body, headers=headers)
        assert r.status_code == 202 and r.json()["action"] == "scan", r.text
        assert starter.wait_idle(60)
        (started,) = starter.started
        assert "error" not in started.outcome, started.outcome
        run = wait_final(served, uuid.UUID(started.outcome["flow_run_id"]))

        assert run.deployment_id == served.deployment_ids["scan-model-version/on-demand"]
        assert run.parameters["model"] == f"models:/{name}/{version}"
        assert run.parameters.get("db_url") is None  # no URL stored: the worker's environment
        assert run.parameters.get("tracking_uri") is None
        assert {"infgate", "webhook", "model_version.created"} <= set(run.tags)
        assert run.state.is_failed() and "gate blocked" in run.state.message, run.state
        # a blocked gate is a verdict: one line, no ERROR record (no re-raised traceback)
        assert "\n" not in run.state.message
        errors = [r.message for r in flow_run_logs(run.id) if r.level >= 40]
        assert errors == [], errors
        tags = mlflow.get_model_version(name, version).tags
        assert tags["infgate.gate"] == "blocked"
        latest = open_store(served.db_url).latest_scan(name, version)
        assert latest is not None and tags["infgate.scan_id"] == str(latest.id)
        assert latest.gate is not None and latest.gate["verdict"] == "blocked"

        # the same delivery again (a second receiver replica) starts no second flow run
        starter.submit(started.request)
        assert starter.wait_idle(60)
        assert starter.started[-1].outcome == started.outcome

        # enforce: the deployment alias set on a blocked version is withdrawn, no flow run
        mlflow.set_registered_model_alias(name, "champion", version)
        starter.submit(
            ScanRequest("enforce", "model_version_alias.created", name, version, "d-1", time.time())
        )
        assert starter.wait_idle(60)
        assert starter.started[-1].outcome == {"alias_withdrawn": True}
        with pytest.raises(MlflowException):
            mlflow.get_model_version_by_alias(name, "champion")
    finally:
        starter.close()
