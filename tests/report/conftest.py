"""One scan of a registered version with evaluation data, run through the Prefect flow on
the test harness against a real ``mlflow server``; the MLflow, report, browser and Prefect
tests all read what that one flow run left behind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.services import MlflowServer, small_digits

USER_DESCRIPTION = "Trained by the vision team on the digits sample."


@dataclass(frozen=True)
class FlowScan:
    """The flow run, its summary and where its report went."""

    server: MlflowServer
    name: str
    version: str
    state: Any
    summary: dict[str, Any]
    report_dir: Path
    eval_path: Path
    train_path: Path


@pytest.fixture(scope="session")
def flow_scan(
    mlflow_server: MlflowServer, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> FlowScan:
    """``reported`` v1 (400 digits, 10% flips) scanned with shifted evaluation data."""
    from infgate.config import ScanConfig
    from infgate.examples.demo_registry import register_model_with_data
    from infgate.flows.scan import scan_model_version
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("report-flow")
    digits = small_digits(n=400, noise=0.1, seed=5)
    reg = register_model_with_data(
        digits.data,  # type: ignore[arg-type]
        name="reported",
        workdir=root,
        tracking_uri=mlflow_server.uri,
        true_labels=digits.clean,
    )
    client = MlflowClient(mlflow_server.uri, mlflow_server.uri)
    client.update_model_version("reported", reg.version, description=USER_DESCRIPTION)
    frame = digits.data.to_frame()  # type: ignore[attr-defined]
    shifted = frame.iloc[:150].copy()
    features = [c for c in shifted.columns if c not in ("example_id", "label")]
    shifted[features[:16]] = np.clip(shifted[features[:16]].to_numpy() + 0.6, 0, None)
    shifted["example_id"] = [f"e{i}" for i in range(len(shifted))]
    eval_path = root / "eval.parquet"
    shifted.to_parquet(eval_path)
    # the tag (not eval_uri=): the report names the evaluation source only from the tag
    client.set_model_version_tag("reported", reg.version, "infgate.eval_data", str(eval_path))
    config = ScanConfig().with_overrides(
        **{
            "report.directory": str(root / "report"),
            "detect.explain_top": 3,
            "detect.explain_k": 3,
            "mismatch.n_permutations": 200,
        }
    )
    state = scan_model_version(
        f"models:/reported/{reg.version}",
        config=config,
        db_url=f"sqlite:///{root}/infgate.db",
        tracking_uri=mlflow_server.uri,
        return_state=True,
    )
    summary = state.result(raise_on_failure=False)
    return FlowScan(
        mlflow_server,
        "reported",
        reg.version,
        state,
        summary,
        Path(summary["report_dir"]),
        eval_path,
        Path(reg.data_path),
    )
