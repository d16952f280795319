"""MLflow registry in: resolving versions, loading pt2 and pickled models, finding the data."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from infgate.data.columns import ColumnOptions
from infgate.errors import (
    DataResolutionError,
    DatasetMismatchError,
    InvalidInputError,
    RegistryError,
)
from infgate.examples.models import make_classifier
from infgate.registry.core import ModelVersionRef, load_model, resolve_model_version
from infgate.registry.datasets import check_data_fits, load_training_data
from torch import nn

from tests.services import NoisyVersion


def test_resolve_by_alias_version_and_name(noisy_version: NoisyVersion) -> None:
    from mlflow import MlflowClient

    uri, v = noisy_version.server.uri, noisy_version.version
    MlflowClient(uri, uri).set_registered_model_alias("noisy", "candidate", v)
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
    from infgate.registry.refs import mlflow_uris

    with mlflow_uris(uri), mlflow.start_run():  # tracking AND registry: the session's server
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
    client = MlflowClient(uri, uri)
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
    from infgate.settings import Settings

    uri, v = noisy_version.server.uri, noisy_version.version
    orphan = ModelVersionRef(name="noisy", version=v, run_id=None)
    with pytest.raises(DataResolutionError, match="no resolvable training data"):
        load_training_data(orphan, tracking_uri=uri)
    with pytest.raises(DataResolutionError, match="does not exist"):
        load_training_data(orphan, data_uri=str(tmp_path / "missing.parquet"))
    narrow = pd.read_parquet(noisy_version.data_path).iloc[:, :11].assign(label=1)
    narrow.to_parquet(tmp_path / "narrow.parquet")
    with pytest.raises(DatasetMismatchError) as err:  # the pt2 signature says (-1, 64)
        load_stage(
            f"models:/noisy/{v}",
            data_uri=str(tmp_path / "narrow.parquet"),
            settings=Settings(tracking_uri=uri),
        )
    assert str(err.value).endswith(
        "columns [f0..f9 (10 columns)] (from numeric columns (default)) give rows of shape "
        "(10,) (10 values), which do not fit the model's input (-1, 64) (from the model "
        "signature); set option `feature_columns` or model-version tag "
        "`infgate.feature_columns`, or option `input_shape` or model-version tag "
        "`infgate.input_shape` (e.g. '1x8x8')"
    )
    narrow.drop(columns=["label"]).to_parquet(tmp_path / "nolabel.parquet")
    with pytest.raises(DataResolutionError, match="no label column 'label'"):
        load_training_data(orphan, data_uri=str(tmp_path / "nolabel.parquet"))


@dataclass(frozen=True)
class SignedModels:
    """A sqlite:/// MLflow store holding models logged with inferred signatures."""

    uri: str
    columns: ModelVersionRef  # column-based signature: b, a, c -> 2 classes
    tensor: ModelVersionRef  # tensor-based signature: (-1, 1, 8, 8) -> 3 classes


@pytest.fixture(scope="module")
def signed_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignedModels]:
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    root = tmp_path_factory.mktemp("signed")
    uri = f"sqlite:///{root}/mlflow.db"
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(3, 2)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    for p in [*linear.parameters(), *conv.parameters()]:
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g))
    cols = pd.DataFrame(np.zeros((2, 3), np.float32), columns=["b", "a", "c"])
    img = np.zeros((2, 1, 8, 8), np.float32)
    try:
        mlflow.set_experiment("signed")
        for name, model, example in (("cols", linear, cols), ("img", conv, img)):
            with torch.no_grad():
                out = model(torch.tensor(np.array(example))).numpy()
            with mlflow.start_run():
                mlflow.pytorch.log_model(
                    model,
                    name="model",
                    signature=infer_signature(example, out),
                    serialization_format="pickle",
                    pip_requirements=["torch"],
                    registered_model_name=name,
                )
        yield SignedModels(
            uri,
            resolve_model_version("cols", version="1", tracking_uri=uri),
            resolve_model_version("img", version="1", tracking_uri=uri),
        )
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def _team_table(n: int, width: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = ["a", "b", "c"] if width == 3 else [f"f{i}" for i in range(width)]
    df = pd.DataFrame(rng.random((n, width)).astype(np.float32), columns=names)
    df.insert(0, "example_id", [f"id{i}" for i in range(n)])
    df["weight"] = rng.random(n)  # numeric, but not in the signature
    df["source"] = "vendor"
    df["label"] = rng.integers(0, 2, n)
    df["true_label"] = df["label"]
    return df


def test_columns_from_a_column_signature(signed_models: SignedModels, tmp_path: Path) -> None:
    from infgate.registry.datasets import load_eval_data, stream_training_data

    uri, mv = signed_models.uri, signed_models.columns
    df = _team_table(30, 3, seed=1)
    df.to_parquet(tmp_path / "train.parquet", row_group_size=7)
    train = load_training_data(mv, data_uri=str(tmp_path / "train.parquet"), tracking_uri=uri)
    assert train.spec is not None and train.spec.columns == ("b", "a", "c")
    assert train.data.feature_names == ("b", "a", "c")
    assert train.plan is not None and train.plan.origin == "the model signature"
    assert set(train.plan.ignored) == {"weight", "source"}
    np.testing.assert_array_equal(train.data.features, df[["b", "a", "c"]].to_numpy())
    np.testing.assert_array_equal(train.true_labels, df["true_label"].to_numpy())
    model = load_model(mv, tracking_uri=uri)
    assert check_data_fits(model, train.data.features, train.data.labels, plan=train.plan) == 2
    # evaluation data: same columns whatever their order, labels optional
    ev = df.drop(columns=["label", "true_label"])[["c", "source", "a", "b", "example_id"]]
    ev.to_parquet(tmp_path / "eval.parquet")
    eval_data = load_eval_data(mv, str(tmp_path / "eval.parquet"), train)
    assert eval_data is not None and eval_data.labels is None
    np.testing.assert_array_equal(eval_data.features, train.data.features)
    assert load_eval_data(mv, None, train) is None
    ev.drop(columns=["b"]).to_parquet(tmp_path / "eval-narrow.parquet")
    with pytest.raises(DatasetMismatchError, match=r"lacks the feature columns \['b'\]"):
        load_eval_data(mv, str(tmp_path / "eval-narrow.parquet"), train)
    # streamed from Parquet in batches smaller than a row group: same rows, same hash
    streamed = stream_training_data(
        mv, data_uri=str(tmp_path / "train.parquet"), batch_rows=4, tracking_uri=uri
    )
    assert streamed.data.content_hash == train.data.content_hash
    assert check_data_fits(model, streamed.data, streamed.data.labels) == 2
    # an explicit tag wins over the signature
    from mlflow import MlflowClient

    MlflowClient(uri, uri).set_model_version_tag("cols", "1", "infgate.feature_columns", "c,a,b")
    tagged = resolve_model_version("cols", version="1", tracking_uri=uri)
    by_tag = load_training_data(tagged, data_uri=str(tmp_path / "train.parquet"), tracking_uri=uri)
    assert by_tag.data.feature_names == ("c", "a", "b")
    assert by_tag.plan is not None and by_tag.plan.origin == "tag infgate.feature_columns"
    MlflowClient(uri, uri).delete_model_version_tag("cols", "1", "infgate.feature_columns")


def test_tensor_signature_shapes_flat_columns(signed_models: SignedModels, tmp_path: Path) -> None:
    uri, mv = signed_models.uri, signed_models.tensor
    df = _team_table(12, 64, seed=2)
    df.to_parquet(tmp_path / "flat.parquet")
    meta = ColumnOptions(metadata_columns=("weight",))  # numeric, so declared not a feature
    train = load_training_data(
        mv, data_uri=str(tmp_path / "flat.parquet"), columns=meta, tracking_uri=uri
    )
    assert train.spec is not None and train.spec.shape == (-1, 1, 8, 8)
    assert train.data.features.shape == (12, 1, 8, 8)
    assert train.data.image_shape == (8, 8)
    np.testing.assert_array_equal(
        train.data.features.reshape(12, 64), df[[f"f{i}" for i in range(64)]].to_numpy()
    )
    model = load_model(mv, tracking_uri=uri)
    assert check_data_fits(model, train.data.features, train.data.labels) == 3
    _team_table(12, 60, seed=3).to_parquet(tmp_path / "short.parquet")
    with pytest.raises(DatasetMismatchError) as err:
        load_training_data(mv, data_uri=str(tmp_path / "short.parquet"), tracking_uri=uri)
    assert "columns [f0..weight (61 columns)] (from numeric columns (default))" in str(err.value)
    assert "which do not fit the model's input (-1, 1, 8, 8) (from the model signature)" in str(
        err.value
    )
