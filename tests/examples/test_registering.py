"""The example registration helpers work against any tracking URI and leave MLflow's
process-wide URIs as they found them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from infgate.data import TrainingData


def test_register_model_with_data_restores_global_uris(tmp_path: Path) -> None:
    import mlflow
    from infgate.examples.demo_registry import register_model_with_data
    from mlflow import MlflowClient

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data = TrainingData(features=x, labels=y)
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    target = f"sqlite:///{tmp_path}/target.db"
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(elsewhere)
    mlflow.set_registry_uri(elsewhere)
    try:
        reg = register_model_with_data(
            data, name="restore-check", workdir=tmp_path / "w", tracking_uri=target
        )
        # registered where asked, through a model id the registry resolved there
        mv = MlflowClient(target, registry_uri=target).get_model_version(
            "restore-check", reg.version
        )
        assert mv.run_id == reg.run_id
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (elsewhere, elsewhere)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
