"""Matrix-free curvature products for the iterative back-ends (cg, lissa, arnoldi).

:class:`CurvatureOperator` multiplies a block of ``k`` flat vectors ``V`` (shape ``(P, k)``)
by the curvature of the MEAN training loss without ever forming the ``P x P`` matrix:

* Gauss-Newton (default): ``G V = mean_b J_b^T H_out,b J_b V``. ``J V`` is a forward-mode
  product (``jvp``), ``H_out`` the loss Hessian in output space (closed form from the
  objective's factor, Martens 2020 Sec. 8), and ``J^T (.)`` a reverse-mode product
  (``vjp``); all ``k`` columns go through one ``vmap`` so a block costs a few GEMMs per
  batch, not ``k`` separate passes (Schraudolph 2002, "fast curvature matrix-vector products").
* Hessian: Pearlmutter's ``jvp`` of the gradient (exact second derivatives; may be
  indefinite for networks).

Products are computed in the model's dtype and summed in float64.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from infgate.errors import CurvatureError, InvalidInputError
from infgate.influence.batches import BatchSource
from infgate.influence.gradients import GradientEngine, forward_mode_kernels
from torch.func import jvp, vjp, vmap
from tqdm.auto import tqdm

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "Curvature",
    "CurvatureOperator",
    "check_curvature",
    "gauss_newton_trace",
    "resolve_damping",
]

log = logging.getLogger(__name__)

Curvature = Literal["gauss_newton", "hessian"]

#: Default memory for cached Gauss-Newton factor rows (see :class:`CurvatureOperator`).
DEFAULT_CACHE_BYTES = 1 << 30


def check_curvature(curvature: str) -> None:
    """Raise :class:`InvalidInputError` for an unknown curvature name."""
    if curvature not in ("gauss_newton", "hessian"):
        raise InvalidInputError(f"curvature must be 'gauss_newton' or 'hessian', got {curvature!r}")


class CurvatureOperator:
    """``V -> (H + damping I) V`` for ``H`` the curvature of the mean training loss.

    Args:
        engine: the gradient engine (model, objective, selected parameters).
        data: the training batches the curvature is averaged over.
        curvature: ``"gauss_newton"`` or ``"hessian"``.
    """

    def __init__(
        self,
        engine: GradientEngine,
        data: BatchSource,
        *,
        curvature: Curvature = "gauss_newton",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        progress: bool = False,
    ) -> None:
        check_curvature(curvature)
        self.engine = engine
        self.data = data
        self.curvature = curvature
        self.n_products = 0  # columns multiplied over the whole data (for reports)
        self.cache: list[torch.Tensor] | None = None
        self.counts: list[int] = []
        self.timing: dict[str, float] = {}
        if curvature == "gauss_newton" and cache_bytes > 0:
            self._try_cache(cache_bytes, progress)

    def _try_cache(self, cache_bytes: int, progress: bool) -> None:
        """Keep the Gauss-Newton factor rows ``U_b = A_b J_b`` when they fit ``cache_bytes``.

        Then a product is two GEMMs per batch, ``U_b^T (U_b V)``, instead of a forward-mode
        and a reverse-mode pass; it pays off for the tens to thousands of passes CG and
        LiSSA make. The rows take ``n x outputs x P`` floats, so large models stream. The
        rows cost ``outputs x P`` flops per example and column, the streamed passes a few
        forward passes' worth: convolutions (weights reused at many positions) gain from
        the cache, a dense net with many outputs may not, so both are timed on the first
        batch and the faster one is kept.
        """
        eng = self.engine
        start0, x0, y0 = next(iter(self.data))
        width = eng.outputs(x0[:1]).reshape(1, -1).shape[1]
        itemsize = torch.finfo(eng.dtype).bits // 8
        need = len(self.data) * width * eng.n_params * itemsize
        if need > cache_bytes:
            log.info("curvature rows need %.2f GB > cache_bytes; streaming products", need / 1e9)
            return
        u0 = eng.factor_grads(start0, x0, y0).reshape(-1, eng.n_params)
        probe = torch.ones(eng.n_params, 16, dtype=eng.dtype, device=eng.device)
        t_rows = min(_seconds(lambda: u0.T @ (u0 @ probe)) for _ in range(2))
        t_stream = min(_seconds(lambda: self.batch_product(x0, y0, probe)) for _ in range(2))
        self.timing = {"cached_rows_s": t_rows, "streamed_s": t_stream}
        if t_stream < t_rows:
            log.info(
                "streamed curvature products are faster here (%.3gs vs %.3gs per batch)",
                t_stream,
                t_rows,
            )
            return
        bar = tqdm(
            self.data,
            total=self.data.n_batches,
            desc="curvature rows",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        cache, counts = [], []
        for start, x, y in bar:
            cache.append(eng.factor_grads(start, x, y).reshape(-1, eng.n_params))
            counts.append(x.shape[0])
        self.cache, self.counts = cache, counts

    def cycle(self, offset: int) -> Iterator[tuple[int, torch.Tensor | None, torch.Tensor | None]]:
        """Batches forever as ``(index, x, y)``, starting at batch ``offset``.

        ``x`` and ``y`` are ``None`` when the factor rows are cached (no data pass needed).
        """
        n_b = self.data.n_batches
        if self.cache is not None:
            i = offset
            while True:
                yield i % n_b, None, None
                i += 1
        skip = offset
        while True:
            for i, (_, x, y) in enumerate(self.data):
                if i >= skip:
                    yield i, x, y
            skip = 0

    def product_at(
        self, index: int, x: torch.Tensor | None, y: torch.Tensor | None, v: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """Summed-loss curvature of batch ``index`` times ``v``, and the batch's size."""
        if self.cache is not None:
            u = self.cache[index]
            vv = v.to(u.dtype)
            return u.T @ (u @ vv), self.counts[index]
        assert x is not None and y is not None
        return self.batch_product(x, y, v), x.shape[0]

    def batch_product(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(P, k)``: the SUMMED-loss curvature of batch ``(x, y)`` times ``v`` ``(P, k)``."""
        eng = self.engine
        v = v.to(eng.dtype)
        if self.curvature == "hessian":
            return eng.hvp(x, y, v)

        def f(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return eng.forward(params, x).reshape(x.shape[0], -1)

        primal = vjp(f, eng.params)
        out, pullback = primal[0], primal[1]
        factor = eng.objective.output_hessian_factor(out.detach(), y).to(out.dtype)
        h_out = factor.transpose(1, 2) @ factor  # (B, C, C)
        tangents = eng.unflatten(v.T.contiguous())  # dict of (k, *shape)

        def jv(t: dict[str, torch.Tensor]) -> torch.Tensor:
            return jvp(f, (eng.params,), (t,))[1]

        jvs: torch.Tensor | None = None
        if eng.jvp_fallback is None:
            try:
                with forward_mode_kernels():
                    jvs = vmap(jv)(tangents)  # (k, B, C)
            except NotImplementedError as exc:  # an op without a forward-mode rule
                if not eng.note_jvp_fallback(exc):
                    raise
        if jvs is None:
            jvs = eng.jacobian_products(x, v).permute(2, 0, 1).to(out.dtype)
        hjv = torch.einsum("bcd,kbd->kbc", h_out, jvs)
        back = vmap(pullback)(hjv)[0]  # dict of (k, *shape)
        return eng.flatten(back, batch_dims=1).T

    def mean_product(
        self,
        v: torch.Tensor,
        *,
        progress: bool = False,
        desc: str = "curvature products",
    ) -> torch.Tensor:
        """``(P, k)`` float64: the mean-loss curvature times ``v`` over all the data."""
        acc = torch.zeros(v.shape, dtype=torch.float64, device=v.device)
        bar = tqdm(
            self.data,
            total=self.data.n_batches,
            desc=desc,
            unit="batch",
            disable=not progress,
            leave=False,
        )
        if self.cache is not None:
            vv = v.to(self.cache[0].dtype)
            for u in self.cache:
                acc += (u.T @ (u @ vv)).double()
        else:
            for _, x, y in bar:
                acc += self.batch_product(x, y, v).double()
        acc /= len(self.data)
        if not bool(torch.isfinite(acc).all()):
            raise CurvatureError("curvature-vector products are NaN or inf")
        self.n_products += v.shape[1]
        return acc


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gauss_newton_trace(engine: GradientEngine, data: BatchSource, *, progress: bool) -> float:
    """``tr(G)`` of the mean-loss Gauss-Newton matrix, from the factor rows ``A_b J_b``.

    ``tr(J^T A^T A J) = ||A J||_F^2``, so one streamed pass gives it exactly.
    """
    total = 0.0
    bar = tqdm(
        data,
        total=data.n_batches,
        desc="curvature trace",
        unit="batch",
        disable=not progress,
        leave=False,
    )
    for start, x, y in bar:
        total += float(engine.factor_grads(start, x, y).double().pow(2).sum())
    return total / len(data)


def resolve_damping(
    engine: GradientEngine, data: BatchSource, damping: float | None, *, progress: bool
) -> float:
    """The caller's ``damping``, else the library default (1e-3 x mean GN eigenvalue)."""
    if damping is not None:
        if not damping > 0:
            raise InvalidInputError(f"damping must be positive, got {damping!r}")
        return float(damping)
    from infgate.influence.backends.exact import default_damping

    return default_damping(gauss_newton_trace(engine, data, progress=progress), engine.n_params)


def fit_operator(
    engine: GradientEngine,
    data: BatchSource,
    *,
    curvature: Curvature,
    cache_bytes: int,
    damping: float | None,
    progress: bool,
) -> tuple[CurvatureOperator, float]:
    """The matrix-free curvature of ``data`` and the resolved damping (cg, lissa, arnoldi)."""
    op = CurvatureOperator(
        engine, data, curvature=curvature, cache_bytes=cache_bytes, progress=progress
    )
    return op, resolve_damping(engine, data, damping, progress=progress)
