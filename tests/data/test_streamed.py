"""Parquet streamed in batches equals the in-memory read (features, labels, ids, hash)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from infgate.data.columns import ColumnOptions, resolve_columns
from infgate.data.streamed import StreamedTrainingData
from infgate.data.training import TrainingData
from infgate.errors import DataResolutionError, InvalidInputError, NonFiniteError
from infgate.influence.batches import BatchSource
from PIL import Image


def _write(df: pd.DataFrame, path: Path, row_group: int) -> Path:
    df.to_parquet(path, index=False, row_group_size=row_group)
    return path


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"f{i}" for i in range(6)])
    df.insert(0, "example_id", [f"row-{i}" for i in range(n)])
    df["label"] = rng.integers(0, 4, n)
    df["source"] = "vendor"
    df["true_label"] = df["label"]
    return df


@pytest.mark.parametrize(("row_group", "batch_rows", "batch_size"), [(7, 5, 8), (50, 64, 3)])
def test_stream_equals_in_memory(
    tmp_path: Path, row_group: int, batch_rows: int, batch_size: int
) -> None:
    df = _frame(47, seed=0)
    path = _write(df, tmp_path / "train.parquet", row_group)
    whole = TrainingData.from_frame(pd.read_parquet(path))
    plan = resolve_columns(pq.read_schema(path))
    streamed = StreamedTrainingData.from_parquet(path, plan, batch_rows=batch_rows)
    assert len(streamed) == 47 and streamed.row_shape == (6,)
    assert streamed.content_hash == whole.content_hash
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    np.testing.assert_array_equal(streamed.example_ids, whole.example_ids)
    assert streamed.feature_names == whole.feature_names
    got = list(streamed.iter_batches(batch_size))
    assert [s for s, _, _ in got] == list(range(0, 47, batch_size))
    assert all(len(x) == batch_size for _, x, _ in got[:-1])
    np.testing.assert_array_equal(np.concatenate([x for _, x, _ in got]), whole.features)
    cpu = torch.device("cpu")
    a = list(BatchSource(streamed, batch_size=batch_size, device=cpu, dtype=torch.float32))
    b = list(BatchSource(whole, batch_size=batch_size, device=cpu, dtype=torch.float32))
    assert (
        len(a)
        == len(b)
        == BatchSource(streamed, batch_size=batch_size, device=cpu, dtype=torch.float32).n_batches
    )
    for (sa, xa, ya), (sb, xb, yb) in zip(a, b, strict=True):
        assert sa == sb and torch.equal(xa, xb) and torch.equal(ya, yb)
    np.testing.assert_array_equal(streamed.head(2), whole.features[:2])


def test_stream_of_png_images_and_tokens(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pix = [rng.integers(0, 256, (6, 6), dtype=np.uint8) for _ in range(11)]

    def png(p: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="PNG")
        return buf.getvalue()

    df = pd.DataFrame({"image": [png(p) for p in pix], "label": rng.integers(0, 2, 11)})
    path = _write(df, tmp_path / "img.parquet", 4)
    opts = ColumnOptions(image_scale=255.0)
    whole = TrainingData.from_frame(df, options=opts)
    s = StreamedTrainingData.from_parquet(
        path, resolve_columns(pq.read_schema(path), opts), batch_rows=3
    )
    assert s.row_shape == (1, 6, 6) and s.image_shape == (6, 6)
    assert s.content_hash == whole.content_hash
    np.testing.assert_array_equal(
        np.concatenate([x for _, x, _ in s.iter_batches(5)]), whole.features
    )
    tokens = pd.DataFrame({"tokens": list(rng.integers(0, 9, (10, 4))), "label": [0, 1] * 5})
    tpath = _write(tokens, tmp_path / "tok.parquet", 3)
    t = StreamedTrainingData.from_parquet(
        tpath, resolve_columns(pq.read_schema(tpath)), batch_rows=4
    )
    assert t.dtype == "int64" and t.token_range is not None
    ids = np.stack(tokens["tokens"].to_list())
    assert t.token_range[0] == ids.min() and t.token_range[2] == ids.max()
    assert t.content_hash == TrainingData.from_frame(tokens).content_hash


def test_stream_rejects_bad_rows_with_the_row(tmp_path: Path) -> None:
    df = _frame(20, seed=2)
    df.loc[13, "f2"] = np.inf
    path = _write(df, tmp_path / "inf.parquet", 6)
    with pytest.raises(NonFiniteError, match=r"NaN or inf in row\(s\) \[13\]"):
        StreamedTrainingData.from_parquet(path, resolve_columns(pq.read_schema(path)), batch_rows=4)
    ragged = pd.DataFrame(
        {"tokens": [[1, 2, 3]] * 5 + [[1, 2]] + [[1, 2, 3]] * 2, "label": [0] * 8}
    )
    rpath = _write(ragged, tmp_path / "ragged.parquet", 3)
    with pytest.raises(
        InvalidInputError,
        match=r"row 5 \(example_id '5'\) holds an array of length 2 but row 3 holds 3",
    ):
        StreamedTrainingData.from_parquet(
            rpath, resolve_columns(pq.read_schema(rpath)), batch_rows=3
        )
    with pytest.raises(InvalidInputError, match="`batch_rows` must be an int >= 1, got 0"):
        StreamedTrainingData.from_parquet(path, resolve_columns(pq.read_schema(path)), batch_rows=0)
    csv = tmp_path / "train.csv"
    _frame(5, seed=3).to_csv(csv, index=False)
    from infgate.data.readers import iter_parquet

    with pytest.raises(DataResolutionError, match="only Parquet streams in batches"):
        list(iter_parquet(csv, ["f0"], batch_rows=2))


@pytest.mark.parametrize("input_shape", [None, (12,)])
def test_stream_of_ragged_tokens_pads_like_in_memory(
    tmp_path: Path, input_shape: tuple[int, ...] | None
) -> None:
    """The padded length is the longest sequence of the whole file (found in a first pass),
    not of each batch: streamed batches equal the in-memory read and hash alike."""
    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 10, 23)
    lengths[17] = 11  # the longest row sits in a late batch
    rows = [rng.integers(1, 30, k) for k in lengths]
    df = pd.DataFrame({"tokens": rows, "label": rng.integers(0, 3, 23)})
    path = _write(df, tmp_path / "ragged.parquet", 5)
    opts = ColumnOptions(pad_token_id=0, input_shape=input_shape)
    whole = TrainingData.from_frame(df, options=opts)
    s = StreamedTrainingData.from_parquet(
        path, resolve_columns(pq.read_schema(path), opts), batch_rows=4
    )
    width = input_shape[0] if input_shape else 11
    assert s.row_shape == (width,) and s.plan.input_shape == (width,)
    assert s.dtype == "int64" and s.content_hash == whole.content_hash
    got = np.concatenate([x for _, x, _ in s.iter_batches(6)])
    np.testing.assert_array_equal(got, whole.features)
    assert got.shape == (23, width) and (got[0, lengths[0] :] == 0).all()


def test_stream_of_several_model_inputs_equals_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 8, 19)
    ids = [rng.integers(1, 30, k) for k in lengths]
    df = pd.DataFrame(
        {
            "input_ids": ids,
            "attention_mask": [np.ones(k, dtype=np.int64) for k in lengths],
            "label": rng.integers(0, 3, 19),
        }
    )
    path = _write(df, tmp_path / "two.parquet", 4)
    opts = ColumnOptions(model_inputs=("input_ids", "attention_mask"), pad_token_id=0)
    whole = TrainingData.from_frame(df, options=opts)
    s = StreamedTrainingData.from_parquet(
        path, resolve_columns(pq.read_schema(path), opts), batch_rows=5
    )
    width = int(lengths.max())
    assert s.row_shape == (2, width) and s.content_hash == whole.content_hash
    np.testing.assert_array_equal(
        np.concatenate([x for _, x, _ in s.iter_batches(7)]), whole.features
    )


def test_a_grayscale_image_opening_a_later_batch_streams_like_in_memory(tmp_path: Path) -> None:
    """Batches decode alone: a grayscale PNG as the first row of a later batch is converted
    to the channels earlier batches had, as the in-memory reader converts it."""
    rng = np.random.default_rng(3)

    def png(pixels: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return buf.getvalue()

    imgs = [png(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)) for _ in range(8)]
    imgs[4] = png(rng.integers(0, 256, (5, 5), dtype=np.uint8))  # opens the second batch
    df = pd.DataFrame({"image": imgs, "label": rng.integers(0, 2, 8)})
    path = _write(df, tmp_path / "images.parquet", 4)
    whole = TrainingData.from_frame(pd.read_parquet(path))
    streamed = StreamedTrainingData.from_parquet(
        path, resolve_columns(pq.read_schema(path)), batch_rows=4
    )
    assert streamed.row_shape == (3, 5, 5) and streamed.content_hash == whole.content_hash
    got = np.concatenate([x for _, x, _ in streamed.iter_batches(3)])
    np.testing.assert_array_equal(got, whole.features)


def test_a_folder_of_parquet_parts_reads_like_one_file(tmp_path: Path) -> None:
    """A Spark-style folder (``part-*.parquet``, ``_SUCCESS``, ``.crc`` files) and a
    hive-partitioned one (``pandas.to_parquet(partition_cols=["source"])``) read as one
    dataset: rows in the sorted order of the parts, in memory and streamed alike, the
    partition key a string column (a metadata column the features leave out)."""
    from infgate.data.readers import data_file, read_frame, read_schema
    from infgate.data.streamed import should_stream

    df = _frame(23, seed=4).drop(columns=["source"])
    spark = tmp_path / "spark"
    spark.mkdir()
    for i, start in enumerate(range(0, 23, 8)):
        df.iloc[start : start + 8].to_parquet(spark / f"part-{i:05d}-c000.snappy.parquet")
    (spark / "_SUCCESS").write_text("")
    (spark / ".part-00000-c000.snappy.parquet.crc").write_bytes(b"\0")
    assert data_file(spark) == spark
    whole = TrainingData.from_frame(df)
    plan = resolve_columns(read_schema(spark))
    assert plan.columns == tuple(f"f{i}" for i in range(6))
    streamed = StreamedTrainingData.from_parquet(spark, plan, batch_rows=5)
    assert streamed.content_hash == whole.content_hash
    got = np.concatenate([x for _, x, _ in streamed.iter_batches(4)])
    np.testing.assert_array_equal(got, whole.features)
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    assert should_stream(spark, budget_mb=1e-6)[0] and not should_stream(spark, 1e6)[0]
    pd.testing.assert_frame_equal(read_frame(spark), df)

    hive = tmp_path / "hive"
    parted = df.assign(source=["forum"] * 11 + ["vendor"] * 12)
    parted.to_parquet(hive, partition_cols=["source"], index=False)
    plan = resolve_columns(read_schema(hive))
    assert "source" not in plan.columns and "source" in plan.ignored
    streamed = StreamedTrainingData.from_parquet(hive, plan, batch_rows=4)
    assert streamed.content_hash == whole.content_hash  # forum rows first, as written
    frame = read_frame(hive)
    assert frame["source"].tolist() == parted["source"].tolist()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    df.to_parquet(mixed / "a.parquet")
    df.to_csv(mixed / "b.csv")
    with pytest.raises(DataResolutionError, match="holds 1 parquet and 1 csv files"):
        data_file(mixed)
