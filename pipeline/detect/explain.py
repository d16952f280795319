"""Why was an example flagged: the training examples that most support or oppose its label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from infgate.data.streamed import StreamedTrainingData
from infgate.data.training import EvalData, TrainingData
from infgate.detect._inputs import dataset_tensors, example_ids
from infgate.errors import InvalidInputError
from infgate.influence import InfluenceScorer
from infgate.influence.batches import DatasetLike
from torch import nn

__all__ = ["EXPLAIN_COLUMNS", "explain"]

EXPLAIN_COLUMNS = ["example_id", "train_example_id", "influence", "role", "position"]


def _resolve_examples(
    scorer: InfluenceScorer,
    train: DatasetLike,
    train_ids: np.ndarray,
    examples: Any,
    width: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray | None]:
    """Features, labels (given, else predicted), ids, and training row index (or None)."""
    if (
        isinstance(examples, Sequence)
        and not isinstance(examples, tuple | str)
        and all(isinstance(e, str | int | np.integer) for e in examples)
    ):
        if len(examples) == 0:
            raise InvalidInputError("examples is empty: name at least one training example")
        pos = {str(v): i for i, v in enumerate(train_ids)}
        missing = [str(e) for e in examples if str(e) not in pos]
        if missing:
            raise InvalidInputError(f"examples not found among training example_ids: {missing[:5]}")
        rows = np.array([pos[str(e)] for e in examples])
        if isinstance(train, StreamedTrainingData):  # only these rows leave the file
            x = torch.as_tensor(train.take(rows))
            return x, torch.as_tensor(train.labels[rows]), train_ids[rows], rows
        xs, ys = dataset_tensors(train)
        return xs[rows], ys[rows], train_ids[rows], rows
    if isinstance(examples, TrainingData | EvalData):
        x = torch.as_tensor(examples.features)
        y = None if examples.labels is None else torch.as_tensor(examples.labels)
        ids = examples.example_ids.astype(str)
    elif isinstance(examples, tuple) and len(examples) == 2:
        x, y = torch.as_tensor(np.asarray(examples[0])), torch.as_tensor(np.asarray(examples[1]))
        ids = np.array([f"eval{i}" for i in range(len(x))], dtype=object)
    else:
        x = torch.as_tensor(np.asarray(examples))
        y = None
        ids = np.array([f"eval{i}" for i in range(len(x))], dtype=object)
    if x.shape[0] == 0:
        raise InvalidInputError("examples is empty (0 rows)")
    if tuple(x.shape[1:]) != tuple(width):
        raise InvalidInputError(
            f"examples have rows of shape {tuple(x.shape[1:])} but the training data has "
            f"{tuple(width)}"
        )
    if y is None:  # explain the current prediction
        x_dev = x.to(scorer.device, scorer.engine.dtype)
        y = scorer.engine.outputs(x_dev).argmax(dim=1).cpu()
    return x, y, ids, None


def _row_shape(train: DatasetLike) -> tuple[int, ...]:
    """One example's shape, without reading every feature row."""
    if isinstance(train, StreamedTrainingData):
        return tuple(train.row_shape)
    if isinstance(train, TrainingData):
        return tuple(train.features.shape[1:])
    return tuple(dataset_tensors(train)[0].shape[1:])


def explain(
    scorer_or_model: InfluenceScorer | nn.Module,
    train: DatasetLike,
    examples: Any,
    *,
    top: int = 5,
    damping: float | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Training examples that most support and most oppose each example's label.

    Uses train -> example influence ``I(j, e) = -g_e^T (H + lambda I)^{-1} g_j`` (Koh & Liang
    2017, Eq. 2). Negative: up-weighting training example j lowers e's loss, so j
    *supports* e's current label; positive: j *opposes* it. An example with a label uses that
    label (a training example's given label, or an evaluation pair's label); features
    alone use the model's prediction. A training example is never listed as its own
    supporter.

    Args:
        scorer_or_model: a fitted :class:`InfluenceScorer` on ``train`` (reused), or a model.
        train: the training data the scorer/model was fitted on.
        examples: training ``example_id`` values (list of str/int), ``TrainingData`` /
            ``EvalData``, a ``(features, labels)`` pair, or features alone.
        top: how many supporters and opposers per example.
        damping: lambda when a model is passed.
        progress: show progress bars.

    Returns:
        ``example_id, train_example_id, influence, role, position`` with ``role`` in
        ``{"supporting", "opposing"}`` and ``position`` 1 = strongest.

    Raises:
        InvalidInputError: empty ``examples``, unknown example ids, ``top < 1``, features of
            the wrong width or labels the model cannot output.
    """
    if not isinstance(top, int) or top < 1:
        raise InvalidInputError(f"top must be a positive int, got {top!r}")
    scorer = (
        scorer_or_model
        if isinstance(scorer_or_model, InfluenceScorer)
        else InfluenceScorer(scorer_or_model, train, damping=damping, progress=progress)
    )
    n_train = len(scorer.train)
    train_ids = example_ids(train, n_train)
    width = _row_shape(train)
    x, y, ids, rows = _resolve_examples(scorer, train, train_ids, examples, width)
    values = scorer.influence((x, y)).values  # (n_train, n_examples)
    records: list[dict[str, Any]] = []
    k = min(top, n_train)
    for j in range(values.shape[1]):
        col = values[:, j].copy()
        for role, sign in (("supporting", 1.0), ("opposing", -1.0)):
            keyed = sign * col  # ascending = most negative influence first for supporters
            if rows is not None:
                keyed[rows[j]] = np.inf
            order = np.argsort(keyed, kind="stable")[:k]
            for pos, i in enumerate(order, start=1):
                records.append(
                    {
                        "example_id": str(ids[j]),
                        "train_example_id": str(train_ids[i]),
                        "influence": float(col[i]),
                        "role": role,
                        "position": pos,
                    }
                )
    return pd.DataFrame.from_records(records, columns=EXPLAIN_COLUMNS)
