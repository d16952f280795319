"""Prefect flows on the test harness: scan (Failed when blocked, cached re-run, artifacts),
registry sweep (skips versions whose data is already scanned), relabel (decisions -> gate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.services import NoisyVersion


@pytest.fixture(scope="module")
def flow_scan(
    noisy_version: NoisyVersion, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    from infgate.flows.scan import scan_model_version

    root = tmp_path_factory.mktemp("flows")
    db_url = f"sqlite:///{root}/infgate.db"
    kwargs = {"db_url": db_url, "tracking_uri": noisy_version.server.uri}
    first = scan_model_version(
        f"models:/noisy/{noisy_version.version}", return_state=True, **kwargs
    )
    second = scan_model_version(
        f"models:/noisy/{noisy_version.version}", return_state=True, **kwargs
    )
    return {"first": first, "second": second, "kwargs": kwargs, "root": root}


def _task_states(flow_run_id: object) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs if r.state}


def test_blocked_scan_ends_failed_with_reasons_and_artifacts(
    flow_scan: dict, noisy_version: NoisyVersion
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    state = flow_scan["first"]
    assert state.is_failed() and "gate blocked" in state.message
    summary = state.result(raise_on_failure=False)
    assert summary["verdict"] == "blocked" and summary["queued"] > 0
    assert any(r["expectation"] == "expect_column_mean_to_be_between" for r in summary["reasons"])
    states = _task_states(state.state_details.flow_run_id)
    assert set(states) == {"load", "analyse", "store", "gate", "report"}
    key = f"infgate-noisy-v{noisy_version.version}"
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"{key}-summary", f"{key}-suspects"])
            )
        )
    kinds = {a.key: a.type for a in arts}
    assert kinds == {f"{key}-summary": "markdown", f"{key}-suspects": "table"}
    assert any("BLOCKED" in str(a.data) for a in arts if a.type == "markdown")


def test_rerun_hits_the_cache_and_updates_the_same_scan(flow_scan: dict) -> None:
    second = flow_scan["second"]
    states = _task_states(second.state_details.flow_run_id)
    assert states["analyse"] == "Cached"
    assert states["load"] == "Completed"
    first = flow_scan["first"].result(raise_on_failure=False)
    assert second.result(raise_on_failure=False)["scan_id"] == first["scan_id"]


def test_sweep_skips_versions_already_scanned(flow_scan: dict, noisy_version: NoisyVersion) -> None:
    from infgate.flows.sweep import registry_sweep

    result = registry_sweep(name_filter="noisy", **flow_scan["kwargs"])
    assert result["current"] == [f"models:/noisy/{noisy_version.version}"]
    assert result["scanned"] == [] and result["unresolvable"] == []


def test_relabel_applies_decisions_and_the_gate_passes(
    flow_scan: dict, noisy_version: NoisyVersion
) -> None:
    import pandas as pd
    from infgate.flows.relabel import relabel
    from infgate.flows.scan import open_store
    from infgate.review.annotators import ensure_annotator
    from infgate.review.queue import claim_next, decide

    store = open_store(flow_scan["kwargs"]["db_url"])
    scan_id = flow_scan["first"].result(raise_on_failure=False)["scan_id"]
    ensure_annotator(store, "fixer")
    while (item := claim_next(store, "fixer")) is not None:
        decide(store, item.item_id, "fixer", "relabel", label=item.suggested_label)
    state = relabel(
        scan_id, out_dir=str(flow_scan["root"]), return_state=True, **flow_scan["kwargs"]
    )
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["gate"]["verdict"] == "passed"
    corrected = pd.read_parquet(Path(summary["path"]))
    assert summary["relabeled"] > 0 and len(corrected) == 500
    # most relabels restore the true label of a planted flip
    digits = noisy_version.digits
    ids = corrected["example_id"].astype(int).to_numpy()
    fixed = (corrected["label"].to_numpy() == digits.clean[ids]).mean()
    assert fixed > (digits.data.labels == digits.clean).mean()  # type: ignore[attr-defined]


def test_scan_on_dask_shards_the_influence_stage_with_the_same_findings(
    flow_scan: dict, noisy_version: NoisyVersion
) -> None:
    from infgate.config import ScanConfig
    from infgate.flows.scan import open_store, scan_model_version
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "threads_per_worker": 1,
            "processes": False,
            "dashboard_address": None,
        }
    )
    own_db = f"sqlite:///{flow_scan['root']}/dask.db"  # leaves the other tests' store alone
    state = scan_model_version.with_options(task_runner=runner)(
        f"models:/noisy/{noisy_version.version}",
        config=ScanConfig().with_overrides(**{"influence.shard_size": 150}),
        return_state=True,
        **{**flow_scan["kwargs"], "db_url": own_db},
    )
    summary = state.result(raise_on_failure=False)
    assert summary["verdict"] == "blocked"
    sharded_id = summary["scan_id"]
    assert open_store(own_db).get_scan(sharded_id).timings["influence_shards"] == 4  # 500/150
    sharded = open_store(own_db).findings_frame(sharded_id)
    first_id = flow_scan["first"].result(raise_on_failure=False)["scan_id"]
    one_sweep = open_store(flow_scan["kwargs"]["db_url"]).findings_frame(first_id)
    for frame in (one_sweep, sharded):
        frame.query("kind == 'label_error'", inplace=True)
    assert sharded["example_id"].tolist() == one_sweep["example_id"].tolist()
    assert sharded["score"].to_numpy() == pytest.approx(one_sweep["score"].to_numpy(), rel=1e-9)
