"""Curvature back-ends: one base class, one registry (``@register_backend``).

A back-end is fitted once on the training data (the curvature of the MEAN training loss
plus damping), then answers two questions for any batch of per-example gradients ``G``:

* ``quadratic(G)``: ``g^T (H + lambda I)^{-1} g`` per row (self-influence), and
* ``solve(G)``: ``(H + lambda I)^{-1} g`` per row (for train -> test influence).

Back-ends that never form whole-model per-example gradients (EK-FAC) override
``self_influence`` instead.

Capabilities beyond these two are declared, not probed: a back-end whose fit is a
factorisation the detectors can reuse implements a runtime-checkable protocol
(:class:`CanWhiten` for output-space leverage, :class:`CanFilter` for the curvature-filtered
model), and callers test ``isinstance(backend, CanWhiten)``. Iterative back-ends (cg,
lissa) implement neither: every one of their solves is a series of full data sweeps.

The fitted-state guard lives here once: every query method of every back-end raises
:class:`~infgate.errors.NotFittedError` naming the class and the call to make until
``fit`` has returned.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from infgate.errors import InvalidInputError, NotFittedError
from infgate.influence.batches import BatchSource
from infgate.influence.gradients import GradientEngine
from tqdm.auto import tqdm

__all__ = [
    "BACKENDS",
    "Backend",
    "CanFilter",
    "CanWhiten",
    "ColumnSolverBackend",
    "OutputLeverage",
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


#: Methods that need a fitted curvature; the guard wraps them wherever a subclass defines them.
FIT_REQUIRED = (
    "quadratic",
    "solve",
    "self_influence",
    "whiten",
    "unwhiten",
    "output_leverage",
    "filter_parameters",
    "solve_columns",
)


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self: Backend, *args: Any, **kwargs: Any) -> Any:
        if not (self.__dict__.get("_fitted", False) or self.__dict__.get("_in_fit", False)):
            cls = type(self).__name__
            raise NotFittedError(
                f"{cls}.{fn.__name__}() needs a fitted curvature: call "
                f"{cls}.fit(engine, data, damping=..., progress=...) first (or build an "
                f"InfluenceScorer, which fits it)"
            )
        return fn(self, *args, **kwargs)

    wrapper.__fit_guarded__ = True  # type: ignore[attr-defined]
    return wrapper


def _fit_marks(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self: Backend, *args: Any, **kwargs: Any) -> Any:
        self._fitted = False  # a failed refit leaves no half-fitted state usable
        self._in_fit = True  # fit may use the back-end's own queries (e.g. a trial solve)
        try:
            out = fn(self, *args, **kwargs)
        finally:
            self._in_fit = False
        self._fitted = True
        return out

    wrapper.__fit_guarded__ = True  # type: ignore[attr-defined]
    return wrapper


@dataclass(frozen=True)
class OutputLeverage:
    """Output-space pieces of one batch, from the fitted factorisation (``A = H + lambda I``).

    Attributes:
        logits: ``(B, C)`` float64 model outputs.
        leverage: ``(B, C, C)`` float64 ``M_i = J_i A^{-1} J_i^T``.
        grad_norm: ``(B,)`` ``||g_i||`` with ``g_i = J_i^T r_i``.
        solved_norm: ``(B,)`` ``||A^{-1} g_i||``.
    """

    logits: torch.Tensor
    leverage: torch.Tensor
    grad_norm: torch.Tensor
    solved_norm: torch.Tensor


@runtime_checkable
class CanWhiten(Protocol):
    """A back-end that gives output-space leverage ``J_i A^{-1} J_i^T`` per example directly
    from its fitted factorisation (Cholesky factor, EK-FAC eigenbasis, Arnoldi eigenpairs):
    one batched pass, never an iterative solve."""

    def output_leverage(
        self,
        engine: GradientEngine,
        start: int,
        x: torch.Tensor,
        y: torch.Tensor,
        residual: Callable[[torch.Tensor], torch.Tensor],
    ) -> OutputLeverage:
        """Leverage blocks and norms for one batch; ``residual(logits)`` gives ``r_i``
        (``(B, C)``, the loss gradient in output space) so ``g_i = J_i^T r_i``."""
        ...


@runtime_checkable
class CanFilter(Protocol):
    """A back-end that applies ``(H + lambda' I)^{-1} (H + lambda I)`` with its own fit."""

    def filter_parameters(self, theta: torch.Tensor, strength: float) -> tuple[torch.Tensor, float]:
        """``((H + lambda' I)^{-1} (H + lambda I) theta, lambda')`` for the flat float64
        parameters ``theta``, ``lambda' = max(strength x mean eigenvalue of H, lambda)``."""
        ...


class Backend(abc.ABC):
    """A fitted (or fittable) approximation of ``(H + lambda I)^{-1}``.

    Subclasses get the fitted-state guard automatically: ``fit`` marks the instance fitted
    when it returns, and the methods named in :data:`FIT_REQUIRED` raise
    :class:`~infgate.errors.NotFittedError` before that.
    """

    name: ClassVar[str] = "?"
    damping: float
    _fitted: bool = False
    _in_fit: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr in ("fit", *FIT_REQUIRED):
            fn = cls.__dict__.get(attr)
            if fn is None or getattr(fn, "__fit_guarded__", False) or not callable(fn):
                continue
            if getattr(fn, "__isabstractmethod__", False):
                continue
            setattr(cls, attr, _fit_marks(fn) if attr == "fit" else _guarded(fn))

    @property
    def fitted(self) -> bool:
        """Whether ``fit`` has completed."""
        return self._fitted

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


Backend.self_influence = _guarded(Backend.self_influence)  # type: ignore[method-assign]


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
