"""LiSSA back-end: Koh & Liang's stochastic Neumann-series estimate of ``(H + lambda I)^{-1} g``.

Koh & Liang (2017, Sec. 3, after Agarwal et al. 2017) iterate, with mini-batch curvature
products ``H_t``,

    h_0 = g,    h_j = g + h_{j-1} - (H_t + lambda I) h_{j-1} / s,

whose fixed point is ``h = s (H + lambda I)^{-1} g``, so the estimate is ``h_J / s``. It
converges when the scale ``s`` exceeds half the largest eigenvalue of every mini-batch's damped
curvature, at the rate ``(1 - lambda / s)^J``. ``repeats`` independent recursions (each
starting at a different batch) are AVERAGED (one popular port concatenates them instead,
which multiplies the answer by the number of repeats).

A divergence check runs every step: ``||(H + lambda I)^{-1} g|| <= ||g|| / lambda`` holds
for the true answer, so an estimate ten times larger (or NaN/inf) stops the recursion with
:class:`CurvatureError` naming the step and a safe scale.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from infgate.errors import CurvatureError, InvalidInputError
from infgate.influence.backends.base import ColumnSolverBackend, register_backend
from infgate.influence.batches import BatchSource
from infgate.influence.gradients import GradientEngine
from infgate.influence.hvp import (
    DEFAULT_CACHE_BYTES,
    Curvature,
    CurvatureOperator,
    check_curvature,
    fit_operator,
)
from tqdm.auto import tqdm

__all__ = ["LissaBackend", "top_eigenvalue"]

log = logging.getLogger(__name__)


def top_eigenvalue(op: CurvatureOperator, *, iters: int = 12, seed: int = 0) -> float:
    """Largest eigenvalue of the mean-loss curvature by block power iteration (4 vectors)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    p = op.engine.n_params
    q = torch.linalg.qr(torch.randn(p, 4, generator=gen, dtype=torch.float64))[0]
    q = q.to(op.engine.device)
    top = 0.0
    for _ in range(iters):
        w = op.mean_product(q)
        t = q.T @ w
        top = float(torch.linalg.eigvalsh(0.5 * (t + t.T)).max())
        q = torch.linalg.qr(w)[0]
    return top


@register_backend("lissa")
class LissaBackend(ColumnSolverBackend):
    """Stochastic Neumann series (LiSSA) with scale, damping and averaged repeats.

    Args:
        cache_bytes: memory for cached Gauss-Newton factor rows (products become GEMMs);
            ``0`` always streams forward/reverse-mode products.
        curvature: ``"gauss_newton"`` (default) or ``"hessian"``.
        depth: recursion steps per repeat; ``None`` = enough for a truncation error of
            ``tol`` (``log(tol) / log(1 - lambda/s)``), capped at ``max_depth``.
        repeats: independent recursions averaged (Koh & Liang used several).
        scale: ``s``; ``None`` = 1.2 x (largest eigenvalue of ``H`` + lambda), estimated
            by power iteration.
        tol: truncation error targeted by the automatic depth, and the early-stop threshold
            on the relative change of the estimate.
        max_depth: cap on the automatic depth.
        block_size: right-hand sides (examples) recursed together.
        seed: picks where each repeat starts in the batch cycle.
    """

    def __init__(
        self,
        *,
        curvature: Curvature = "gauss_newton",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        depth: int | None = None,
        repeats: int = 1,
        scale: float | None = None,
        tol: float = 1e-4,
        max_depth: int = 5000,
        block_size: int = 1024,
        seed: int = 0,
    ) -> None:
        check_curvature(curvature)
        if depth is not None and depth < 1:
            raise InvalidInputError(f"depth must be >= 1, got {depth!r}")
        if repeats < 1:
            raise InvalidInputError(f"repeats must be >= 1, got {repeats!r}")
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise InvalidInputError(f"scale must be None or positive, got {scale!r}")
        if not 0 < tol < 1:
            raise InvalidInputError(f"tol must be in (0, 1), got {tol!r}")
        if block_size < 1 or max_depth < 1:
            raise InvalidInputError(
                f"block_size and max_depth must be >= 1, got {block_size!r}, {max_depth!r}"
            )
        self.curvature: Curvature = curvature
        self.cache_bytes = cache_bytes
        self.depth = depth
        self.repeats = repeats
        self.scale = scale
        self.tol = tol
        self.max_depth = max_depth
        self.block_size = block_size
        self.seed = seed
        self.damping = float("nan")
        self.op: CurvatureOperator | None = None
        self.steps_run: list[int] = []
        self.top_eig: float | None = None

    def fit(
        self, engine: GradientEngine, data: BatchSource, *, damping: float | None, progress: bool
    ) -> None:
        self.op, self.damping = fit_operator(
            engine,
            data,
            curvature=self.curvature,
            cache_bytes=self.cache_bytes,
            damping=damping,
            progress=progress,
        )
        self.data = data
        if self.scale is None:
            self.top_eig = top_eigenvalue(self.op, seed=self.seed)
            self.scale = 1.2 * (self.top_eig + self.damping)
        contraction = 1.0 - self.damping / self.scale
        auto = (
            self.max_depth
            if contraction <= 0
            else math.ceil(math.log(self.tol) / math.log(max(contraction, 1e-300)))
        )
        if self.depth is None:
            self.depth = max(1, min(auto, self.max_depth))
            if auto > self.max_depth:
                log.warning(
                    "LiSSA needs ~%d steps for tol=%g at damping %.3g and scale %.3g; capped "
                    "at max_depth=%d (truncation error ~%.2g). Raise damping or max_depth.",
                    auto,
                    self.tol,
                    self.damping,
                    self.scale,
                    self.max_depth,
                    contraction**self.max_depth,
                )
        self.progress = progress

    def _recursion(self, v: torch.Tensor, offset: int, repeat: int) -> torch.Tensor:
        assert self.op is not None and self.scale is not None and self.depth is not None
        bound = 10.0 * v.pow(2).sum(0).sqrt() / self.damping
        n_batches, n = self.data.n_batches, len(self.data)
        h = v.clone()
        bar = tqdm(
            total=self.depth,
            desc=f"lissa repeat {repeat + 1}/{self.repeats}",
            unit="step",
            disable=not self.progress,
            leave=False,
        )
        step = 0
        for index, x, y in self.op.cycle(offset):
            prod, _ = self.op.product_at(index, x, y, h)
            # n_batches x (batch sum) / n: unbiased over a cycle even when batches differ
            # in size (dividing by the batch's own size would over-weight the short last one).
            hv = prod.double() * (n_batches / n)
            new = v + h - (hv + self.damping * h) / self.scale
            est = new.pow(2).sum(0).sqrt() / self.scale
            if not bool(torch.isfinite(est).all()) or bool((est > bound).any()):
                bar.close()
                raise CurvatureError(
                    f"LiSSA diverged at step {step + 1} of repeat {repeat + 1}: the estimate "
                    f"grew past 10 ||g||/lambda (the true ||(H + lambda I)^-1 g|| is at most "
                    f"||g||/lambda). The scale {self.scale:.3g} must exceed half the largest "
                    f"eigenvalue of every mini-batch's damped curvature; try scale >= "
                    f"{2 * self.scale:.3g}, a larger batch_size, or scale=None (estimated)"
                )
            change = (new - h).pow(2).sum(0) / new.pow(2).sum(0).clamp_min(1e-300)
            h = new
            step += 1
            bar.update(1)
            if step >= self.depth or (step > 10 and float(change.max().sqrt()) < self.tol):
                break
        bar.close()
        self.steps_run.append(step)
        return h / self.scale

    def solve_columns(self, v: torch.Tensor) -> torch.Tensor:
        """``(P, k)`` LiSSA estimates of ``(H + lambda I)^{-1} v``, averaged over repeats."""
        v = v.double()
        gen = np.random.default_rng(self.seed)
        n_b = self.data.n_batches
        total = torch.zeros_like(v)
        for r in range(self.repeats):
            total += self._recursion(v, int(gen.integers(n_b)), r)
        return total / self.repeats

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "curvature": self.curvature,
            "scale": self.scale,
            "top_eigenvalue": self.top_eig,
            "depth": self.depth,
            "repeats": self.repeats,
            "steps_run": list(self.steps_run),
            "block_size": self.block_size,
        }
