"""In-process scan against a real ``mlflow server``: block, log back, reuse, promote."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.services import NoisyVersion


@pytest.fixture(scope="module")
def scanned(noisy_version: NoisyVersion, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from infgate.scan import run_scan
    from infgate.store import Store
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("scan")
    store = Store.from_url(f"sqlite:///{root}/infgate.db")
    store.upgrade()
    uri, v = noisy_version.server.uri, noisy_version.version
    client = MlflowClient(uri, uri)
    client.set_registered_model_alias("noisy", "champion", v)  # set before anyone checked
    from infgate.config import ScanConfig
    from infgate.settings import Settings

    config = ScanConfig().with_overrides(**{"report.directory": str(root / "report")})
    out = run_scan(
        f"models:/noisy/{v}", store=store, config=config, settings=Settings(tracking_uri=uri)
    )
    return {"out": out, "store": store, "client": client, "root": root}


def test_scan_run_logs_metrics_and_artifacts(scanned: dict, noisy_version: NoisyVersion) -> None:
    out, client = scanned["out"], scanned["client"]
    assert out.report is not None and out.report.scan_run_id
    run = client.get_run(out.report.scan_run_id)
    m = run.data.metrics
    assert m["n_rows"] == 500 and m["gate_passed"] == 0.0
    assert m["suspect_rate"] == pytest.approx(int(out.ranking["is_suspect"].sum()) / 500)
    # the planted flips are known (true_label column), so recall is logged: the ranking
    # finds most flips in the top 20% of the data
    assert m["n_true_label_errors"] == int(noisy_version.digits.flipped.sum())
    assert m["recall_at_20pct"] >= 0.8
    names = {f.path for f in client.list_artifacts(out.report.scan_run_id, "infgate")}
    assert {
        "infgate/findings.csv",
        "infgate/score_histogram.png",
        "infgate/recall_curve.png",
        "infgate/gate_verdict.json",
        "infgate/summary.md",
    } <= names
    version_tags = client.get_model_version("noisy", noisy_version.version).tags
    assert version_tags["infgate.scan_run_id"] == out.report.scan_run_id
    # the whole config is logged, with what the curvature fit actually used
    assert run.data.params["influence.method"] == "auto"
    assert run.data.params["curvature.method"] == out.analysis.curvature.method
    assert float(run.data.params["curvature.damping"]) == pytest.approx(
        out.analysis.curvature.damping
    )


def test_rerun_reuses_the_stored_scan(scanned: dict, noisy_version: NoisyVersion) -> None:
    from infgate.config import ScanConfig
    from infgate.scan import run_scan
    from infgate.settings import Settings

    again = run_scan(
        f"models:/noisy/{noisy_version.version}",
        store=scanned["store"],
        config=ScanConfig().with_overrides(**{"report.log_to_mlflow": False}),
        settings=Settings(tracking_uri=noisy_version.server.uri),
    )
    assert again.reused and again.scan_id == scanned["out"].scan_id
    assert again.queued == 0  # nothing queued twice
    assert scanned["store"].get_scan(again.scan_id).n_runs == 1


def test_blocked_version_is_refused_until_every_blocking_finding_is_decided(
    scanned: dict, noisy_version: NoisyVersion
) -> None:
    """One story in order (each step changes the shared version and store): the CLI refuses
    the blocked version, then every blocking suspect is decided and promote passes."""
    _noisy_version_is_blocked_tagged_and_loses_the_alias(scanned, noisy_version)
    _promote_cli_refuses_with_the_failed_checks(scanned, noisy_version)
    _promote_refuses_until_every_blocking_finding_is_decided(scanned, noisy_version)


def _noisy_version_is_blocked_tagged_and_loses_the_alias(
    scanned: dict, noisy_version: NoisyVersion
) -> None:
    from mlflow.exceptions import MlflowException

    out, client = scanned["out"], scanned["client"]
    assert out.verdict.verdict == "blocked"
    failed = {r.name: r for r in out.verdict.reasons}
    n_suspects = int(out.ranking["is_suspect"].sum())
    assert failed["suspect_rate"].observed == pytest.approx(n_suspects / 500)
    tags = client.get_model_version("noisy", noisy_version.version).tags
    assert tags["infgate.gate"] == "blocked"
    assert tags["infgate.scan_id"] == str(out.scan_id)
    assert "suspected label-error rate" in tags["infgate.reason"]
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("noisy", "champion")
    assert out.queued == n_suspects


def _promote_cli_refuses_with_the_failed_checks(scanned: dict, noisy_version: NoisyVersion) -> None:
    from infgate.plugins.cli.app import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(
        app,
        [
            "promote",
            f"models:/noisy/{noisy_version.version}",
            "--db",
            str(scanned["store"].engine.url),
            "--tracking-uri",
            noisy_version.server.uri,
        ],
    )
    assert result.exit_code == 2, result.output
    assert "refused" in result.output and "Why the gate blocks" in result.output
    assert "suspect_rate" in result.output


def _promote_refuses_until_every_blocking_finding_is_decided(
    scanned: dict, noisy_version: NoisyVersion
) -> None:
    from infgate.errors import GateBlockedError
    from infgate.review.annotators import ensure_annotator
    from infgate.review.queue import claim_next, decide
    from infgate.scan.promote import promote
    from infgate.settings import Settings

    store, client, uri = scanned["store"], scanned["client"], noisy_version.server.uri
    settings = Settings(tracking_uri=uri)
    ref = f"models:/noisy/{noisy_version.version}"
    with pytest.raises(GateBlockedError, match="refusing to give") as info:
        promote(store, ref, settings=settings)
    assert any(r.name == "suspect_rate" for r in info.value.reasons)
    ensure_annotator(store, "reviewer")
    decided = 0
    while (item := claim_next(store, "reviewer")) is not None:
        if item.suggested_label and item.suggested_label != item.given_label:
            decide(store, item.item_id, "reviewer", "relabel", label=item.suggested_label)
        else:
            decide(store, item.item_id, "reviewer", "keep")
        decided += 1
    assert decided == scanned["out"].queued
    promote(store, ref, settings=settings)
    assert client.get_model_version_by_alias("noisy", "champion").version == noisy_version.version
    assert client.get_model_version("noisy", noisy_version.version).tags["infgate.gate"] == "passed"


def test_shifted_eval_data_fails_the_mismatch_check(
    noisy_version: NoisyVersion, tmp_path: Path
) -> None:
    """On a version of its own: a scan writes its verdict onto the version's tags, and the
    shared ``noisy`` version's tags are what the blocked-version story above reads (run after
    this test, that story read this scan's mismatch reason; pytest-randomly seed
    3744825250)."""
    import numpy as np
    import pandas as pd
    from infgate.examples.demo_registry import register_model_with_data
    from infgate.scan import run_scan
    from infgate.store import Store

    own = register_model_with_data(
        noisy_version.digits.data,  # type: ignore[arg-type]
        name="noisy-shifted-eval",
        workdir=tmp_path / "model",
        tracking_uri=noisy_version.server.uri,
        true_labels=noisy_version.digits.clean,
    )
    train = pd.read_parquet(own.data_path)
    features = [c for c in train.columns if c.startswith("f")]
    shifted = train.head(150).copy()
    shifted[features] = 1.0 - shifted[features].to_numpy()  # inverted images
    shifted["example_id"] = [f"e{i}" for i in range(len(shifted))]
    eval_path = tmp_path / "eval.parquet"
    shifted.drop(columns=["true_label"]).to_parquet(eval_path)
    store = Store.from_url(f"sqlite:///{tmp_path}/infgate.db")
    store.upgrade()
    from infgate.config import ScanConfig
    from infgate.settings import Settings

    out = run_scan(
        f"models:/{own.name}/{own.version}",
        eval_uri=str(eval_path),
        store=store,
        config=ScanConfig().with_overrides(**{"report.log_to_mlflow": False}),
        settings=Settings(tracking_uri=noisy_version.server.uri),
    )
    assert out.mismatch is not None and out.mismatch.flagged
    reasons = {r.name: r for r in out.verdict.reasons}
    assert reasons["mismatch"].observed == pytest.approx(out.mismatch.p_value)
    stored = store.findings_frame(out.scan_id)
    mismatched = stored[stored["kind"] == "domain_mismatch"]
    assert len(mismatched) > 0.5 * len(shifted)
    assert set(mismatched["example_id"]) <= set(shifted["example_id"])
    assert np.isfinite(mismatched["score"]).all()


def test_a_gate_that_cannot_run_blocks_the_version_and_a_rerun_recovers(
    noisy_version: NoisyVersion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: when Great Expectations raises after the scan is stored, the version
    does not keep the ``passed`` tag and deployment alias of an earlier gate. The newest
    verdict in SQL is ``blocked`` with a ``gate_ran`` check naming the error, the tag says
    blocked, the alias is withdrawn and the caller sees the error; the next run reuses the
    stored scan and its gate records a real verdict."""
    import great_expectations as gx
    from infgate.config import ScanConfig
    from infgate.examples.demo_registry import register_model_with_data
    from infgate.scan import run_scan
    from infgate.settings import Settings
    from infgate.store import Store
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tests.services import small_digits

    clean = small_digits(n=300, noise=0.0, seed=5)
    uri = noisy_version.server.uri
    own = register_model_with_data(
        clean.data,  # type: ignore[arg-type]
        name="gate-fault",
        workdir=tmp_path / "model",
        tracking_uri=uri,
    )
    client = MlflowClient(uri, uri)
    client.set_model_version_tag(own.name, own.version, "infgate.gate", "passed")  # earlier gate
    client.set_registered_model_alias(own.name, "champion", own.version)
    store = Store.from_url(f"sqlite:///{tmp_path}/infgate.db")
    store.upgrade()
    config = ScanConfig().with_overrides(**{"report.log_to_mlflow": False})
    settings = Settings(tracking_uri=uri)
    ref = f"models:/{own.name}/{own.version}"

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("data context unavailable")

    monkeypatch.setattr(gx, "get_context", broken)
    with pytest.raises(RuntimeError, match="data context unavailable"):
        run_scan(ref, store=store, config=config, settings=settings)
    info = store.latest_scan(own.name, own.version)
    assert info is not None and info.gate is not None
    assert info.gate["verdict"] == "blocked"
    (check,) = info.gate["reasons"]
    assert check["name"] == "gate_ran" and "data context unavailable" in check["message"]
    tags = client.get_model_version(own.name, own.version).tags
    assert tags["infgate.gate"] == "blocked" and "could not run" in tags["infgate.reason"]
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(own.name, "champion")

    monkeypatch.undo()
    again = run_scan(ref, store=store, config=config, settings=settings)
    assert again.reused and again.scan_id == info.id
    assert "gate_ran" not in {c.name for c in again.verdict.checks}
    newest = store.get_scan(info.id).gate
    assert newest is not None and newest["verdict"] == again.verdict.verdict
    tags = client.get_model_version(own.name, own.version).tags
    assert tags["infgate.gate"] == again.verdict.verdict
