"""Conjugate-gradient back-end: ``(H + lambda I)^{-1} g`` by matrix-free CG (Koh & Liang Sec. 3).

Koh & Liang solve ``(H + lambda I) x = g`` with CG using only Hessian-vector products
(Martens 2010). Here every right-hand side of a block (one column per example) runs its own
CG recursion, but all columns share each curvature pass: one streamed sweep over the
training data multiplies the whole block (:class:`~infgate.influence.hvp.CurvatureOperator`),
so self-influence for ``n`` examples costs ``iterations x n / block_size`` sweeps with
``block_size`` columns each, never ``n`` sequential solves. Columns that have converged drop
out of later sweeps. Recursions and residuals are kept in float64.
"""

from __future__ import annotations

import logging
from typing import Any

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

__all__ = ["CGBackend"]

log = logging.getLogger(__name__)


@register_backend("cg")
class CGBackend(ColumnSolverBackend):
    """Batched conjugate gradients on ``H + lambda I``.

    Args:
        cache_bytes: memory for cached Gauss-Newton factor rows (products become GEMMs);
            ``0`` always streams forward/reverse-mode products.
        curvature: ``"gauss_newton"`` (default, positive semi-definite) or ``"hessian"``
            (CG needs ``H + lambda I`` positive definite; an indefinite direction raises
            :class:`CurvatureError`).
        rtol: stop a column when ``||r|| <= rtol ||g||``; default 1e-10 for float64 models,
            1e-6 for float32.
        maxiter: CG iterations per block at most (default ``min(P, 1000)`` + 10).
        block_size: right-hand sides solved together (memory ~ ``6 x block_size x P``
            floats).
        precondition_rank: top eigenpairs of ``H`` (block Krylov, as in the arnoldi
            back-end) used as a spectral preconditioner: it maps the kept directions to 1
            and scales the rest by ``1/(l_r + lambda)``, so CG's condition number drops from
            ``(l_1 + lambda)/lambda`` to about ``(l_r + lambda)/lambda``. ``None`` = 64
            (at most P/4; 0 below 256 parameters), ``0`` = plain CG. The answer does not
            depend on it, only the iteration count.
    """

    def __init__(
        self,
        *,
        curvature: Curvature = "gauss_newton",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        rtol: float | None = None,
        maxiter: int | None = None,
        block_size: int = 512,
        precondition_rank: int | None = None,
    ) -> None:
        check_curvature(curvature)
        if precondition_rank is not None and precondition_rank < 0:
            raise InvalidInputError(
                f"precondition_rank must be None or >= 0, got {precondition_rank!r}"
            )
        if rtol is not None and not 0 < rtol < 1:
            raise InvalidInputError(f"rtol must be in (0, 1), got {rtol!r}")
        if maxiter is not None and maxiter < 1:
            raise InvalidInputError(f"maxiter must be >= 1, got {maxiter!r}")
        if block_size < 1:
            raise InvalidInputError(f"block_size must be >= 1, got {block_size!r}")
        self.curvature: Curvature = curvature
        self.cache_bytes = cache_bytes
        self.rtol = rtol
        self.maxiter = maxiter
        self.block_size = block_size
        self.precondition_rank = precondition_rank
        self.precond: tuple[torch.Tensor, torch.Tensor, float] | None = None
        self.damping = float("nan")
        self.iterations: list[int] = []
        self.worst_residual = 0.0
        self.op: CurvatureOperator | None = None

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
        if self.rtol is None:
            self.rtol = 1e-10 if engine.dtype == torch.float64 else 1e-6
        if self.maxiter is None:
            self.maxiter = min(engine.n_params, 1000) + 10
        self.progress = progress
        rank = self.precondition_rank
        if rank is None:
            rank = 0 if engine.n_params < 256 else min(64, engine.n_params // 4)
        if rank > 0:
            from infgate.influence.backends.arnoldi import block_krylov_eigh

            evals, evecs = block_krylov_eigh(
                self.op, rank=rank, krylov_dim=2 * rank, block=32, seed=0, progress=progress
            )
            if float(evals.min()) + self.damping > 0:
                self.precond = (evals, evecs, float(evals.min()) + self.damping)

    def _precondition(self, r: torch.Tensor) -> torch.Tensor:
        """``M^{-1} r`` with ``M = V diag(l + lambda) V^T + mu (I - V V^T)``."""
        if self.precond is None:
            return r
        evals, v, mu = self.precond
        proj = v.T @ r
        return r / mu + v @ (proj * (1.0 / (evals + self.damping) - 1.0 / mu).unsqueeze(1))

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        assert self.op is not None
        return self.op.mean_product(v) + self.damping * v

    def solve_columns(self, b: torch.Tensor) -> torch.Tensor:
        """``X`` with ``(H + lambda I) X = b`` column by column, ``b`` of shape ``(P, k)``."""
        assert self.op is not None and self.rtol is not None and self.maxiter is not None
        b = b.double()
        x = torch.zeros_like(b)
        r = b.clone()
        z = self._precondition(r)
        p = z.clone()
        rz = (r * z).sum(0)
        target = (self.rtol**2) * r.pow(2).sum(0)
        rr = r.pow(2).sum(0)
        active = rr > target
        it = 0
        bar = tqdm(
            total=self.maxiter,
            desc="cg iterations",
            unit="it",
            disable=not self.progress,
            leave=False,
        )
        while bool(active.any()) and it < self.maxiter:
            idx = torch.nonzero(active).flatten()
            pa = p[:, idx]
            ap = self._apply(pa)
            pap = (pa * ap).sum(0)
            if not bool((pap > 0).all()):
                raise CurvatureError(
                    f"CG met a direction of non-positive curvature (p^T (H + lambda I) p = "
                    f"{float(pap.min()):.3g}) with damping {self.damping:.3g}: the damped "
                    f"{self.curvature} is not positive definite; raise damping or use "
                    f"curvature='gauss_newton'"
                )
            alpha = rz[idx] / pap
            x[:, idx] += alpha * pa
            r[:, idx] -= alpha * ap
            ra = r[:, idx]
            rr[idx] = ra.pow(2).sum(0)
            if not bool(torch.isfinite(rr[idx]).all()):
                raise CurvatureError("CG residuals became NaN or inf")
            za = self._precondition(ra)
            rz_new = (ra * za).sum(0)
            p[:, idx] = za + (rz_new / rz[idx]) * pa
            rz[idx] = rz_new
            active[idx] = rr[idx] > target[idx]
            it += 1
            bar.update(1)
        bar.close()
        self.iterations.append(it)
        rel = (rr / target.clamp_min(1e-300)).sqrt() * self.rtol
        self.worst_residual = max(self.worst_residual, float(rel.max()))
        if bool(active.any()):
            log.warning(
                "CG stopped at maxiter=%d with %d of %d columns unconverged (worst relative "
                "residual %.2g); raise maxiter or damping",
                self.maxiter,
                int(active.sum()),
                b.shape[1],
                float(rel.max()),
            )
        return x

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "curvature": self.curvature,
            "rtol": self.rtol,
            "maxiter": self.maxiter,
            "block_size": self.block_size,
            "precondition_rank": 0 if self.precond is None else int(self.precond[0].numel()),
            "iterations_per_block": list(self.iterations),
            "worst_relative_residual": self.worst_residual,
        }
