"""TrainingData / EvalData: features, labels, stable example ids and a content hash.

A dataset version is identified by its content hash, so a scan of the same data is
recognised whatever file or registry path it came from. ``example_id`` stays stable across
dataset versions (a relabel changes the label, not the id).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from infgate.data.columns import (
    ColumnOptions,
    ColumnPlan,
    ModelInputSpec,
    resolve_columns,
    with_sequence_length,
)
from infgate.data.decode import decode_features, longest_sequence
from infgate.errors import DatasetMismatchError, InvalidInputError, NonFiniteError

__all__ = [
    "EvalData",
    "TrainingData",
    "display_shape",
    "flip_labels",
    "frame_table",
    "labels_from_column",
]

log = logging.getLogger(__name__)


def _as_ids(example_ids: Sequence[Any] | np.ndarray | None, n: int, prefix: str) -> np.ndarray:
    if example_ids is None:
        return np.array([f"{prefix}{i}" for i in range(n)], dtype=object)
    ids = np.asarray([str(v) for v in example_ids], dtype=object)
    if len(ids) != n:
        raise DatasetMismatchError(
            f"example_ids has {len(ids):,} entries but features has {n:,} rows"
        )
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:3].tolist()
        raise DatasetMismatchError(f"example_ids must be unique; repeated: {dup}")
    return ids


def _check_features(features: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(features)
    if arr.ndim < 2:
        raise InvalidInputError(f"{what} must be 2-D or more (rows first), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InvalidInputError(f"{what} is empty (0 rows)")
    if not np.issubdtype(arr.dtype, np.number):
        raise InvalidInputError(f"{what} must be numeric, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise NonFiniteError(f"{what} has NaN or inf in {int(bad.sum())} row(s), first: {rows}")
    if np.issubdtype(arr.dtype, np.integer):  # token ids for an embedding stay integers
        return arr.astype(np.int64, copy=False)
    return arr.astype(np.float32, copy=False)


def _check_labels(labels: Any, n: int, what: str = "labels") -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise InvalidInputError(f"{what} must be 1-D, got shape {lab.shape}")
    if len(lab) != n:
        raise DatasetMismatchError(f"features has {n:,} rows but {what} has {len(lab):,}")
    if not np.issubdtype(lab.dtype, np.integer):
        if np.issubdtype(lab.dtype, np.floating) and np.all(np.mod(lab, 1) == 0):
            lab = lab.astype(np.int64)
        else:
            raise InvalidInputError(f"{what} must be integer class indices, got dtype {lab.dtype}")
    if (lab < 0).any():
        raise InvalidInputError(f"{what} must be >= 0, found {int(lab.min())}")
    return lab.astype(np.int64, copy=False)


def labels_from_column(
    column: pa.ChunkedArray | pa.Array,
    classes: Sequence[str] | None,
    *,
    name: str = "label",
    what: str = "labels",
) -> tuple[np.ndarray, bool]:
    """``(indices, were_names)``: a table's label column as class indices.

    Integer (or integral float) columns are the indices. String and dictionary
    (categorical) columns hold class names, mapped through ``classes`` (the model's output
    order, from the version's ``infgate.classes`` tag); without it, or for a name not in it,
    the column is refused naming what to do. Missing labels are refused naming the rows.
    """
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if col.null_count:
        rows = np.flatnonzero(np.asarray(col.is_null().to_numpy(zero_copy_only=False)))
        raise InvalidInputError(
            f"{what}: the label column {name!r} is missing in {col.null_count:,} row(s), "
            f"first at positions {rows[:5].tolist()}"
        )
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return np.array(col.to_numpy(zero_copy_only=False)), False
    values = np.asarray(col.to_pylist(), dtype=object)
    if not classes:
        raise InvalidInputError(
            f"{what}: the label column {name!r} holds class names (e.g. {values[0]!r}); tag the "
            f"model version `infgate.classes` with the names in the order of the model's "
            f"outputs (a JSON list) to map them to indices, or store class indices"
        )
    index = {str(c): i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        raise InvalidInputError(
            f"{what}: the label column {name!r} holds {unknown[:5]}, not among the model's "
            f"classes {list(index)[:10]} (tag `infgate.classes`)"
        )
    return np.fromiter((index[str(v)] for v in values), np.int64, len(values)), True


@dataclass(frozen=True)
class TrainingData:
    """Labelled training examples.

    Attributes:
        features: ``(n, ...)`` array, rows are examples: float32, or int64 when given
            integers (token ids for an embedding keep their dtype).
        labels: ``(n,)`` int64 class indices.
        example_ids: ``(n,)`` stable string ids (``"0"``, ``"1"``... when not given).
        classes: class names, index = label; ``None`` means ``"0".."C-1"``.
        feature_names: column names for tabular data.
        image_shape: ``(h, w)`` when each row is an image, so people see a picture.
        source_uri: where the data came from (file, MLflow dataset source).
        name: a short human name.
        label_names: the source stored class names, not indices: :meth:`to_frame` (the
            corrected version's file) writes names back.
    """

    features: np.ndarray
    labels: np.ndarray
    example_ids: np.ndarray = None  # type: ignore[assignment]  # filled in __post_init__
    classes: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] | None = None
    image_shape: tuple[int, int] | None = None
    source_uri: str | None = None
    name: str = "train"
    label_names: bool = False

    def __post_init__(self) -> None:
        feats = _check_features(self.features, "features")
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "labels", _check_labels(self.labels, len(feats)))
        object.__setattr__(self, "example_ids", _as_ids(self.example_ids, len(feats), ""))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
            if int(self.labels.max()) >= len(self.classes):
                raise InvalidInputError(
                    f"labels contain {int(self.labels.max())} but only {len(self.classes)} "
                    f"classes are named"
                )
        if self.feature_names is not None:
            object.__setattr__(self, "feature_names", tuple(self.feature_names))
            if feats.ndim != 2 or len(self.feature_names) != feats.shape[1]:
                raise DatasetMismatchError(
                    f"feature_names has {len(self.feature_names)} names but features has "
                    f"shape {feats.shape}"
                )
        if self.image_shape is not None and int(np.prod(self.image_shape)) != int(
            np.prod(feats.shape[1:])
        ):
            raise DatasetMismatchError(
                f"image_shape {self.image_shape} does not fit rows of shape {feats.shape[1:]}"
            )

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_classes(self) -> int:
        """Number of classes: named classes, else max label + 1."""
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    @property
    def content_hash(self) -> str:
        """sha256 over features, labels and ids: the dataset version's identity."""
        h = hashlib.sha256()
        h.update(str(self.features.shape).encode())
        h.update(np.ascontiguousarray(self.features).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update("\x1f".join(map(str, self.example_ids)).encode())
        return h.hexdigest()

    def as_tensors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels as tensors, ready for the influence engine.

        Float features become ``dtype``; integer features (token ids) stay int64.
        """
        x = torch.as_tensor(self.features)
        return (x.to(dtype) if x.is_floating_point() else x), torch.as_tensor(self.labels)

    def with_labels(self, labels: np.ndarray, *, keep: np.ndarray | None = None) -> TrainingData:
        """A new version with ``labels`` (and only rows where ``keep`` is true)."""
        keep_mask = np.ones(len(self), bool) if keep is None else np.asarray(keep, bool)
        return TrainingData(
            features=self.features[keep_mask],
            labels=np.asarray(labels)[keep_mask],
            example_ids=self.example_ids[keep_mask],
            classes=self.classes,
            feature_names=self.feature_names,
            image_shape=self.image_shape,
            source_uri=None,
            name=self.name,
            label_names=self.label_names,
        )

    def to_frame(self, *, label_column: str = "label") -> pd.DataFrame:
        """One row per example: ``example_id``, feature columns, ``label`` (class names
        when the source stored names)."""
        flat = self.features.reshape(len(self), -1)
        names = self.feature_names or tuple(f"f{i}" for i in range(flat.shape[1]))
        df = pd.DataFrame(flat, columns=list(names))
        df.insert(0, "example_id", self.example_ids.astype(str))
        if self.label_names and self.classes:
            df[label_column] = np.asarray(self.classes, dtype=object)[self.labels]
        else:
            df[label_column] = self.labels
        return df

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        *,
        label_column: str = "label",
        id_column: str | None = "example_id",
        feature_columns: Sequence[str] | None = None,
        true_label_column: str | None = "true_label",
        metadata_columns: Sequence[str] = (),
        options: ColumnOptions | None = None,
        spec: ModelInputSpec | None = None,
        classes: Sequence[str] | None = None,
        image_shape: tuple[int, int] | None = None,
        source_uri: str | None = None,
        name: str = "train",
    ) -> TrainingData:
        """Build from a DataFrame; the columns are chosen as :mod:`infgate.data.columns` says.

        By default the features are every numeric column but the label, the id, the
        true-label column and ``metadata_columns``; other columns are ignored (and named in
        the log). ``options`` replaces the column arguments when given.

        Raises:
            InvalidInputError: ``options`` given together with column arguments.
            DataResolutionError: no label column, or named columns missing.
        """
        if options is None:
            options = ColumnOptions(
                feature_columns=tuple(feature_columns) if feature_columns is not None else None,
                metadata_columns=tuple(metadata_columns),
                label_column=label_column,
                id_column=id_column or "example_id",
                true_label_column=true_label_column,
            )
        elif feature_columns is not None or label_column != "label" or tuple(metadata_columns):
            raise InvalidInputError(
                "pass the columns either in `options` or as arguments, not both"
            )
        table = frame_table(df)
        plan = resolve_columns(table.schema, options, spec, what=name)
        if plan.pad_token_id is not None:
            plan = with_sequence_length(plan, longest_sequence(table.column(plan.columns[0])))
        read_ids = id_column is not None
        return cls.from_table(
            table,
            plan,
            classes=classes,
            image_shape=image_shape,
            source_uri=source_uri,
            name=name,
            read_ids=read_ids,
        )

    @classmethod
    def from_table(
        cls,
        table: pa.Table,
        plan: ColumnPlan,
        *,
        classes: Sequence[str] | None = None,
        image_shape: tuple[int, int] | None = None,
        source_uri: str | None = None,
        name: str = "train",
        read_ids: bool = True,
    ) -> TrainingData:
        """Build from an Arrow table and a resolved :class:`~infgate.data.columns.ColumnPlan`."""
        ids = (
            np.asarray(table.column(plan.id_column).to_pylist(), dtype=object)
            if read_ids and plan.id_column in table.column_names
            else None
        )
        feats, _ = decode_features(table, plan, ids=ids, what=name)
        if image_shape is None:
            image_shape = display_shape(feats.shape[1:], plan)
        labels, as_names = labels_from_column(
            table.column(plan.label_column), classes, name=plan.label_column, what=name
        )
        return cls(
            features=feats,
            labels=labels,
            label_names=as_names,
            example_ids=ids,  # type: ignore[arg-type]
            classes=tuple(classes) if classes is not None else None,
            feature_names=plan.columns
            if plan.kind == "columns" and feats.ndim == 2 and image_shape is None
            else None,
            image_shape=image_shape,
            source_uri=source_uri,
            name=name,
        )


def display_shape(row_shape: tuple[int, ...], plan: ColumnPlan) -> tuple[int, int] | None:
    """``(h, w)`` to draw a row as a grey picture: single-channel images only."""
    if len(row_shape) == 2 or (len(row_shape) == 3 and row_shape[0] == 1):
        return int(row_shape[-2]), int(row_shape[-1])
    return None


def frame_table(df: pd.DataFrame) -> pa.Table:
    """``df`` as an Arrow table; columns Arrow cannot type (mixed objects) are left out."""
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        arrays, names = [], []
        for c in df.columns:
            try:
                arrays.append(pa.array(df[c], from_pandas=True))
                names.append(str(c))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                log.info("column %r holds values of mixed types; ignored", c)
        return pa.Table.from_arrays(arrays, names=names)


@dataclass(frozen=True)
class EvalData:
    """Evaluation or production examples; labels are optional (production has none)."""

    features: np.ndarray
    labels: np.ndarray | None = None
    example_ids: np.ndarray = None  # type: ignore[assignment]  # filled in __post_init__
    name: str = "eval"

    def __post_init__(self) -> None:
        feats = _check_features(self.features, f"{self.name} features")
        object.__setattr__(self, "features", feats)
        if self.labels is not None:
            object.__setattr__(
                self, "labels", _check_labels(self.labels, len(feats), f"{self.name} labels")
            )
        object.__setattr__(self, "example_ids", _as_ids(self.example_ids, len(feats), "e"))

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @classmethod
    def from_table(
        cls,
        table: pa.Table,
        plan: ColumnPlan,
        *,
        name: str = "eval",
        classes: Sequence[str] | None = None,
    ) -> EvalData:
        """Evaluation rows read with the training data's plan (labels used when present;
        class names mapped through ``classes``, as for the training data)."""
        missing = [c for c in plan.columns if c not in table.column_names]
        if missing:
            raise DatasetMismatchError(
                f"{name} data lacks the feature columns {missing[:5]} the training data uses "
                f"({plan.describe()})"
            )
        ids = (
            np.asarray(table.column(plan.id_column).to_pylist(), dtype=object)
            if plan.id_column in table.column_names
            else None
        )
        feats, _ = decode_features(table, plan, ids=ids, what=f"{name} data")
        labels = (
            labels_from_column(
                table.column(plan.label_column), classes, name=plan.label_column, what=name
            )[0]
            if plan.label_column in table.column_names
            else None
        )
        return cls(feats, labels, ids, name=name)  # type: ignore[arg-type]


def flip_labels(
    labels: np.ndarray, rate: float, n_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * n)`` labels to a uniformly chosen *other* class.

    Returns:
        ``(noisy_labels, flipped_mask)``.
    """
    if not 0.0 <= rate < 1.0:
        raise InvalidInputError(f"rate must be in [0, 1), got {rate}")
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    idx = rng.choice(n, size=round(rate * n), replace=False)
    noisy = labels.copy()
    shift = rng.integers(1, n_classes, size=len(idx))
    noisy[idx] = (labels[idx] + shift) % n_classes
    mask = np.zeros(n, bool)
    mask[idx] = True
    return noisy, mask
