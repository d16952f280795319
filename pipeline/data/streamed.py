"""Training data streamed from Parquet in batches, for training sets larger than memory.

:class:`StreamedTrainingData` holds the small columns whole and reads the features batch
by batch (``pyarrow.parquet.ParquetFile.iter_batches``) each time it is iterated; the
influence engine's :class:`~infgate.influence.batches.BatchSource` iterates it like an
in-memory :class:`~infgate.data.training.TrainingData`.

Limits (what still needs a whole column or a whole pass):

* labels and example ids are loaded whole (one int64 and one string per row: small next
  to the features, and every ranking is keyed by them);
* opening the data reads the features once, to check them (NaN/inf, one image/array size,
  the token-id range) and to compute the content hash incrementally; the hash equals the
  in-memory one for the same rows;
* memory is about labels + ids + one Parquet row group (write files with row groups of
  tens of thousands of rows, not one group for the whole file);
* only Parquet streams (CSV is read whole);
* each pass of a back-end (curvature fit, gradients) re-reads and re-decodes the file;
* a few rows by position (the explained suspects, the report's pictures, the stored
  findings' features) come from :meth:`StreamedTrainingData.take`, one more pass that keeps
  only those rows; :meth:`StreamedTrainingData.head` gives the first rows (e.g. to check
  the model fits).

A scan streams when ``data.stream`` says so (:class:`~infgate.config.DataConfig`):
``always``, ``never``, or ``auto`` = when :func:`should_stream` finds the Parquet file has
more than :data:`STREAM_ROWS` rows or its columns decode to more than the memory budget
(``Settings.memory_budget_mb``, ``INFGATE_MEMORY_BUDGET_MB``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from infgate.data.columns import ColumnPlan, with_sequence_length
from infgate.data.decode import decode_features, longest_sequence
from infgate.data.readers import data_file, iter_parquet, read_columns
from infgate.data.training import _as_ids, _check_labels, display_shape, labels_from_column
from infgate.data.validation import token_extremes
from infgate.errors import InvalidInputError, NonFiniteError

__all__ = ["STREAM_ROWS", "StreamedTrainingData", "feature_rows", "should_stream"]

_ID_CHUNK = 100_000

#: ``data.stream: auto`` streams a Parquet file with more rows than this.
STREAM_ROWS = 1_000_000


@dataclass(frozen=True)
class StreamedTrainingData:
    """Labelled training examples whose features stay on disk (Parquet).

    Build with :meth:`from_parquet`. Attributes match :class:`~infgate.data.training.
    TrainingData` where they can (``labels``, ``example_ids``, ``classes``, ``image_shape``,
    ``feature_names``, ``content_hash``); there is no ``features`` array.

    Attributes:
        path: the Parquet file.
        plan: which columns are the features, decoded how.
        labels: ``(n,)`` int64 class indices (loaded whole).
        example_ids: ``(n,)`` string ids (loaded whole).
        row_shape: the shape of one example as the model gets it.
        dtype: ``"float32"`` or ``"int64"``.
        content_hash: sha256 over features, labels and ids (equal to the in-memory one).
        token_range: ``(min, row, max, row)`` of integer features, else ``None``.
        batch_rows: rows read from the file at a time.
    """

    path: Path
    plan: ColumnPlan
    labels: np.ndarray
    example_ids: np.ndarray
    row_shape: tuple[int, ...]
    dtype: str
    content_hash: str
    token_range: tuple[int, int, int, int] | None = None
    batch_rows: int = 65_536
    classes: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] | None = None
    image_shape: tuple[int, int] | None = None
    source_uri: str | None = None
    name: str = "train"

    @classmethod
    def from_parquet(
        cls,
        path: str | Path,
        plan: ColumnPlan,
        *,
        batch_rows: int = 65_536,
        classes: Sequence[str] | None = None,
        image_shape: tuple[int, int] | None = None,
        source_uri: str | None = None,
        name: str = "train",
        min_length: int = 0,
    ) -> StreamedTrainingData:
        """Open ``path``: read labels and ids whole, check and hash the features in one pass.

        ``min_length``: ragged token sequences pad to at least this (the longest evaluation
        sequence, so evaluation rows fit the same length).

        Raises:
            InvalidInputError: bad labels or ids, mixed image/array sizes, an empty file.
            NonFiniteError: NaN or inf in a feature row (the first rows named).
        """
        if not isinstance(batch_rows, int) or batch_rows < 1:
            raise InvalidInputError(f"`batch_rows` must be an int >= 1, got {batch_rows!r}")
        path = data_file(path)
        small = [plan.label_column] + (
            [plan.id_column] if plan.id_column in _schema_names(path) else []
        )
        table = read_columns(path, small)
        n = table.num_rows
        if n == 0:
            raise InvalidInputError(f"{name} is empty (0 rows)")
        raw, _ = labels_from_column(
            table.column(plan.label_column), classes, name=plan.label_column, what=name
        )
        labels = _check_labels(raw, n)
        ids = _as_ids(table.column(plan.id_column).to_pylist() if len(small) == 2 else None, n, "")
        if classes is not None and int(labels.max()) >= len(classes):
            raise InvalidInputError(
                f"labels contain {int(labels.max())} but only {len(classes)} classes are named"
            )
        if plan.pad_token_id is not None and plan.input_shape is None:  # one pass for L
            batches = iter_parquet(path, plan.columns[:1], batch_rows=batch_rows)
            plan = with_sequence_length(
                plan,
                max((longest_sequence(b.column(0)) for b in batches), default=0),
                min_length,
            )
        h = hashlib.sha256()
        row_shape: tuple[int, ...] | None = None
        dtype = "float32"
        lo: tuple[int, int] | None = None
        hi: tuple[int, int] | None = None
        for start, x in _decoded(path, plan, batch_rows, ids, None, name):
            if row_shape is None:
                row_shape, dtype = tuple(x.shape[1:]), str(x.dtype)
                h.update(str((n, *row_shape)).encode())
            _check_finite(x, start, name)
            if x.dtype.kind == "i":
                bmin, bmin_r, bmax, bmax_r = token_extremes(x)
                if lo is None or bmin < lo[0]:
                    lo = (bmin, start + bmin_r)
                if hi is None or bmax > hi[0]:
                    hi = (bmax, start + bmax_r)
            h.update(np.ascontiguousarray(x).tobytes())
        assert row_shape is not None
        h.update(labels.tobytes())
        for i in range(0, n, _ID_CHUNK):  # == "\x1f".join(ids), without one giant string
            if i:
                h.update(b"\x1f")
            h.update("\x1f".join(map(str, ids[i : i + _ID_CHUNK])).encode())
        return cls(
            path=path,
            plan=plan,
            labels=labels,
            example_ids=ids,
            row_shape=row_shape,
            dtype=dtype,
            content_hash=h.hexdigest(),
            token_range=(lo[0], lo[1], hi[0], hi[1]) if lo is not None and hi is not None else None,
            batch_rows=batch_rows,
            classes=tuple(str(c) for c in classes) if classes is not None else None,
            feature_names=plan.columns
            if plan.kind == "columns" and len(row_shape) == 1 and image_shape is None
            else None,
            image_shape=image_shape or display_shape(row_shape, plan),
            source_uri=source_uri,
            name=name,
        )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        """Number of classes: named classes, else max label + 1."""
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    def iter_batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(start, features, labels)`` of exactly ``batch_size`` rows (the last may be
        shorter), in file order, re-reading the file."""
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        pending: list[np.ndarray] = []
        held = 0
        start = 0
        for _, x in _decoded(
            self.path, self.plan, self.batch_rows, self.example_ids, self.row_shape, self.name
        ):
            pending.append(x)
            held += len(x)
            while held >= batch_size:
                block = np.concatenate(pending) if len(pending) > 1 else pending[0]
                out, rest = block[:batch_size], block[batch_size:]
                yield start, out, self.labels[start : start + batch_size]
                start += batch_size
                pending, held = ([rest] if len(rest) else []), len(rest)
        if held:
            block = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield start, block, self.labels[start : start + held]

    def take(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Feature rows at positions ``rows`` (in the order given, repeats allowed), from
        one pass over the file that keeps only those rows.

        Raises:
            InvalidInputError: a position outside ``0..n-1``.
        """
        pos = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if pos.size and (int(pos.min()) < 0 or int(pos.max()) >= n):
            bad = int(pos.max()) if int(pos.max()) >= n else int(pos.min())
            raise InvalidInputError(f"{self.name}: row {bad} is outside 0..{n - 1}")
        dtype = np.int64 if self.dtype.startswith("int") else np.float32
        out = np.empty((pos.size, *self.row_shape), dtype=dtype)
        if not pos.size:
            return out
        order = np.argsort(pos, kind="stable")
        wanted = pos[order]
        for start, x in _decoded(
            self.path, self.plan, self.batch_rows, self.example_ids, self.row_shape, self.name
        ):
            lo, hi = np.searchsorted(wanted, [start, start + len(x)])
            if hi > lo:
                out[order[lo:hi]] = x[wanted[lo:hi] - start]
            if hi == wanted.size:
                break
        return out

    def head(self, k: int = 2) -> np.ndarray:
        """The first ``k`` feature rows (read from the file)."""
        for _, x, _ in self.iter_batches(k):
            return x
        raise InvalidInputError(f"{self.name} is empty (0 rows)")


def _schema_names(path: Path) -> list[str]:
    from infgate.data.readers import read_schema

    return list(read_schema(path).names)


def _decoded(
    path: Path,
    plan: ColumnPlan,
    batch_rows: int,
    ids: np.ndarray | None,
    expect: tuple[int, ...] | None,
    what: str,
) -> Iterator[tuple[int, np.ndarray]]:
    start = 0
    raw: tuple[int, ...] | None = None
    for batch in iter_parquet(path, plan.columns, batch_rows=batch_rows):
        x, shape = decode_features(batch, plan, first_row=start, ids=ids, expect=raw, what=what)
        raw = raw or shape
        if expect is not None and tuple(x.shape[1:]) != expect:
            raise InvalidInputError(
                f"{what}: {path.name} changed while streaming (rows from {start} have shape "
                f"{tuple(x.shape[1:])}, not {expect}); reopen the data"
            )
        yield start, x
        start += len(x)


def _check_finite(x: np.ndarray, start: int, what: str) -> None:
    if x.dtype.kind != "f":
        return
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        rows = (np.flatnonzero(bad)[:5] + start).tolist()
        raise NonFiniteError(f"{what} features have NaN or inf in row(s) {rows}")


def feature_rows(data: object, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """Feature rows at positions ``rows`` of in-memory or streamed training data."""
    if isinstance(data, StreamedTrainingData):
        return data.take(rows)
    return np.asarray(data.features)[np.asarray(rows, dtype=np.int64)]  # type: ignore[attr-defined]


def should_stream(path: str | Path, budget_mb: float) -> tuple[bool, str]:
    """Whether ``data.stream: auto`` streams the training file at ``path``, and why.

    Streams a Parquet file with more than :data:`STREAM_ROWS` rows, or whose columns take
    more than ``budget_mb`` MiB uncompressed (the Parquet footer's sizes: read without
    touching the rows; encoded images decode to more than that, so this is a lower bound of
    the in-memory size). CSV is always read whole.
    """
    from infgate.data.readers import is_parquet, parquet_parts

    path = data_file(path)
    if not is_parquet(path):
        return False, f"{path.name} is CSV (only Parquet streams)"
    import pyarrow.parquet as pq

    rows = size = 0
    for part in parquet_parts(path) if path.is_dir() else [path]:
        meta = pq.ParquetFile(part).metadata
        rows += int(meta.num_rows)
        size += sum(
            meta.row_group(i).column(j).total_uncompressed_size
            for i in range(meta.num_row_groups)
            for j in range(meta.num_columns)
        )
    mb = size / 2**20
    if rows > STREAM_ROWS:
        return True, f"{rows:,} rows > {STREAM_ROWS:,}"
    if mb > budget_mb:
        return True, f"{mb:,.0f} MiB uncompressed > the {budget_mb:,.0f} MiB memory budget"
    return False, f"{rows:,} rows, {mb:,.0f} MiB uncompressed: fits the {budget_mb:,.0f} MiB budget"
