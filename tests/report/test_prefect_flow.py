"""The scan flow as Prefect users expect it (test harness): artifacts on the flow run
(summary markdown naming the HTML report, suspects table, link to the MLflow run), the run
named ``scan-<model>-v<version>``, ScanConfig's fields in the deployment's parameter schema,
and the webhook receiver's ``mlflow.model_version.created`` event that the shipped
automation waits for."""

from __future__ import annotations

import time
from typing import Any

from tests.report.conftest import FlowScan


def _flow_run(flow_scan: FlowScan) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_scan.state.state_details.flow_run_id)


def test_artifacts_hang_on_the_flow_run(flow_scan: FlowScan) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_id = flow_scan.state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    assert all(a.task_run_id is None for a in arts)  # the flow run's own, not a task's
    by_key = {a.key: a for a in arts if a.key}  # (the unkeyed one is the persisted result)
    key = f"infgate-reported-v{flow_scan.version}"
    assert {k: a.type for k, a in by_key.items()} == {
        f"{key}-summary": "markdown",
        f"{key}-suspects": "table",
        f"{key}-report": "markdown",  # where the HTML report is (local path and MLflow run)
        f"{key}-mlflow-run": "markdown",  # Prefect stores a link artifact as markdown
    }
    assert str(flow_scan.report_dir / "report.html") in str(by_key[f"{key}-report"].data)
    md = str(by_key[f"{key}-summary"].data)
    assert "gate BLOCKED" in md and str(flow_scan.report_dir / "report.html") in md
    rid = flow_scan.summary["scan_run_id"]
    link = str(by_key[f"{key}-mlflow-run"].data)
    assert link.startswith(f"[MLflow scan run]({flow_scan.server.uri}/#/experiments/")
    assert link.endswith(f"/runs/{rid})")


def test_flow_run_is_named_after_the_version(flow_scan: FlowScan) -> None:
    assert _flow_run(flow_scan).name == f"scan-reported-v{flow_scan.version}"


def test_deployment_form_shows_the_scan_config_fields(prefect_harness: None) -> None:
    from infgate.flows.scan import scan_model_version
    from prefect.client.orchestration import get_client

    deployment = scan_model_version.to_deployment(name="schema-check")
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        schema = client.read_deployment(deployment_id).parameter_openapi_schema
    config = schema["properties"]["config"]
    refs = [r["$ref"] for r in config.get("anyOf", [config]) if "$ref" in r]
    assert refs == ["#/definitions/ScanConfig"]
    fields = set(schema["definitions"]["ScanConfig"]["properties"])
    assert {"influence", "detect", "mismatch", "gate", "report"} <= fields
    assert "damping" in schema["definitions"]["InfluenceConfig"]["properties"]


def test_receiver_emits_the_event_the_automation_waits_for(prefect_harness: None) -> None:
    from infgate.flows.serve import build_deployments
    from infgate.plugins.review_hook.app import ScanRequest
    from infgate.plugins.review_hook.events import emit_accepted
    from infgate.plugins.review_hook.starters import EventStarter
    from prefect.client.orchestration import get_client

    scan_deployment = build_deployments()[0]
    (trigger,) = scan_deployment.triggers
    assert trigger.expect == {"mlflow.model_version.created"}
    req = ScanRequest("scan", "model_version.created", "hooked", "7", "d-7", time.time())
    alias = ScanRequest("enforce", "model_version_alias.created", "h", "7", "d", 0.0)
    assert emit_accepted(alias) is None  # only model_version.created becomes an event
    starter = EventStarter()  # what `infgate hook serve --mode event` hands requests to
    try:
        starter.submit(req)
        assert starter.wait_idle(60)
    finally:
        starter.close()
    (started,) = starter.started
    assert set(started.outcome) == {"event_id"}, started.outcome
    query = {
        "filter": {
            "event": {"name": ["mlflow.model_version.created"]},
            "resource": {"id": ["models:/hooked/7"]},
        }
    }
    found: list[dict[str, Any]] = []
    deadline = time.time() + 60
    while not found and time.time() < deadline:  # events are persisted asynchronously
        with get_client(sync_client=True) as client:
            found = client.request("POST", "/events/filter", json=query).json()["events"]
        time.sleep(0.5)
    assert [e["id"] for e in found] == [started.outcome["event_id"]]
    # what the trigger turns into the flow's ``model`` parameter
    assert trigger.parameters == {"model": "{{ event.resource.id }}"}
    assert found[0]["resource"]["prefect.resource.id"] == "models:/hooked/7"
