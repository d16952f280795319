"""Streaming access to a dataset in batches, with the checks every back-end relies on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from infgate.data.streamed import StreamedTrainingData
from infgate.data.training import EvalData, TrainingData
from infgate.errors import DatasetMismatchError, InvalidInputError, NonFiniteError
from torch.utils.data import DataLoader, Dataset

__all__ = ["BatchSource", "DatasetLike"]

DatasetLike = (
    Dataset[Any]
    | tuple[torch.Tensor, torch.Tensor]
    | list[torch.Tensor]
    | TrainingData
    | StreamedTrainingData
    | EvalData
)


class BatchSource:
    """Re-iterable ``(start, x, y)`` batches in dataset order, on ``device``.

    Accepts a torch ``Dataset`` of ``(x, y)`` pairs, a ``(features, labels)`` pair of tensors
    (or arrays), a :class:`~infgate.data.training.TrainingData`, or a
    :class:`~infgate.data.streamed.StreamedTrainingData` (read from Parquet batch by batch).
    Checks once that the data is not empty and that lengths agree; checks every batch for
    NaN/inf features. Float features become ``dtype``; integer ones (token ids) stay int64.
    """

    def __init__(
        self,
        dataset: DatasetLike,
        *,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        what: str = "dataset",
    ) -> None:
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.what = what
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self._dataset: Dataset[Any] | None = None
        self._stream: StreamedTrainingData | None = None
        if isinstance(dataset, StreamedTrainingData):
            self._stream = dataset
        elif isinstance(dataset, TrainingData):
            self._tensors = dataset.as_tensors()
        elif isinstance(dataset, EvalData):
            if dataset.labels is None:
                raise InvalidInputError(f"{what} has no labels; gradients of the loss need them")
            self._tensors = (torch.as_tensor(dataset.features), torch.as_tensor(dataset.labels))
        elif isinstance(dataset, tuple | list) and len(dataset) == 2:
            x, y = (torch.as_tensor(v) for v in dataset)
            if x.shape[0] != y.shape[0]:
                raise DatasetMismatchError(
                    f"{what}: features has {x.shape[0]:,} rows but labels has {y.shape[0]:,}"
                )
            self._tensors = (x, y)
        elif isinstance(dataset, Dataset):
            self._dataset = dataset
        else:
            raise InvalidInputError(
                f"{what} must be a torch Dataset of (x, y), a (features, labels) pair or "
                f"TrainingData; got {type(dataset).__name__}"
            )
        if len(self) == 0:
            raise InvalidInputError(f"{what} is empty (0 examples)")

    def __len__(self) -> int:
        if self._tensors is not None:
            return int(self._tensors[0].shape[0])
        if self._stream is not None:
            return len(self._stream)
        assert self._dataset is not None
        return len(self._dataset)  # type: ignore[arg-type]

    def _prepare(self, start: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.to(self.device, non_blocking=True)
        if x.is_floating_point():
            x = x.to(self.dtype)
            finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
            if not bool(finite.all()):
                rows = (torch.nonzero(~finite).flatten()[:5] + start).tolist()
                raise NonFiniteError(f"{self.what} has NaN or inf features in example(s) {rows}")
        y = y.to(self.device, non_blocking=True)
        if y.is_floating_point():
            y = y.to(self.dtype)
        return x, y

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        if self._tensors is not None:
            xs, ys = self._tensors
            for start in range(0, len(self), self.batch_size):
                stop = start + self.batch_size
                x, y = self._prepare(start, xs[start:stop], ys[start:stop])
                yield start, x, y
            return
        if self._stream is not None:
            for start, xb, yb in self._stream.iter_batches(self.batch_size):
                x, y = self._prepare(start, torch.as_tensor(xb), torch.as_tensor(yb))
                yield start, x, y
            return
        loader = DataLoader(self._dataset, batch_size=self.batch_size, shuffle=False)  # type: ignore[arg-type]
        start = 0
        for batch in loader:
            if not isinstance(batch, list | tuple) or len(batch) != 2:
                raise InvalidInputError(f"{self.what} items must be (x, y) pairs")
            x, y = self._prepare(start, torch.as_tensor(batch[0]), torch.as_tensor(batch[1]))
            yield start, x, y
            start += x.shape[0]

    @property
    def n_batches(self) -> int:
        return -(-len(self) // self.batch_size)
