"""The ``infgate`` MLflow evaluator plugin, run through ``mlflow.models.evaluate``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.services import MlflowServer, small_digits


def test_evaluate_with_infgate_logs_scan_metrics_and_artifacts(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    import mlflow
    from infgate.examples.demo_registry import register_model_with_data
    from mlflow import MlflowClient

    digits = small_digits(n=400, noise=0.1, seed=2)
    reg = register_model_with_data(
        digits.data,  # type: ignore[arg-type]
        name="evaluated",
        workdir=tmp_path,
        tracking_uri=mlflow_server.uri,
    )
    frame = digits.data.to_frame().drop(columns=["example_id"])  # type: ignore[attr-defined]
    from infgate.registry.refs import mlflow_uris

    with mlflow_uris(mlflow_server.uri), mlflow.start_run() as run:
        result = mlflow.models.evaluate(
            f"models:/evaluated/{reg.version}",
            frame,
            targets="label",
            model_type="classifier",
            evaluators=["infgate"],
            evaluator_config={"infgate": {"damping": 1e-3}},
        )
    n_flipped = int(digits.flipped.sum())
    assert result.metrics["infgate_n_rows"] == 400
    # the planted flips are found: the suspect count is in the flips' range, gate blocks
    assert 0.5 * n_flipped <= result.metrics["infgate_n_suspects"] <= 2 * n_flipped
    assert result.metrics["infgate_gate_passed"] == 0.0
    logged = MlflowClient(mlflow_server.uri, mlflow_server.uri).get_run(run.info.run_id)
    assert logged.data.metrics["infgate_suspect_rate"] == pytest.approx(
        result.metrics["infgate_suspect_rate"]
    )
    names = {
        f.path
        for f in MlflowClient(mlflow_server.uri, mlflow_server.uri).list_artifacts(
            run.info.run_id, "infgate"
        )
    }
    assert {
        "infgate/findings.csv",
        "infgate/gate_verdict.json",
        "infgate/score_histogram.png",
        "infgate/report.html",
        "infgate/summary.md",
    } <= names
    # EvaluationResult.artifacts: one per logged file, each pointing at the run's copy and
    # loaded (the figure as an image, the verdict as JSON, the page and summary as text)
    from mlflow.models.evaluation.artifacts import (
        ImageEvaluationArtifact,
        JsonEvaluationArtifact,
        TextEvaluationArtifact,
    )

    arts = result.artifacts
    assert {"infgate_report", "infgate_summary", "infgate_score_histogram"} <= set(arts)
    rid = run.info.run_id
    assert {a.uri for a in arts.values()} == {f"runs:/{rid}/{n}" for n in names}
    assert isinstance(arts["infgate_score_histogram"], ImageEvaluationArtifact)
    assert arts["infgate_score_histogram"].content.size[0] > 100
    assert isinstance(arts["infgate_gate_verdict"], JsonEvaluationArtifact)
    assert arts["infgate_gate_verdict"].content["verdict"] == "blocked"
    assert isinstance(arts["infgate_report"], TextEvaluationArtifact)
    assert "gate BLOCKED" in arts["infgate_report"].content


def test_evaluator_refuses_non_classifiers() -> None:
    from infgate.plugins.mlflow_evaluator import InfgateEvaluator

    assert InfgateEvaluator.can_evaluate(model_type="classifier", evaluator_config={})
    assert not InfgateEvaluator.can_evaluate(model_type="regressor", evaluator_config={})
