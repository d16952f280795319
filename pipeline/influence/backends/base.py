"""Curvature back-ends: one base class, one registry (``@register_backend``).

A back-end is fitted once on the training data (the curvature of the MEAN training loss
plus damping), then answers two questions for any batch of per-example gradients ``G``:

* ``quadratic(G)``: ``g^T (H + lambda I)^{-1} g`` per row (self-influence), and
* ``solve(G)``: ``(H + lambda I)^{-1} g`` per row (for train -> test influence).

Back-ends that never form whole-model per-example gradients (EK-FAC) override
``self_influence`` instead.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from infgate.errors import InvalidInputError
from infgate.influence.batches import BatchSource
from infgate.influence.gradients import GradientEngine
from tqdm.auto import tqdm

__all__ = [
    "BACKENDS",
    "Backend",
    "ColumnSolverBackend",
    "available_backends",
    "get_backend",
    "register_backend",
    "stream_blocks",
]

BACKENDS: dict[str, type[Backend]] = {}
_B = TypeVar("_B", bound="type[Backend]")


def register_backend(name: str) -> Callable[[_B], _B]:
    """Class decorator: make a back-end selectable as ``method=name``."""

    def deco(cls: _B) -> _B:
        if name in BACKENDS:
            raise ValueError(f"back-end {name!r} is already registered by {BACKENDS[name]}")
        cls.name = name
        BACKENDS[name] = cls
        return cls

    return deco


def available_backends() -> list[str]:
    """Names accepted by ``method=``."""
    return sorted(BACKENDS)


def get_backend(name: str, **options: Any) -> Backend:
    """Instantiate the back-end registered as ``name`` with its options."""
    if name not in BACKENDS:
        raise InvalidInputError(
            f"method must be one of {available_backends()} or 'auto', got {name!r}"
        )
    return BACKENDS[name](**options)


class Backend(abc.ABC):
    """A fitted (or fittable) approximation of ``(H + lambda I)^{-1}``."""

    name: ClassVar[str] = "?"
    damping: float

    @abc.abstractmethod
    def fit(
        self,
        engine: GradientEngine,
        data: BatchSource,
        *,
        damping: float | None,
        progress: bool,
    ) -> None:
        """Fit the curvature of the mean training loss; resolve and store ``self.damping``."""

    @abc.abstractmethod
    def quadratic(self, grads: torch.Tensor) -> torch.Tensor:
        """``(B,)`` values ``g^T (H + lambda I)^{-1} g`` for ``grads`` of shape ``(B, P)``."""

    @abc.abstractmethod
    def solve(self, grads: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` rows ``(H + lambda I)^{-1} g``."""

    def describe(self) -> dict[str, Any]:
        """Settings actually used, for logging next to the scores."""
        return {"method": self.name, "damping": self.damping}

    def self_influence(
        self, engine: GradientEngine, data: BatchSource, *, progress: bool
    ) -> np.ndarray:
        """Stream per-example gradients and score them; float64 scores in dataset order."""
        out = np.empty(len(data), dtype=np.float64)
        bar = tqdm(
            data,
            total=data.n_batches,
            desc=f"self-influence ({self.name})",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for start, x, y in bar:
            g = engine.per_example_grads(start, x, y)
            s = self.quadratic(g)
            out[start : start + x.shape[0]] = s.detach().double().cpu().numpy()
        return out


def stream_blocks(
    engine: GradientEngine, data: BatchSource, block_size: int, *, desc: str, progress: bool
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, grads)`` with ``grads`` ``(<= block_size, P)`` per-example gradients.

    Consecutive streamed batches are concatenated up to ``block_size`` rows so iterative
    solvers get wide right-hand-side blocks while memory stays ``O(block_size x P)``.
    """
    pending: list[torch.Tensor] = []
    first = 0
    rows = 0
    bar = tqdm(
        data, total=data.n_batches, desc=desc, unit="batch", disable=not progress, leave=False
    )
    for start, x, y in bar:
        if not pending:
            first = start
        pending.append(engine.per_example_grads(start, x, y))
        rows += x.shape[0]
        if rows >= block_size:
            yield first, torch.cat(pending)
            pending, rows = [], 0
    if pending:
        yield first, torch.cat(pending)


class ColumnSolverBackend(Backend):
    """A back-end that solves ``(H + lambda I) X = B`` for a block of columns at once.

    Subclasses (cg, lissa) implement :meth:`solve_columns`; quadratic forms, solves and
    streamed self-influence over ``block_size``-wide blocks follow from it.
    """

    block_size: int = 512
    progress: bool = False

    @abc.abstractmethod
    def solve_columns(self, b: torch.Tensor) -> torch.Tensor:
        """``(P, k)`` float64 solutions for right-hand sides ``b`` of shape ``(P, k)``."""

    def quadratic(self, grads: torch.Tensor) -> torch.Tensor:
        return (grads.T.double() * self.solve_columns(grads.T)).sum(0)

    def solve(self, grads: torch.Tensor) -> torch.Tensor:
        return self.solve_columns(grads.T).T.to(grads.dtype)

    def self_influence(
        self, engine: GradientEngine, data: BatchSource, *, progress: bool
    ) -> np.ndarray:
        out = np.empty(len(data), dtype=np.float64)
        self.progress = progress  # inner iteration bars follow the caller's choice
        for start, g in stream_blocks(
            engine, data, self.block_size, desc=f"self-influence ({self.name})", progress=progress
        ):
            out[start : start + g.shape[0]] = self.quadratic(g).cpu().numpy()
        return out
