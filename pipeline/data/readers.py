"""Read stored datasets: a Parquet or CSV file (or a folder holding exactly one), whole or
in batches.

Parquet files stream (``pyarrow.parquet.ParquetFile.iter_batches``) so a training set
larger than memory never loads whole; CSV files are read whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from infgate.errors import DataResolutionError

__all__ = [
    "data_file",
    "is_parquet",
    "iter_parquet",
    "read_columns",
    "read_frame",
    "read_schema",
    "read_table",
]

_PARQUET = {".parquet", ".pq"}


def data_file(path: str | Path) -> Path:
    """The one ``.parquet``/``.csv`` file at ``path`` (a file, or a folder holding one).

    Raises:
        DataResolutionError: a folder with zero or several files, or another suffix.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted([*path.glob("*.parquet"), *path.glob("*.csv")])
        if len(files) != 1:
            raise DataResolutionError(
                f"{path} holds {len(files)} parquet/csv files, need exactly one"
            )
        path = files[0]
    if path.suffix.lower() not in {*_PARQUET, ".csv"}:
        raise DataResolutionError(f"training data must be .parquet or .csv, got {path.name!r}")
    return path


def is_parquet(path: Path) -> bool:
    """Whether ``path`` is read as Parquet."""
    return path.suffix.lower() in _PARQUET


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The whole file (or some of its columns) as an Arrow table."""
    path = data_file(path)
    if is_parquet(path):
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    frame = pd.read_csv(path, usecols=list(columns) if columns is not None else None)
    return pa.Table.from_pandas(frame, preserve_index=False)


def read_frame(path: str | Path) -> pd.DataFrame:
    """The whole file as a DataFrame (the gate and the reports read frames)."""
    path = data_file(path)
    if is_parquet(path):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def read_schema(path: str | Path) -> pa.Schema:
    """The file's Arrow schema without reading its rows (CSV: its first rows' types)."""
    path = data_file(path)
    if is_parquet(path):
        return pq.read_schema(path)
    return pa.Schema.from_pandas(pd.read_csv(path, nrows=1000), preserve_index=False)


def read_columns(path: str | Path, columns: Sequence[str]) -> pa.Table:
    """Only ``columns`` (labels, ids: small next to the features), read whole."""
    return read_table(path, columns)


def iter_parquet(
    path: str | Path, columns: Sequence[str], *, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_rows`` rows of ``columns``, in file order."""
    path = data_file(path)
    if not is_parquet(path):
        raise DataResolutionError(
            f"only Parquet streams in batches; {path.name!r} is CSV: convert it to Parquet "
            f"or read it whole"
        )
    # pre_buffer=False: pyarrow's default pre-buffering keeps every column chunk read so
    # far (the whole file by the end); without it memory stays about one row group
    with pq.ParquetFile(path, pre_buffer=False) as pf:
        yield from pf.iter_batches(batch_size=batch_rows, columns=list(columns))
