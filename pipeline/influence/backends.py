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
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.errors import InvalidInputError
from pipeline.influence.batches import BatchSource
from pipeline.influence.gradients import GradientEngine

__all__ = ["BACKENDS", "Backend", "available_backends", "get_backend", "register_backend"]

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
