"""MLflow registry in: resolving versions, loading pt2 and pickled models, finding the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from infgate.errors import (
    DataResolutionError,
    DatasetMismatchError,
    InvalidInputError,
    RegistryError,
)
from infgate.examples.models import make_classifier
from infgate.registry.core import (
    ModelVersionRef,
    load_model,
    load_training_data,
    resolve_model_version,
)

from tests.services import NoisyVersion


def test_resolve_by_alias_version_and_name(noisy_version: NoisyVersion) -> None:
    from mlflow import MlflowClient

    uri, v = noisy_version.server.uri, noisy_version.version
    MlflowClient(uri).set_registered_model_alias("noisy", "candidate", v)
    by_alias = resolve_model_version("models:/noisy@candidate", tracking_uri=uri)
    assert (by_alias.version, by_alias.alias) == (v, "candidate")
    assert resolve_model_version(f"models:/noisy/{v}", tracking_uri=uri).run_id == by_alias.run_id
    assert resolve_model_version("noisy", version=v, tracking_uri=uri).uri == f"models:/noisy/{v}"


@pytest.mark.parametrize(
    ("ref", "version", "error", "match"),
    [
        ("models:/nope/1", None, RegistryError, "no registered model named 'nope'"),
        ("models:/noisy@ghost", None, RegistryError, "no alias 'ghost'"),
        ("models:/noisy/99", None, RegistryError, "no version '99'"),
        ("models:/noisy/1/extra", None, InvalidInputError, "is not models:/name@alias"),
        ("noisy", None, InvalidInputError, "without a version"),
    ],
)
def test_resolve_errors_name_what_is_missing(
    noisy_version: NoisyVersion, ref: str, version: str | None, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        resolve_model_version(ref, version=version, tracking_uri=noisy_version.server.uri)


def test_pt2_and_pickled_models_load_and_agree(noisy_version: NoisyVersion, tmp_path: Path) -> None:
    import mlflow
    import mlflow.pytorch

    uri = noisy_version.server.uri
    mv = resolve_model_version(f"models:/noisy/{noisy_version.version}", tracking_uri=uri)
    pt2 = load_model(mv, tracking_uri=uri)
    assert isinstance(pt2, torch.fx.GraphModule)  # MLflow's default pt2 format
    module = make_classifier(64, 10)  # same weights as an ordinary (picklable) module
    with torch.no_grad():
        for dst, src in zip(module.parameters(), pt2.parameters(), strict=True):
            dst.copy_(src)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            module,
            name="model",
            serialization_format="pickle",
            pip_requirements=["torch"],
            registered_model_name="noisy-pickled",
        )
    pickled_mv = resolve_model_version(
        "noisy-pickled", version=str(info.registered_model_version), tracking_uri=uri
    )
    pickled = load_model(pickled_mv, tracking_uri=uri)
    assert not isinstance(pickled, torch.fx.GraphModule)
    x = torch.as_tensor(noisy_version.digits.data.features[:7])  # type: ignore[attr-defined]
    with torch.no_grad():
        assert torch.allclose(pt2(x), pickled(x), atol=1e-6)
    # a pt2 model travels to Dask workers / Prefect results as "reload this version"
    import pickle

    import cloudpickle

    for dumps in (pickle.dumps, cloudpickle.dumps):
        again = pickle.loads(dumps(pt2))
        with torch.no_grad():
            assert torch.equal(again(x), pt2(x))


def test_training_data_resolution_order(noisy_version: NoisyVersion, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri, v = noisy_version.server.uri, noisy_version.version
    mv = resolve_model_version("noisy", version=v, tracking_uri=uri)
    assert mv.tags.get("infgate.train_data") is None
    from_run = load_training_data(mv, tracking_uri=uri)
    assert (from_run.origin, len(from_run.data), from_run.registered_rows) == (
        "run dataset input",
        500,
        500,
    )
    assert from_run.true_labels is not None  # the true_label column is kept out of the features
    assert from_run.data.features.shape == (500, 64)
    full = pd.read_parquet(noisy_version.data_path)
    tagged, explicit = tmp_path / "tagged.parquet", tmp_path / "explicit.csv"
    full.head(300).to_parquet(tagged)
    full.head(250).to_csv(explicit, index=False)
    client = MlflowClient(uri)
    client.set_model_version_tag("noisy", v, "infgate.train_data", str(tagged))
    try:
        mv = resolve_model_version("noisy", version=v, tracking_uri=uri)
        by_tag = load_training_data(mv, tracking_uri=uri)
        assert (by_tag.origin, len(by_tag.data)) == ("tag infgate.train_data", 300)
        by_uri = load_training_data(mv, data_uri=str(explicit), tracking_uri=uri)
        assert (by_uri.origin, len(by_uri.data)) == ("explicit", 250)
        np.testing.assert_array_equal(by_uri.data.labels, from_run.data.labels[:250])
    finally:
        client.delete_model_version_tag("noisy", v, "infgate.train_data")


def test_unresolvable_and_unfit_data_get_clear_errors(
    noisy_version: NoisyVersion, tmp_path: Path
) -> None:
    from infgate.scan.stages import load_stage

    uri, v = noisy_version.server.uri, noisy_version.version
    orphan = ModelVersionRef(name="noisy", version=v, run_id=None)
    with pytest.raises(DataResolutionError, match="no resolvable training data"):
        load_training_data(orphan, tracking_uri=uri)
    with pytest.raises(DataResolutionError, match="does not exist"):
        load_training_data(orphan, data_uri=str(tmp_path / "missing.parquet"))
    narrow = pd.read_parquet(noisy_version.data_path).iloc[:, :11].assign(label=1)
    narrow.to_parquet(tmp_path / "narrow.parquet")
    with pytest.raises(DatasetMismatchError, match="does not fit"):
        load_stage(
            f"models:/noisy/{v}", data_uri=str(tmp_path / "narrow.parquet"), tracking_uri=uri
        )
    narrow.drop(columns=["label"]).to_parquet(tmp_path / "nolabel.parquet")
    with pytest.raises(DataResolutionError, match="no label column 'label'"):
        load_training_data(orphan, data_uri=str(tmp_path / "nolabel.parquet"))
