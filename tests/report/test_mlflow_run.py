"""The scan run as MLflow users expect it: datasets and the scanned model as inputs, the
version linked both ways (tag + description, the full reason kept), metrics under the same
names for every version, the report files (``report.html`` among them) as artifacts."""

from __future__ import annotations

import json

import pytest

from tests.report.conftest import USER_DESCRIPTION, FlowScan

#: Metric names every scan of a version with evaluation data and known labels logs.
STABLE_METRICS = {
    "n_rows",
    "n_suspects",
    "suspect_rate",
    "gate_passed",
    "gate_failed_checks",
    "mismatch_p_value",
    "mismatch_statistic",
    "mismatch_flagged_examples",
    "recall_at_5pct",
    "recall_at_10pct",
    "recall_at_20pct",
    "recall_at_suspects",
    "precision_at_suspects",
    "n_true_label_errors",
    "expected_label_errors",
    "expected_label_errors_lower",
    "expected_label_errors_upper",
    "noise_calibration_rows",
    "noise_probability",
    "loo_leverage_violation_rate",
    "noise_diagonal_margin",
}


def _client(scan: FlowScan):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient(scan.server.uri, scan.server.uri)


def test_scan_run_logs_training_and_evaluation_datasets_and_the_model(flow_scan: FlowScan) -> None:
    client = _client(flow_scan)
    run = client.get_run(flow_scan.summary["scan_run_id"])
    contexts = {
        {t.key: t.value for t in d.tags}["mlflow.data.context"]: d.dataset
        for d in run.inputs.dataset_inputs
    }
    assert set(contexts) == {"training", "evaluation"}
    # the training dataset is the very entry the training run logged (one dataset in MLflow)
    mv = client.get_model_version(flow_scan.name, flow_scan.version)
    trained = client.get_run(mv.run_id).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in trained] == [
        (contexts["training"].name, contexts["training"].digest)
    ]
    ev = contexts["evaluation"]
    assert json.loads(ev.profile)["num_rows"] == 150
    assert json.loads(ev.source)["uri"].endswith("eval.parquet")
    # MLflow 3: the version's LoggedModel (its source, models:/m-...) is an input of the run
    model_id = mv.model_id or mv.source.removeprefix("models:/")
    assert client.get_logged_model(model_id).source_run_id == mv.run_id
    assert [m.model_id for m in run.inputs.model_inputs] == [model_id]


def test_version_links_the_run_and_keeps_the_full_reason(flow_scan: FlowScan) -> None:
    client = _client(flow_scan)
    rid = flow_scan.summary["scan_run_id"]
    mv = client.get_model_version(flow_scan.name, flow_scan.version)
    assert mv.tags["infgate.scan_run_id"] == rid
    assert mv.tags["infgate.gate"] == "blocked"
    reason = mv.tags["infgate.reason"]
    assert len(reason) <= 160 and "suspected label-error rate" in reason
    desc = mv.description
    assert desc.startswith(USER_DESCRIPTION)  # the team's own text is kept
    assert "**infgate gate: BLOCKED**" in desc
    for failed in flow_scan.summary["reasons"]:  # every failed check, in full
        assert f"- {failed['message']}" in desc
    experiment = client.get_run(rid).info.experiment_id
    assert f"{flow_scan.server.uri}/#/experiments/{experiment}/runs/{rid}" in desc
    assert desc.count("<!-- infgate:begin -->") == 1


def test_metrics_have_the_same_names_for_every_version(flow_scan: FlowScan) -> None:
    run = _client(flow_scan).get_run(flow_scan.summary["scan_run_id"])
    assert set(run.data.metrics) == STABLE_METRICS
    m = run.data.metrics
    assert m["n_rows"] == 400 and m["n_true_label_errors"] == 40
    assert m["suspect_rate"] == pytest.approx(m["n_suspects"] / 400)
    # the suspects are the top round(expected count) rows; the noise model was calibrated
    # on the scan's labelled evaluation rows
    assert m["n_suspects"] == round(m["expected_label_errors"])
    assert m["noise_calibration_rows"] > 0
    # the count's bootstrap interval (whole rows) holds the count
    lower, upper = m["expected_label_errors_lower"], m["expected_label_errors_upper"]
    assert lower == int(lower) and upper == int(upper)
    assert 0 <= lower <= m["expected_label_errors"] <= upper <= m["n_rows"]
    assert 0.0 <= m["noise_probability"] <= 1.0
    assert m["precision_at_suspects"] * m["n_suspects"] == pytest.approx(
        m["recall_at_suspects"] * m["n_true_label_errors"]
    )
    assert m["mismatch_p_value"] < 0.05  # the shifted evaluation data is flagged


def test_report_files_are_the_run_artifacts(flow_scan: FlowScan) -> None:
    client = _client(flow_scan)
    names = {f.path for f in client.list_artifacts(flow_scan.summary["scan_run_id"], "infgate")}
    assert {
        "infgate/report.html",
        "infgate/summary.md",
        "infgate/inputs.json",
        "infgate/findings.csv",
        "infgate/gate_verdict.json",
        "infgate/score_histogram.png",
        "infgate/recall_curve.png",
        "infgate/mismatch_scores.png",
    } <= names
