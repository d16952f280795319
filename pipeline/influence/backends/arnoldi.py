"""Arnoldi back-end: top-k eigenpairs of the curvature plus a residual term for the rest.

Schioppa et al. (2022) find the top eigenpairs ``(l_j, v_j)`` of ``H`` with Arnoldi
iterations on curvature-vector products and score in that subspace. Dropping the other
directions makes scores correlate poorly with leave-one-out (dattri's benchmark), so we keep
them at the damping's value: with ``V`` the kept eigenvectors,

    s_i = sum_j (v_j^T g_i)^2 / (l_j + lambda) + ||(I - V V^T) g_i||^2 / lambda,

which is exact when every discarded eigenvalue is zero and always between the exact score
and the truncated one.

For a symmetric ``H`` Arnoldi is Lanczos; we run its block form (block Krylov subspace
``[Q, HQ, H^2 Q, ...]`` with full re-orthogonalisation, then Rayleigh-Ritz), because one
streamed pass over the data multiplies a whole block of vectors in a few GEMMs while
single-vector Lanczos would need one pass per vector. Factorisations are float64.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from infgate.errors import CurvatureError, InvalidInputError
from infgate.influence.backends.base import Backend, OutputLeverage, register_backend
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

__all__ = ["ArnoldiBackend", "block_krylov_eigh"]

log = logging.getLogger(__name__)


def block_krylov_eigh(
    op: CurvatureOperator,
    *,
    rank: int,
    krylov_dim: int,
    block: int,
    seed: int,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` Ritz pairs ``(values (r,), vectors (P, r))`` of the mean-loss curvature."""
    p = op.engine.n_params
    dev = op.engine.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    krylov_dim = min(krylov_dim, p)
    # At least four Krylov blocks: one block alone is a random subspace, not a Krylov one.
    block = max(1, min(block, -(-krylov_dim // 4)))
    n_blocks = -(-krylov_dim // block)
    q = torch.linalg.qr(torch.randn(p, block, generator=gen, dtype=torch.float64))[0].to(dev)
    qs: list[torch.Tensor] = [q]
    hqs: list[torch.Tensor] = []
    bar = tqdm(
        total=n_blocks,
        desc="arnoldi (block Krylov)",
        unit="block",
        disable=not progress,
        leave=False,
    )
    for j in range(n_blocks):
        w = op.mean_product(qs[-1])
        hqs.append(w)
        bar.update(1)
        if j == n_blocks - 1 or sum(x.shape[1] for x in qs) >= p:
            break
        basis = torch.cat(qs, dim=1)
        for _ in range(2):  # classical Gram-Schmidt twice is as stable as modified
            w = w - basis @ (basis.T @ w)
        nxt, r = torch.linalg.qr(w)
        width = min(block, p - basis.shape[1])
        nxt, r = nxt[:, :width], r[:width, :width]
        small = r.diagonal().abs() <= 1e-10 * max(float(r.diagonal().abs().max()), 1e-300)
        if bool(small.any()):
            # The Krylov space is exhausted in some directions (H has low rank): continue with
            # fresh random directions, orthogonalised against everything found so far.
            fresh = torch.randn(p, int(small.sum()), generator=gen, dtype=torch.float64).to(dev)
            keep = nxt[:, ~small]
            allb = torch.cat([basis, keep], dim=1)
            for _ in range(2):
                fresh = fresh - allb @ (allb.T @ fresh)
            nxt = torch.cat([keep, torch.linalg.qr(fresh)[0]], dim=1)
        qs.append(nxt)
    bar.close()
    basis = torch.cat(qs[: len(hqs)], dim=1)
    t = basis.T @ torch.cat(hqs, dim=1)
    evals, evecs = torch.linalg.eigh(0.5 * (t + t.T))
    order = torch.argsort(evals, descending=True)[:rank]
    return evals[order], basis @ evecs[:, order]


@register_backend("arnoldi")
class ArnoldiBackend(Backend):
    """Low-rank eigendecomposition of ``H`` plus the damped residual term.

    Args:
        rank: eigenpairs kept.
        krylov_dim: Krylov subspace size (default ``2 x rank``; more = more accurate pairs).
        block: vectors per curvature pass (default 32; at most ``krylov_dim / 4`` so the
            subspace spans at least four Krylov powers).
        cache_bytes: memory for cached Gauss-Newton factor rows (products become GEMMs);
            ``0`` always streams forward/reverse-mode products.
        curvature: ``"gauss_newton"`` (default) or ``"hessian"``.
        residual: add the ``||(I - V V^T) g||^2 / lambda`` term (default ``True``; ``False``
            gives plain truncation, for comparison only).
        seed: start block of the iteration.
    """

    def __init__(
        self,
        *,
        rank: int = 64,
        krylov_dim: int | None = None,
        block: int = 32,
        curvature: Curvature = "gauss_newton",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        residual: bool = True,
        seed: int = 0,
    ) -> None:
        check_curvature(curvature)
        if rank < 1 or block < 1:
            raise InvalidInputError(f"rank and block must be >= 1, got {rank!r}, {block!r}")
        if krylov_dim is not None and krylov_dim < rank:
            raise InvalidInputError(f"krylov_dim must be >= rank ({rank}), got {krylov_dim!r}")
        self.rank = rank
        self.krylov_dim = krylov_dim or 2 * rank
        self.block = block
        self.curvature: Curvature = curvature
        self.cache_bytes = cache_bytes
        self.residual = residual
        self.seed = seed
        self.damping = float("nan")
        self.eigenvalues: torch.Tensor | None = None
        self.eigenvectors: torch.Tensor | None = None

    def fit(
        self, engine: GradientEngine, data: BatchSource, *, damping: float | None, progress: bool
    ) -> None:
        op, self.damping = fit_operator(
            engine,
            data,
            curvature=self.curvature,
            cache_bytes=self.cache_bytes,
            damping=damping,
            progress=progress,
        )
        evals, evecs = block_krylov_eigh(
            op,
            rank=self.rank,
            krylov_dim=self.krylov_dim,
            block=self.block,
            seed=self.seed,
            progress=progress,
        )
        if bool((evals + self.damping <= 0).any()):
            raise CurvatureError(
                f"the damped {self.curvature} has a non-positive eigenvalue "
                f"({float(evals.min()) + self.damping:.3g}) at damping {self.damping:.3g}; raise "
                f"damping above {-float(evals.min()):.3g} or use curvature='gauss_newton'"
            )
        self.eigenvalues, self.eigenvectors = evals, evecs
        self._cast: dict[torch.dtype, torch.Tensor] = {torch.float64: evecs}
        log.info(
            "arnoldi: top eigenvalue %.3g, %d-th %.3g",
            float(evals[0]),
            len(evals),
            float(evals[-1]),
        )

    def _vectors(self, dtype: torch.dtype) -> torch.Tensor:
        assert self.eigenvectors is not None  # the base class's guard has checked fit ran
        if dtype not in self._cast:
            self._cast[dtype] = self.eigenvectors.to(dtype)
        return self._cast[dtype]

    def quadratic(self, grads: torch.Tensor) -> torch.Tensor:
        assert self.eigenvalues is not None
        proj = (grads @ self._vectors(grads.dtype)).double()
        s = (proj.pow(2) / (self.eigenvalues + self.damping)).sum(1)
        if self.residual:
            rest = grads.double().pow(2).sum(1) - proj.pow(2).sum(1)
            s = s + rest.clamp_min(0) / self.damping
        return s

    def solve(self, grads: torch.Tensor) -> torch.Tensor:
        assert self.eigenvalues is not None
        v = self._vectors(torch.float64)
        g = grads.double()
        proj = g @ v
        inv = 1.0 / (self.eigenvalues + self.damping)
        if self.residual:
            out = g / self.damping + (proj * (inv - 1.0 / self.damping)) @ v.T
        else:
            out = (proj * inv) @ v.T
        return out.to(grads.dtype)

    def output_leverage(
        self,
        engine: GradientEngine,
        start: int,
        x: torch.Tensor,
        y: torch.Tensor,
        residual: Callable[[torch.Tensor], torch.Tensor],
    ) -> OutputLeverage:
        """``M_i = J_i A^{-1} J_i^T`` with the closed-form low-rank-plus-residual inverse."""
        logits = engine.checked_outputs(start, x, y).double()
        b, c = logits.shape
        jd = engine.output_jacobians(x).double()
        r = residual(logits)
        solved = self.solve(jd.reshape(b * c, -1)).reshape(b, c, -1).double()
        return OutputLeverage(
            logits=logits,
            leverage=torch.einsum("bcp,bdp->bcd", jd, solved),
            grad_norm=torch.einsum("bc,bcp->bp", r, jd).norm(dim=1),
            solved_norm=torch.einsum("bc,bcp->bp", r, solved).norm(dim=1),
        )

    def describe(self) -> dict[str, Any]:
        ev = self.eigenvalues
        return {
            **super().describe(),
            "curvature": self.curvature,
            "rank": self.rank,
            "krylov_dim": self.krylov_dim,
            "residual": self.residual,
            "top_eigenvalue": None if ev is None else float(ev[0]),
            "smallest_kept_eigenvalue": None if ev is None else float(ev[-1]),
        }
