"""Input handling shared by the detectors: tensors from any dataset form, eval parsing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from infgate.data.streamed import StreamedTrainingData
from infgate.data.training import EvalData, TrainingData
from infgate.errors import DatasetMismatchError, InvalidInputError, NonFiniteError
from infgate.influence.batches import BatchSource, DatasetLike

__all__ = ["dataset_tensors", "example_ids", "parse_eval"]


def dataset_tensors(data: DatasetLike, *, what: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """All features and labels of ``data`` as CPU tensors (small and medium data only)."""
    if isinstance(data, TrainingData):
        return data.as_tensors()
    src = BatchSource(
        data, batch_size=4096, device=torch.device("cpu"), dtype=torch.float32, what=what
    )
    xs, ys = zip(*[(x, y) for _, x, y in src], strict=True)
    return torch.cat(xs), torch.cat(ys)


def example_ids(data: Any, n: int, prefix: str = "") -> np.ndarray:
    """Stable ids: ``TrainingData``/``StreamedTrainingData``/``EvalData`` ids, else
    ``prefix + row number``."""
    if isinstance(data, TrainingData | StreamedTrainingData | EvalData):
        return np.asarray(data.example_ids).astype(str)
    return np.array([f"{prefix}{i}" for i in range(n)], dtype=object)


def _to_tensor(values: Any, what: str) -> torch.Tensor:
    if isinstance(values, pd.DataFrame | pd.Series):
        values = values.to_numpy()
    try:
        t = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be numeric (tensor, array or DataFrame)") from exc
    return t


def parse_eval(
    eval_data: Any, *, width: tuple[int, ...], n_classes: int
) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
    """``(features, labels or None, ids)`` from features alone, a pair, or ``EvalData``.

    Raises:
        InvalidInputError: empty, non-numeric or non-finite features, labels outside
            ``0..n_classes-1``.
        DatasetMismatchError: rows of the wrong shape, or label/feature length mismatch.
    """
    labels: torch.Tensor | None = None
    if isinstance(eval_data, EvalData | TrainingData):
        x = torch.as_tensor(eval_data.features)
        labels = None if eval_data.labels is None else torch.as_tensor(eval_data.labels)
    elif isinstance(eval_data, tuple | list) and len(eval_data) == 2:
        x = _to_tensor(eval_data[0], "eval features")
        labels = _to_tensor(eval_data[1], "eval labels")
    else:
        x = _to_tensor(eval_data, "eval features")
    if x.ndim == 0 or x.shape[0] == 0:
        raise InvalidInputError("the evaluation set is empty (0 rows)")
    if not (x.is_floating_point() or x.dtype in (torch.int64, torch.int32, torch.uint8)):
        raise InvalidInputError(f"eval features must be numeric, got {x.dtype}")
    # token ids stay int64 (an embedding takes them), everything else is float32
    x = x.long() if x.dtype in (torch.int64, torch.int32) else x.to(torch.float32)
    if tuple(x.shape[1:]) != tuple(width):
        raise DatasetMismatchError(
            f"eval features have rows of shape {tuple(x.shape[1:])} but the model was trained "
            f"on rows of shape {tuple(width)}"
        )
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        raise NonFiniteError(
            f"eval features have NaN or inf in rows {torch.nonzero(bad)[:5].flatten().tolist()}"
        )
    if labels is not None:
        labels = labels.reshape(-1)
        if labels.shape[0] != x.shape[0]:
            raise DatasetMismatchError(
                f"eval features has {x.shape[0]:,} rows but eval labels has {labels.shape[0]:,}"
            )
        if labels.is_floating_point():
            if not bool((labels == labels.round()).all()):
                raise InvalidInputError("eval labels must be integer class indices")
            labels = labels.long()
        labels = labels.long()
        if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
            bad_label = int(labels.max()) if int(labels.max()) >= n_classes else int(labels.min())
            raise InvalidInputError(
                f"eval labels contain {bad_label} but the model outputs {n_classes} classes "
                f"(valid labels are 0..{n_classes - 1})"
            )
    return x, labels, example_ids(eval_data, x.shape[0], prefix="eval")
