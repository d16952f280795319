"""Which columns of a stored dataset are the model's input, and in what shape and dtype.

Feature columns and the per-example tensor shape come from, first that is given:

1. an explicit option (:class:`ColumnOptions`, e.g. from the CLI) or a model-version tag
   (``infgate.feature_columns``, ``infgate.input_shape``, ``infgate.metadata_columns``,
   ``infgate.token_columns``; merged by ``infgate.registry.datasets``),
2. the model's MLflow signature (:class:`ModelInputSpec`: the column names of a
   column-based signature, the tensor shape and dtype of a tensor-based one),
3. otherwise every numeric column but the label, the id (``example_id``), the true-label
   column and declared metadata; an encoded-image (binary) column, or a single list
   column, when the table has no numeric feature columns.

Columns that are not used are named in the log (INFO). The result is a :class:`ColumnPlan`
that the decoders in :mod:`infgate.data.decode` apply to a table or to streamed batches.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
from infgate.errors import DataResolutionError, InvalidInputError

__all__ = [
    "ColumnOptions",
    "ColumnPlan",
    "ModelInputSpec",
    "column_kind",
    "resolve_columns",
    "with_sequence_length",
]

log = logging.getLogger(__name__)

PlanKind = Literal["columns", "image", "array"]
FIX_COLUMNS = "option `feature_columns` or model-version tag `infgate.feature_columns`"
FIX_SHAPE = "option `input_shape` or model-version tag `infgate.input_shape` (e.g. '1x8x8')"
FIX_PAD = "option `pad_token_id` or model-version tag `infgate.pad_token_id`"
FIX_INPUTS = "option `model_inputs` or model-version tag `infgate.model_inputs`"


def _names(value: Sequence[str] | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise InvalidInputError(
            f"`{what}` must be a list of column names, got the string {value!r}"
        )
    names = tuple(str(v) for v in value)
    if len(set(names)) != len(names):
        raise InvalidInputError(f"`{what}` names a column twice: {list(names)}")
    return names


@dataclass(frozen=True)
class ColumnOptions:
    """How to read a stored dataset (every field optional; ``None`` = decide from the data).

    Attributes:
        feature_columns: the model's input columns, in order.
        input_shape: the per-example shape the model takes, without the batch dimension,
            e.g. ``(1, 8, 8)``; a leading ``-1`` (MLflow's batch dimension) is dropped.
        metadata_columns: columns kept out of the features (besides id and labels).
        token_columns: integer columns (or one list column) holding token ids: read as
            int64 for an embedding, and they are the feature columns.
        label_column: the (possibly noisy) class-index column.
        id_column: the stable example id column.
        true_label_column: known clean labels (a benchmark), never a feature.
        image_scale: divide decoded pixels (and array images) by this, e.g. ``255``;
            ``None`` keeps the values as stored.
        input_dtype: ``"auto"`` (int64 for tokens, else float32), or force one.
        pad_token_id: the id the model pads token sequences with: one list column of token
            sequences of different lengths is padded at the end with it, to ``input_shape``
            (the model's longest input) or else to the longest training sequence. The model
            must mask that id itself (e.g. ``nn.Embedding(padding_idx=...)`` and a key
            padding mask computed from it).
        model_inputs: for a model that takes several inputs (``forward(input_ids,
            attention_mask)``): the list columns of integers that are its inputs, in the
            order of its arguments. Each row's sequences must have one length; padded, the
            first column takes ``pad_token_id`` and the others 0 (an attention mask's
            "not a token", token type 0). The model gets them stacked, see
            :class:`infgate.influence.SplitInputs`.
    """

    feature_columns: tuple[str, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    metadata_columns: tuple[str, ...] = ()
    token_columns: tuple[str, ...] | None = None
    label_column: str = "label"
    id_column: str = "example_id"
    true_label_column: str | None = "true_label"
    image_scale: float | None = None
    input_dtype: Literal["auto", "float32", "int64"] = "auto"
    pad_token_id: int | None = None
    model_inputs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_columns", _names(self.feature_columns, "feature_columns"))
        object.__setattr__(self, "model_inputs", _names(self.model_inputs, "model_inputs"))
        if self.model_inputs is not None and (
            len(self.model_inputs) < 2 or len(set(self.model_inputs)) != len(self.model_inputs)
        ):
            raise InvalidInputError(
                f"`model_inputs` names two or more distinct columns, got {list(self.model_inputs)}"
            )
        if self.model_inputs is not None and (self.feature_columns or self.token_columns):
            raise InvalidInputError(
                "`model_inputs` are the feature columns: leave `feature_columns` and "
                "`token_columns` unset"
            )
        object.__setattr__(self, "token_columns", _names(self.token_columns, "token_columns"))
        object.__setattr__(
            self, "metadata_columns", _names(self.metadata_columns, "metadata_columns") or ()
        )
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", _row_shape(self.input_shape, "input_shape"))
        if (
            self.feature_columns is not None
            and self.token_columns is not None
            and self.feature_columns != self.token_columns
        ):
            raise InvalidInputError(
                f"`token_columns` {list(self.token_columns)} and `feature_columns` "
                f"{list(self.feature_columns)} disagree; token columns are the feature columns"
            )
        if self.image_scale is not None and not self.image_scale > 0:
            raise InvalidInputError(f"`image_scale` must be > 0 or None, got {self.image_scale!r}")
        if self.input_dtype not in ("auto", "float32", "int64"):
            raise InvalidInputError(
                f"`input_dtype` must be 'auto', 'float32' or 'int64', got {self.input_dtype!r}"
            )
        if not self.label_column or not self.id_column:
            raise InvalidInputError("`label_column` and `id_column` must be non-empty names")
        pad = self.pad_token_id
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 0):
            raise InvalidInputError(f"`pad_token_id` must be an int >= 0 or None, got {pad!r}")


def _row_shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    dims = tuple(int(v) for v in shape)
    if dims and dims[0] == -1:
        dims = dims[1:]
    if not dims or any(d < 1 for d in dims):
        raise InvalidInputError(
            f"`{what}` must be positive sizes per example (a leading -1 is the batch), got "
            f"{tuple(shape)}"
        )
    return dims


@dataclass(frozen=True)
class ModelInputSpec:
    """What the model's MLflow signature says about its input (no MLflow types here).

    Attributes:
        columns: input column names of a column-based signature.
        shape: tensor shape of a tensor-based signature, batch dimension included
            (e.g. ``(-1, 1, 8, 8)``).
        dtype: numpy dtype name of a tensor-based signature (``"float32"``, ``"int64"``).
        inputs: how many input tensors the signature has (``shape`` and ``dtype`` are the
            first's); ``input_names`` their names where the signature names them.
    """

    columns: tuple[str, ...] | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    inputs: int = 1
    input_names: tuple[str, ...] | None = None

    @property
    def row_shape(self) -> tuple[int, ...] | None:
        """The per-example shape (``shape`` without the batch dimension); ``None`` if unknown
        or if any per-example dimension is variable (-1)."""
        if self.shape is None or len(self.shape) < 2 or any(d < 1 for d in self.shape[1:]):
            return None
        return tuple(self.shape[1:])


@dataclass(frozen=True)
class ColumnPlan:
    """The resolved input: which columns, read how, shaped how.

    Attributes:
        kind: ``"columns"`` (one value per column), ``"image"`` (one column of encoded
            PNG/JPEG bytes) or ``"array"`` (one list column of fixed-size arrays or tokens).
        columns: the feature columns, in order.
        dtype: ``"float32"`` or ``"int64"`` (token ids for an embedding).
        input_shape: per-example shape to give the model, or ``None`` = as decoded.
        origin: where the columns came from (named in mismatch messages).
        shape_origin: where ``input_shape`` came from.
        ignored: columns neither features, labels, ids nor declared metadata.
        label_column: the label column.
        id_column: the id column.
        true_label_column: the clean-label column, if the table has one.
        metadata_columns: declared metadata present in the table.
        image_scale: pixel divisor, or ``None``.
        pad_token_id: pad id of ragged token sequences (``kind="array"``, int64), or
            ``None``; sequences are padded to ``input_shape[0]``
            (:func:`with_sequence_length` sets it from the training data when nothing
            else did).
        pad_origin: where ``pad_token_id`` came from.
        n_inputs: how many model inputs ``columns`` are (``model_inputs``): each decoded as
            a token column of ``input_shape``, stacked along dimension 1; 1 = one input.
    """

    kind: PlanKind
    columns: tuple[str, ...]
    dtype: Literal["float32", "int64"]
    input_shape: tuple[int, ...] | None
    origin: str
    shape_origin: str | None
    ignored: tuple[str, ...]
    label_column: str
    id_column: str
    true_label_column: str | None
    metadata_columns: tuple[str, ...]
    image_scale: float | None = None
    pad_token_id: int | None = None
    pad_origin: str | None = None
    n_inputs: int = 1

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (stored with the dataset version, so a later reader decodes
        the file exactly as the scan did); :meth:`from_dict` reads it back."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> ColumnPlan:
        """Inverse of :meth:`to_dict`.

        Raises:
            InvalidInputError: ``d`` is not a stored plan.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            kw = dict(d)
            for key in ("columns", "ignored", "metadata_columns"):
                kw[key] = tuple(str(c) for c in kw[key])  # type: ignore[attr-defined]
            if kw.get("input_shape") is not None:
                kw["input_shape"] = tuple(int(v) for v in kw["input_shape"])  # type: ignore[attr-defined]
            return cls(**{k: v for k, v in kw.items() if k in names})  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"not a stored column plan ({exc}): {dict(d)!r:.200}") from None

    def describe(self) -> str:
        """The columns in a few words, for one-line messages."""
        cols = list(self.columns)
        shown = (
            ", ".join(cols) if len(cols) <= 4 else f"{cols[0]}..{cols[-1]} ({len(cols)} columns)"
        )
        padded = (
            f", padded with id {self.pad_token_id} (from {self.pad_origin})"
            if self.pad_token_id is not None
            else ""
        )
        return f"columns [{shown}] (from {self.origin}){padded}"

    def fix_hint(self) -> str:
        """Which option fixes a mismatch."""
        return f"set {FIX_COLUMNS}, or {FIX_SHAPE}"


def column_kind(t: pa.DataType) -> str:
    """``"int"``, ``"float"``, ``"bool"``, ``"binary"``, ``"list"`` or ``"other"``."""
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "binary"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "list"
    return "other"


def _list_leaf(t: pa.DataType) -> pa.DataType:
    while column_kind(t) == "list":
        t = t.value_type
    return t


def resolve_columns(
    schema: pa.Schema,
    options: ColumnOptions | None = None,
    spec: ModelInputSpec | None = None,
    *,
    origins: Mapping[str, str] | None = None,
    what: str = "training data",
) -> ColumnPlan:
    """Decide the feature columns, dtype and shape of a table (see the module docstring).

    Args:
        schema: the table's Arrow schema (a Parquet file's, or ``pa.Schema.from_pandas``).
        options: explicit options / tags, already merged.
        spec: what the model signature says, if anything.
        origins: where each option came from, for messages (e.g. ``{"feature_columns":
            "tag infgate.feature_columns"}``); default ``"option <name>"``.
        what: the data's name in messages.

    Raises:
        DataResolutionError: no label column, named columns missing, no usable feature
            column, or columns of a kind that cannot be an input.
    """
    opts = options or ColumnOptions()
    named = dict(origins or {})
    names = list(schema.names)
    kinds = {n: column_kind(schema.field(n).type) for n in names}
    if opts.label_column not in kinds:
        raise DataResolutionError(
            f"{what} has no label column {opts.label_column!r}; columns: {names[:10]}"
        )
    true_col = opts.true_label_column if opts.true_label_column in kinds else None
    reserved = {opts.label_column, opts.id_column, *(c for c in [true_col] if c)}
    metadata = tuple(c for c in opts.metadata_columns if c in kinds)
    reserved |= set(metadata)
    declared = opts.model_inputs or opts.token_columns or opts.feature_columns
    if opts.model_inputs is None and spec is not None and spec.inputs > 1:
        if spec.input_names and all(n in kinds for n in spec.input_names):
            opts = dataclasses.replace(opts, model_inputs=spec.input_names)
            named["model_inputs"] = "the model signature"
        else:
            raise DataResolutionError(
                f"{what}: the model's signature takes {spec.inputs} input tensors; name the "
                f"columns that are its inputs, in order, with {FIX_INPUTS}"
            )
    if opts.model_inputs is not None:
        cols, origin = list(opts.model_inputs), named.get("model_inputs", "option model_inputs")
    elif declared is not None:
        field = "token_columns" if opts.token_columns else "feature_columns"
        cols, origin = list(declared), named.get(field, f"option {field}")
    elif spec is not None and spec.columns:
        cols, origin = list(spec.columns), "the model signature"
    else:
        cols, origin = _default_columns(kinds, reserved), "numeric columns (default)"
    missing = [c for c in cols if c not in kinds]
    if missing:
        raise DataResolutionError(
            f"{what} lacks the feature columns {missing[:5]} named by {origin}; "
            f"columns: {names[:10]}; set {FIX_COLUMNS}"
        )
    if not cols:
        raise DataResolutionError(
            f"{what} has no numeric, image or array column to use as features "
            f"(columns: {names[:10]}); set {FIX_COLUMNS}"
        )
    clash = sorted(set(cols) & {opts.label_column, opts.id_column})
    if clash:
        raise DataResolutionError(f"{what}: {clash} cannot be both a feature and label/id")
    if opts.model_inputs is not None:
        kind, dtype = _inputs_kind(cols, kinds, schema, origin, what)
    else:
        kind, dtype = _kind_and_dtype(cols, kinds, schema, opts, spec, origin, what)
    shape = opts.input_shape
    shape_origin = named.get("input_shape", "option input_shape") if shape else None
    if shape is None and spec is not None and spec.row_shape is not None:
        shape, shape_origin = spec.row_shape, "the model signature"
    pad, pad_origin = opts.pad_token_id, named.get("pad_token_id", "option pad_token_id")
    if pad is not None:
        if kind != "array" or dtype != "int64":
            raise DataResolutionError(
                f"{what}: {FIX_PAD} ({pad_origin}) pads one list column of token ids, but "
                f"{origin} gives {'a list of floats' if kind == 'array' else kind} {cols[:5]}"
            )
        if shape is not None and len(shape) != 1:
            raise DataResolutionError(
                f"{what}: padded token sequences are 1-D, but the input shape {shape} (from "
                f"{shape_origin}) is not; set {FIX_SHAPE} to the model's longest input"
            )
    ignored = tuple(c for c in names if c not in cols and c not in reserved)
    if ignored:
        log.info("%s: not features, ignored: %s", what, ", ".join(ignored))
    return ColumnPlan(
        kind=kind,
        columns=tuple(cols),
        dtype=dtype,
        input_shape=shape,
        origin=origin,
        shape_origin=shape_origin,
        ignored=ignored,
        label_column=opts.label_column,
        id_column=opts.id_column,
        true_label_column=true_col,
        metadata_columns=metadata,
        image_scale=opts.image_scale,
        pad_token_id=pad,
        pad_origin=pad_origin if pad is not None else None,
        n_inputs=len(cols) if opts.model_inputs is not None else 1,
    )


def _inputs_kind(
    cols: list[str], kinds: dict[str, str], schema: pa.Schema, origin: str, what: str
) -> tuple[PlanKind, Literal["float32", "int64"]]:
    """Several model inputs: each a list column of integers (token ids, masks, types)."""

    def integers(c: str) -> bool:
        return kinds[c] == "list" and column_kind(_list_leaf(schema.field(c).type)) in (
            "int",
            "bool",
        )

    bad = {c: str(schema.field(c).type) for c in cols if not integers(c)}
    if bad:
        raise DataResolutionError(
            f"{what}: the model inputs from {origin} must be list columns of integers (token "
            f"ids, attention masks); {bad} are not"
        )
    return "array", "int64"


def with_sequence_length(plan: ColumnPlan, longest: int, elsewhere: int = 0) -> ColumnPlan:
    """``plan`` with ragged token sequences padded to ``longest`` (the longest training
    sequence), or to ``elsewhere`` (the longest evaluation sequence) when that is longer,
    when nothing set ``input_shape``; unchanged otherwise."""
    if plan.pad_token_id is None or plan.input_shape is not None:
        return plan
    if longest < 1:
        raise DataResolutionError(f"column {plan.columns[0]!r} holds no tokens in any row")
    origin = "the longest training sequence"
    if elsewhere > longest:
        longest, origin = elsewhere, "the longest evaluation sequence"
    return dataclasses.replace(plan, input_shape=(int(longest),), shape_origin=origin)


def _default_columns(kinds: dict[str, str], reserved: set[str]) -> list[str]:
    free = {n: k for n, k in kinds.items() if n not in reserved}
    binary = [n for n, k in free.items() if k == "binary"]
    if len(binary) == 1:
        return binary
    numeric = [n for n, k in free.items() if k in ("int", "float")]
    if numeric:
        return numeric
    lists = [n for n, k in free.items() if k == "list"]
    return lists if len(lists) == 1 else []


def _kind_and_dtype(
    cols: list[str],
    kinds: dict[str, str],
    schema: pa.Schema,
    opts: ColumnOptions,
    spec: ModelInputSpec | None,
    origin: str,
    what: str,
) -> tuple[PlanKind, Literal["float32", "int64"]]:
    col_kinds = [kinds[c] for c in cols]
    spec_int = (
        spec is not None and spec.dtype is not None and spec.dtype.startswith(("int", "uint"))
    )
    spec_float = spec is not None and spec.dtype is not None and spec.dtype.startswith("float")
    if any(k in ("binary", "list") for k in col_kinds):
        if len(cols) != 1:
            raise DataResolutionError(
                f"{what}: image or array columns must be the only feature column; {origin} "
                f"gives {cols[:5]}; set {FIX_COLUMNS}"
            )
        if col_kinds[0] == "binary":
            return "image", "float32" if opts.input_dtype != "int64" else "int64"
        leaf = _list_leaf(schema.field(cols[0]).type)
        if column_kind(leaf) not in ("int", "float", "bool"):
            raise DataResolutionError(
                f"{what}: list column {cols[0]!r} holds {leaf}, not numbers; set {FIX_COLUMNS}"
            )
        is_int = column_kind(leaf) == "int" and not pa.types.is_uint8(leaf)  # uint8 = pixels
        tokens = opts.token_columns is not None or spec_int or (is_int and not spec_float)
        return "array", _dtype(opts, tokens)
    bad = [c for c, k in zip(cols, col_kinds, strict=True) if k not in ("int", "float", "bool")]
    if bad:
        types = {c: str(schema.field(c).type) for c in bad[:3]}
        raise DataResolutionError(
            f"{what}: feature columns from {origin} are not numeric: {types}; "
            f"leave them out with {FIX_COLUMNS} or declare them in `infgate.metadata_columns`"
        )
    if opts.token_columns is not None:
        non_int = [c for c in cols if kinds[c] != "int"]
        if non_int:
            raise DataResolutionError(
                f"{what}: token columns must hold integers; {non_int[:5]} do not"
            )
    return "columns", _dtype(opts, opts.token_columns is not None or spec_int)


def _dtype(opts: ColumnOptions, tokens: bool) -> Literal["float32", "int64"]:
    if opts.input_dtype != "auto":
        return opts.input_dtype
    return "int64" if tokens else "float32"
