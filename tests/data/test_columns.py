"""Which stored columns become features: options, signature, numeric default; messages."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from infgate.data.columns import ColumnOptions, ModelInputSpec, resolve_columns
from infgate.data.training import EvalData, TrainingData
from infgate.errors import DataResolutionError, DatasetMismatchError, InvalidInputError


def _team_frame(n: int = 12, seed: int = 0) -> pd.DataFrame:
    """What teams store: ids, features, label, a string `source`, a `true_label` column."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, 3)).astype(np.float32), columns=["a", "b", "c"])
    df.insert(0, "example_id", [f"ex-{i}" for i in range(n)])
    df["label"] = rng.integers(0, 3, n)
    df["source"] = ["crawl" if i % 2 else "vendor" for i in range(n)]
    df["true_label"] = df["label"].to_numpy()
    return df


def test_string_source_and_true_label_are_not_features(caplog: pytest.LogCaptureFixture) -> None:
    df = _team_frame()
    with caplog.at_level(logging.INFO, logger="infgate.data.columns"):
        data = TrainingData.from_frame(df)
    assert data.feature_names == ("a", "b", "c")
    np.testing.assert_array_equal(data.features, df[["a", "b", "c"]].to_numpy(np.float32))
    assert data.features.dtype == np.float32
    assert list(data.example_ids) == [f"ex-{i}" for i in range(12)]
    assert "not features, ignored: source" in caplog.text


def test_metadata_and_explicit_columns() -> None:
    df = _team_frame().assign(weight=np.arange(12.0))
    assert TrainingData.from_frame(df).feature_names == ("a", "b", "c", "weight")
    meta = TrainingData.from_frame(df, metadata_columns=["weight"])
    assert meta.feature_names == ("a", "b", "c")
    picked = TrainingData.from_frame(df, feature_columns=["c", "a"])
    np.testing.assert_array_equal(picked.features, df[["c", "a"]].to_numpy(np.float32))


def test_signature_columns_win_over_the_default_and_keep_their_order() -> None:
    df = _team_frame().assign(weight=np.arange(12.0))
    spec = ModelInputSpec(columns=("b", "a"))
    data = TrainingData.from_frame(df, spec=spec)
    assert data.feature_names == ("b", "a")
    # an explicit option wins over the signature
    opts = ColumnOptions(feature_columns=("c",))
    assert TrainingData.from_frame(df, options=opts, spec=spec).feature_names == ("c",)


def test_tensor_signature_shapes_flat_columns() -> None:
    rng = np.random.default_rng(1)
    flat = rng.random((5, 64)).astype(np.float32)
    df = pd.DataFrame(flat, columns=[f"f{i}" for i in range(64)]).assign(label=[0, 1, 0, 1, 0])
    data = TrainingData.from_frame(df, spec=ModelInputSpec(shape=(-1, 1, 8, 8), dtype="float32"))
    assert data.features.shape == (5, 1, 8, 8)
    np.testing.assert_array_equal(data.features.reshape(5, 64), flat)
    assert data.image_shape == (8, 8) and data.feature_names is None


def test_shape_mismatch_names_columns_shape_and_fix() -> None:
    df = _team_frame()
    with pytest.raises(DatasetMismatchError) as err:
        TrainingData.from_frame(df, spec=ModelInputSpec(shape=(-1, 64), dtype="float32"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "columns [a, b, c] (from numeric columns (default))" in msg
    assert "rows of shape (3,) (3 values), which do not fit the model's input (-1, 64)" in msg
    assert "(from the model signature)" in msg
    assert "`infgate.feature_columns`" in msg and "`infgate.input_shape`" in msg


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"feature_columns": ["a", "nope"]},
            DataResolutionError,
            r"lacks the feature columns \['nope'\] named by option feature_columns",
        ),
        (
            {"feature_columns": ["a", "source"]},
            DataResolutionError,
            r"not numeric: \{'source': '(large_)?string'\}",
        ),
        ({"label_column": "y"}, DataResolutionError, "has no label column 'y'"),
        (
            {"feature_columns": ["a", "label"]},
            DataResolutionError,
            "cannot be both a feature and label/id",
        ),
    ],
)
def test_column_errors_are_one_line(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match) as err:
        TrainingData.from_frame(_team_frame(), **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (0, 8)}, r"`input_shape` must be positive sizes .* got \(0, 8\)"),
        ({"feature_columns": "abc"}, "must be a list of column names, got the string 'abc'"),
        ({"feature_columns": ("a", "a")}, "names a column twice"),
        ({"image_scale": 0}, "`image_scale` must be > 0 or None, got 0"),
        ({"input_dtype": "int8"}, "`input_dtype` must be 'auto', 'float32' or 'int64', got 'int8'"),
        ({"feature_columns": ("a",), "token_columns": ("b",)}, "disagree"),
    ],
)
def test_options_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        ColumnOptions(**kwargs)


def test_input_shape_drops_the_batch_dimension() -> None:
    assert ColumnOptions(input_shape=(-1, 1, 8, 8)).input_shape == (1, 8, 8)


def test_only_strings_left_gives_a_fix() -> None:
    schema = pa.schema([("label", pa.int64()), ("text", pa.string())])
    with pytest.raises(DataResolutionError, match="no numeric, image or array column"):
        resolve_columns(schema)


def test_demo_output_reads_back_with_the_same_hash() -> None:
    """`infgate queue apply` re-reads the demo's Parquet (with `true_label`) by from_frame."""
    rng = np.random.default_rng(7)
    data = TrainingData(
        features=rng.random((20, 64)).astype(np.float32),
        labels=rng.integers(0, 10, 20),
        classes=tuple(map(str, range(10))),
        image_shape=(8, 8),
    )
    frame = data.to_frame()
    frame["true_label"] = data.labels
    again = TrainingData.from_frame(frame, classes=data.classes, image_shape=(8, 8))
    assert again.features.shape == (20, 64)
    assert again.content_hash == data.content_hash


_NAMES = ("cat", "dog", "fox")


@pytest.mark.parametrize("categorical", [False, True])
def test_class_name_labels_map_through_the_classes(categorical: bool) -> None:
    """A label column of class names (strings, or a pandas categorical: an Arrow
    dictionary) is mapped to indices in the order of ``classes``; the corrected file
    written from it holds names again."""
    df = _team_frame()
    idx = df["label"].to_numpy()
    names = np.asarray(_NAMES, dtype=object)[idx]
    df["label"] = pd.Categorical(names, categories=["fox", "dog", "cat"]) if categorical else names
    data = TrainingData.from_frame(df, classes=_NAMES)
    assert data.labels.tolist() == idx.tolist() and data.label_names
    same = TrainingData.from_frame(_team_frame(), classes=_NAMES)
    assert data.content_hash == same.content_hash  # the labels, not their spelling
    flipped = data.with_labels(np.where(idx == 0, 1, idx))
    out = flipped.to_frame()
    assert out["label"].tolist() == [_NAMES[1] if i == 0 else _NAMES[i] for i in idx]
    assert TrainingData.from_frame(out, classes=_NAMES).labels.tolist() == flipped.labels.tolist()
    ev = EvalData.from_table(pa.Table.from_pandas(df), data_plan(df), classes=_NAMES)
    assert ev.labels is not None and ev.labels.tolist() == idx.tolist()


def data_plan(df: pd.DataFrame):  # type: ignore[no-untyped-def]
    return resolve_columns(pa.Table.from_pandas(df).schema, ColumnOptions(), what="training")


def test_class_name_labels_without_classes_or_unknown_are_refused() -> None:
    df = _team_frame()
    df["label"] = np.asarray(_NAMES, dtype=object)[df["label"].to_numpy()]
    with pytest.raises(
        InvalidInputError, match=r"holds class names \(e\.g\. '\w+'\).*infgate\.classes"
    ):
        TrainingData.from_frame(df)
    with pytest.raises(InvalidInputError, match=r"holds \['fox'\], not among the model's classes"):
        TrainingData.from_frame(df, classes=("cat", "dog", "wolf"))


def test_missing_labels_are_refused_naming_the_rows() -> None:
    df = _team_frame()
    df["label"] = df["label"].astype("float64")
    df.loc[[4, 9], "label"] = np.nan
    with pytest.raises(
        InvalidInputError, match=r"missing in 2 row\(s\), first at positions \[4, 9\]"
    ):
        TrainingData.from_frame(df)
