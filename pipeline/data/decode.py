"""Turn the columns a :class:`~infgate.data.columns.ColumnPlan` names into model input.

Works on an Arrow table or one record batch, so the in-memory and the streamed readers
decode alike: numeric columns side by side, encoded PNG/JPEG bytes through Pillow as
``(C, H, W)``, list columns as fixed-size arrays (nested lists keep their dimensions). Mixed
image or array sizes, nulls and undecodable bytes fail with the first offending row.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from infgate.data.columns import FIX_PAD, FIX_SHAPE, ColumnPlan
from infgate.errors import DatasetMismatchError, InvalidInputError, NonFiniteError

__all__ = ["decode_features", "fit_shape", "longest_sequence"]

Batch: TypeAlias = Any  # a pyarrow Table or RecordBatch (pyarrow ships no type stubs)


def _row_name(i: int, ids: np.ndarray | None) -> str:
    return f"row {i}" + (f" (example_id {str(ids[i])!r})" if ids is not None else "")


def decode_features(
    batch: Batch,
    plan: ColumnPlan,
    *,
    first_row: int = 0,
    ids: np.ndarray | None = None,
    expect: tuple[int, ...] | None = None,
    what: str = "training data",
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Decode ``batch`` per ``plan``; returns ``(features, decoded row shape)``.

    Args:
        batch: the rows (a table or a record batch holding the plan's columns).
        plan: the resolved columns.
        first_row: index of the batch's first row in the whole dataset (for messages).
        ids: example ids of the whole dataset (for messages), or ``None``.
        expect: the row shape earlier batches decoded to; a different one is an error.
        what: the data's name in messages.

    Returns:
        ``features`` of shape ``(n, *plan.input_shape)`` (or the decoded shape when the plan
        has none) in ``plan.dtype``, and the decoded per-row shape before any reshape.

    Raises:
        InvalidInputError: mixed image/array sizes, nulls, undecodable images.
        NonFiniteError: missing values in numeric columns.
        DatasetMismatchError: the rows do not fit ``plan.input_shape``.
    """
    if plan.kind == "columns":
        arr = _columns(batch, plan, what)
    elif plan.kind == "image":
        arr = _images(batch.column(plan.columns[0]), plan, first_row, ids, what, expect)
    elif plan.n_inputs > 1:
        arr = _inputs(batch, plan, first_row, ids, what)
    else:
        arr = _arrays(batch.column(plan.columns[0]), plan, first_row, ids, what)
    raw = tuple(int(d) for d in arr.shape[1:])
    if expect is not None and raw != expect:
        raise InvalidInputError(
            f"{what} column {plan.columns[0]!r}: rows from {first_row} on have shape {raw} but "
            f"earlier rows have {expect}; store every example at one size"
        )
    if plan.image_scale is not None and plan.kind != "columns" and arr.dtype.kind == "f":
        arr = arr / np.float32(plan.image_scale)
    if not arr.flags.writeable:  # zero-copy Arrow buffers; torch wants writable memory
        arr = arr.copy()
    if plan.n_inputs > 1:  # each input already fit to input_shape
        return arr, raw
    return fit_shape(arr, plan, what=what), raw


def _inputs(
    batch: Batch, plan: ColumnPlan, first_row: int, ids: np.ndarray | None, what: str
) -> np.ndarray:
    """The model's inputs, one token column each, decoded (and padded: the first with the
    pad id, the others with 0) to one shape and stacked along dimension 1."""
    lengths = [_lengths(batch.column(name)) for name in plan.columns]
    for name, lens in zip(plan.columns[1:], lengths[1:], strict=True):
        differ = np.flatnonzero(lens != lengths[0])
        if len(differ):
            i = int(differ[0])
            raise InvalidInputError(
                f"{what}: {_row_name(first_row + i, ids)} has {int(lengths[0][i])} values in "
                f"{plan.columns[0]!r} but {int(lens[i])} in {name!r}; every input of a row "
                f"must have one length"
            )
    parts: list[np.ndarray] = []
    for j, name in enumerate(plan.columns):
        pad = None if plan.pad_token_id is None else (plan.pad_token_id if j == 0 else 0)
        one = dataclasses.replace(plan, columns=(name,), n_inputs=1, pad_token_id=pad)
        parts.append(
            fit_shape(_arrays(batch.column(name), one, first_row, ids, what), one, what=what)
        )
    return np.stack(parts, axis=1)


def _lengths(col: Any) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.asarray(pc.list_value_length(arr).fill_null(-1), dtype=np.int64)


def fit_shape(arr: np.ndarray, plan: ColumnPlan, *, what: str = "training data") -> np.ndarray:
    """``arr`` reshaped to ``(n, *plan.input_shape)``; one-line mismatch error otherwise."""
    if plan.input_shape is None or tuple(arr.shape[1:]) == plan.input_shape:
        return arr
    per_row = int(np.prod(arr.shape[1:]))
    if per_row != int(np.prod(plan.input_shape)):
        raise DatasetMismatchError(
            f"{what} {plan.describe()} give rows of shape {tuple(arr.shape[1:])} ({per_row} "
            f"values), which do not fit the model's input {(-1, *plan.input_shape)} (from "
            f"{plan.shape_origin}); {plan.fix_hint()}"
        )
    return arr.reshape(arr.shape[0], *plan.input_shape)


def _columns(batch: Batch, plan: ColumnPlan, what: str) -> np.ndarray:
    nulls = [c for c in plan.columns if batch.column(c).null_count]
    if nulls:
        raise NonFiniteError(f"{what} features have missing values in columns {nulls[:5]}")
    dtype = np.dtype(plan.dtype)
    out = np.empty((batch.num_rows, len(plan.columns)), dtype=dtype)
    for j, c in enumerate(plan.columns):
        col = np.asarray(batch.column(c).to_numpy(zero_copy_only=False))
        if dtype.kind == "i" and col.dtype.kind == "f":
            col = _exact_ints(col, f"{what} token column {c!r}")
        out[:, j] = col
    return out


def _exact_ints(values: np.ndarray, what: str) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.all() or np.any(np.mod(values[finite], 1) != 0):
        bad = int(np.flatnonzero(~finite | (np.mod(np.nan_to_num(values), 1) != 0))[0])
        raise InvalidInputError(f"{what} must hold integer ids; row {bad} has {values[bad]!r}")
    return values.astype(np.int64)


_MODE_OF = {1: "L", 3: "RGB", 4: "RGBA"}


def _image_channels(plan: ColumnPlan, expect: tuple[int, ...] | None) -> tuple[int | None, bool]:
    """``(channels, from the model)``: the channel count images are converted to, from the
    plan's ``(C, H, W)`` input shape (the model's), else from earlier batches' rows."""
    shape = plan.input_shape
    if shape is not None and len(shape) == 3 and int(shape[0]) in _MODE_OF:
        return int(shape[0]), True
    if expect is not None and len(expect) == 3:
        return int(expect[0]), False
    return None, False


def _images(
    col: Any,
    plan: ColumnPlan,
    first_row: int,
    ids: np.ndarray | None,
    what: str,
    expect: tuple[int, ...] | None = None,
) -> np.ndarray:
    """PNG/JPEG bytes as ``(C, H, W)``. Palette, CMYK and YCbCr images become L/RGB(A).
    Images of fewer channels than the model's input (a grayscale JPEG among colour ones)
    are converted up to it; down (colour to gray, alpha dropped) only when the model's
    input shape asks for it, never on the first row's word alone."""
    from PIL import Image, UnidentifiedImageError

    name = plan.columns[0]
    values = col.to_pylist()
    out: list[np.ndarray] = []
    first: tuple[int, ...] | None = None
    want, from_model = _image_channels(plan, expect)
    for i, raw in enumerate(values):
        row = _row_name(first_row + i, ids)
        if raw is None:
            raise InvalidInputError(f"{what} image column {name!r}: {row} is empty (null)")
        try:
            with Image.open(io.BytesIO(raw)) as opened:
                img: Image.Image = opened
                if img.mode in ("P", "1", "LA", "PA"):
                    img = img.convert("RGBA" if "A" in img.mode else "L")
                elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    img = img.convert("RGB")
                target = want if want is not None else (first[0] if first else None)
                bands = len(img.getbands())
                if (
                    target in _MODE_OF
                    and bands != target
                    and img.mode in _MODE_OF.values()
                    and (from_model or bands < target)
                ):
                    img = img.convert(_MODE_OF[target])
                pix = np.asarray(img)
        except (UnidentifiedImageError, OSError) as e:
            raise InvalidInputError(
                f"{what} image column {name!r}: {row} is not a PNG/JPEG image Pillow can read ({e})"
            ) from e
        chw = pix[None] if pix.ndim == 2 else np.moveaxis(pix, -1, 0)
        if first is None:
            first = chw.shape
        elif chw.shape != first:
            fix = (
                "resize the images to one size before the scan"
                if chw.shape[1:] != first[1:]
                else f"set {FIX_SHAPE} to the model's (C, H, W) to convert them to C channels"
            )
            raise InvalidInputError(
                f"{what} image column {name!r}: {row} is {_size(chw.shape)} but row {first_row} "
                f"is {_size(first)}; {fix}"
            )
        out.append(chw)
    if not out:
        return np.empty((0, 0), dtype=plan.dtype)
    return np.stack(out).astype(plan.dtype, copy=False)


def _size(chw: tuple[int, ...]) -> str:
    c, h, w = chw
    return f"{h}x{w}" + (f" with {c} channels" if c != 1 else "")


def _arrays(
    col: Any, plan: ColumnPlan, first_row: int, ids: np.ndarray | None, what: str
) -> np.ndarray:
    name = plan.columns[0]
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if arr.null_count:
        bad = int(np.flatnonzero(np.asarray(arr.is_null()))[0])
        raise InvalidInputError(
            f"{what} column {name!r}: {_row_name(first_row + bad, ids)} is null"
        )
    if plan.pad_token_id is not None:
        return _padded(arr, plan, first_row, ids, what)
    dims: list[int] = []
    rows_per_item = 1  # how many top-level rows each element at this depth spans
    while isinstance(arr.type, pa.ListType | pa.LargeListType | pa.FixedSizeListType):
        lens = np.asarray(pc.list_value_length(arr).fill_null(-1))
        if len(lens) and (lens != lens[0]).any():
            item = int(np.flatnonzero(lens != lens[0])[0])
            bad = first_row + item // rows_per_item
            raise InvalidInputError(
                f"{what} column {name!r}: {_row_name(bad, ids)} holds an array of length "
                f"{int(lens[item])} but row {first_row} holds {int(lens[0])}; store every "
                f"example at one size, or pad token sequences with {FIX_PAD}"
            )
        dims.append(int(lens[0]) if len(lens) else 0)
        rows_per_item *= dims[-1] or 1
        arr = arr.flatten()
    values = np.asarray(arr.to_numpy(zero_copy_only=False))
    if values.dtype == object or values.dtype.kind not in "iufb":
        raise InvalidInputError(f"{what} column {name!r} must hold numbers, got {arr.type}")
    out = values.reshape(n, *dims)
    if plan.dtype == "int64" and out.dtype.kind == "f":
        return _exact_ints(out.reshape(n, -1), f"{what} token column {name!r}").reshape(out.shape)
    return out.astype(plan.dtype, copy=False)


def longest_sequence(col: Any) -> int:
    """The most items any row of a list column holds (0 for an empty column)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not len(arr):
        return 0
    top = pc.max(pc.list_value_length(arr)).as_py()
    return int(top or 0)


def _padded(
    arr: Any, plan: ColumnPlan, first_row: int, ids: np.ndarray | None, what: str
) -> np.ndarray:
    """Token sequences of any length, padded at the end with ``plan.pad_token_id`` to
    ``plan.input_shape[0]`` (else to the batch's longest)."""
    name = plan.columns[0]
    if not isinstance(arr.type, pa.ListType | pa.LargeListType | pa.FixedSizeListType) or (
        isinstance(arr.type.value_type, pa.ListType | pa.LargeListType | pa.FixedSizeListType)
    ):
        raise InvalidInputError(
            f"{what} column {name!r}: {FIX_PAD} pads flat lists of token ids, got {arr.type}"
        )
    lens = np.asarray(pc.list_value_length(arr), dtype=np.int64)
    n = len(lens)
    length = plan.input_shape[0] if plan.input_shape else int(lens.max(initial=0))
    if n and lens.min() < 1:
        bad = int(np.flatnonzero(lens < 1)[0])
        raise InvalidInputError(
            f"{what} column {name!r}: {_row_name(first_row + bad, ids)} holds no tokens"
        )
    if n and lens.max() > length:
        bad = int(np.flatnonzero(lens > length)[0])
        raise InvalidInputError(
            f"{what} column {name!r}: {_row_name(first_row + bad, ids)} holds {int(lens[bad])} "
            f"tokens, more than the {length} every sequence is padded to (from "
            f"{plan.shape_origin or 'the longest row'}); truncate when tokenizing, or set "
            f"{FIX_SHAPE} to the model's longest input"
        )
    flat = arr.flatten()
    values = np.asarray(flat.to_numpy(zero_copy_only=False))
    if values.dtype.kind == "b":  # a boolean attention mask
        values = values.astype(np.int64)
    if values.dtype == object or values.dtype.kind not in "iu":
        if values.dtype.kind == "f":
            values = _exact_ints(values, f"{what} token column {name!r}")
        else:
            raise InvalidInputError(f"{what} column {name!r} must hold token ids, got {arr.type}")
    out = np.full((n, length), plan.pad_token_id, dtype=np.int64)
    out[np.arange(length)[None, :] < lens[:, None]] = values
    return out
