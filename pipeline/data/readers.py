"""Read stored datasets: a Parquet or CSV file, a folder holding exactly one, or a folder of
Parquet part files (a Spark / Dask / ``pandas.to_parquet(partition_cols=...)`` dataset),
whole or in batches.

Parquet streams (``pyarrow.parquet.ParquetFile.iter_batches``; a folder part by part, in
the sorted order of the parts' paths) so a training set larger than memory never loads
whole; CSV files are read whole. In a folder, names starting with ``_`` or ``.``
(``_SUCCESS``, ``.crc`` files) are skipped and ``key=value`` directories become columns
(hive partitioning).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from infgate.errors import DataResolutionError

__all__ = [
    "data_file",
    "is_parquet",
    "iter_parquet",
    "parquet_dataset",
    "parquet_parts",
    "read_columns",
    "read_frame",
    "read_schema",
    "read_table",
]

_PARQUET = {".parquet", ".pq"}


def _hidden(part: Path, root: Path) -> bool:
    return any(p.startswith(("_", ".")) for p in part.relative_to(root).parts)


def parquet_parts(folder: Path) -> list[Path]:
    """The Parquet part files under ``folder`` (any depth, ``_``/``.`` names skipped),
    sorted by path: the dataset's row order."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in _PARQUET and not _hidden(p, folder)
    )


def data_file(path: str | Path) -> Path:
    """The ``.parquet``/``.csv`` file at ``path``: a file, a folder holding one, or a folder
    of Parquet part files (returned as the folder: a dataset).

    Raises:
        DataResolutionError: a folder with no data file, several CSV files, or CSV and
            Parquet mixed; another suffix.
    """
    path = Path(path)
    if path.is_dir():
        parts = parquet_parts(path)
        csvs = sorted(p for p in path.glob("*.csv") if not _hidden(p, path))
        if len(parts) > 1 and not csvs:
            return path
        files = [*parts, *csvs]
        if len(files) != 1:
            raise DataResolutionError(
                f"{path} holds {len(parts)} parquet and {len(csvs)} csv files: need one csv "
                f"file, or parquet part files only"
            )
        path = files[0]
    if path.suffix.lower() not in {*_PARQUET, ".csv"}:
        raise DataResolutionError(f"training data must be .parquet or .csv, got {path.name!r}")
    return path


def is_parquet(path: Path) -> bool:
    """Whether ``path`` is read as Parquet (a Parquet file or a folder of parts)."""
    return path.is_dir() or path.suffix.lower() in _PARQUET


def parquet_dataset(folder: Path) -> pads.Dataset:
    """The folder's parts as one Arrow dataset, in :func:`parquet_parts` order; ``key=value``
    directories are columns of plain (not dictionary) type."""
    parts = parquet_parts(folder)
    return pads.dataset(
        [str(p) for p in parts],
        format="parquet",
        partitioning=pads.HivePartitioning.discover(infer_dictionary=False),
        partition_base_dir=str(folder),
    )


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The whole file (or some of its columns) as an Arrow table."""
    path = data_file(path)
    wanted = list(columns) if columns is not None else None
    if path.is_dir():
        return parquet_dataset(path).to_table(columns=wanted)
    if is_parquet(path):
        return pq.read_table(path, columns=wanted)
    frame = pd.read_csv(path, usecols=list(columns) if columns is not None else None)
    return pa.Table.from_pandas(frame, preserve_index=False)


def read_frame(path: str | Path) -> pd.DataFrame:
    """The whole file as a DataFrame (the gate and the reports read frames)."""
    path = data_file(path)
    if path.is_dir():
        return read_table(path).to_pandas()
    if is_parquet(path):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def read_schema(path: str | Path) -> pa.Schema:
    """The file's Arrow schema without reading its rows (CSV: its first rows' types)."""
    path = data_file(path)
    if path.is_dir():
        return parquet_dataset(path).schema
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
    if path.is_dir():
        dataset = parquet_dataset(path)
        options = pads.ParquetFragmentScanOptions(pre_buffer=False)
        for fragment in dataset.get_fragments():  # one part after another, in order
            yield from fragment.to_batches(
                schema=dataset.schema,
                columns=list(columns),
                batch_size=batch_rows,
                fragment_scan_options=options,
                use_threads=False,
            )
        return
    with pq.ParquetFile(path, pre_buffer=False) as pf:
        yield from pf.iter_batches(batch_size=batch_rows, columns=list(columns))
