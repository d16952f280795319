"""K-FAC and EK-FAC back-ends: Kronecker-factored curvature per Linear and Conv2d layer.

For a layer with inputs ``a`` (a column of ones appended for the bias) and output gradients
``ds``, the per-example gradient is ``sum_t ds_t a_t^T`` over the layer's locations ``t``
(one for a dense layer, every spatial position for a convolution). K-FAC (Martens & Grosse
2015; Grosse & Martens 2016 for convolutions) approximates the layer's block of the Fisher by
``S (x) A / T`` with ``A = E[sum_t a_t a_t^T]`` and ``S = E[sum_t ds_t ds_t^T]``. EK-FAC (George
et al. 2018; Grosse et al. 2023, Eq. 20) keeps the eigenbases ``Q_A``, ``Q_S`` but refits the
eigenvalues on per-example gradients, ``Lambda_jk = E[(Q_S^T G Q_A)_jk^2]``, which is the best
diagonal in that basis. Self-influence then is

    s_i = sum_layers sum_jk (Q_S^T G_i Q_A)_jk^2 / (Lambda_jk + lambda),

computed from each layer's captured inputs and output gradients (forward hooks and one
backward pass per batch): whole-model per-example gradients are never formed.

The Fisher is the TRUE Fisher by default (the model's own predictive distribution, not the
given labels): ``"expected"`` takes the exact expectation through the objective's
output-Hessian factor (one backward pass per output), ``"sampled"`` one random probe with the
same covariance (one backward pass), ``"empirical"`` uses the given labels. For softmax
cross-entropy the true Fisher equals the Gauss-Newton matrix. Factors and eigendecompositions
are float64. Parameters outside Linear/Conv2d layers (norm layers, embeddings, grouped
convolutions) are not covered: they are listed in ``details["uncovered"]`` and logged, and
if nothing is covered the fit raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from infgate.errors import CurvatureError, InvalidInputError, NonFiniteError
from infgate.influence.backends.base import Backend, register_backend
from infgate.influence.backends.exact import default_damping
from infgate.influence.backends.kfac_layers import KronLayer, LayerCapture, find_layers
from infgate.influence.batches import BatchSource
from infgate.influence.gradients import GradientEngine
from tqdm.auto import tqdm

__all__ = ["EKFACBackend", "KFACBackend"]

log = logging.getLogger(__name__)

Fisher = Literal["expected", "sampled", "empirical"]

#: ``fisher=None`` takes the exact expectation up to this many outputs, else one probe.
MAX_EXPECTED_OUTPUTS = 32


@register_backend("ekfac")
class EKFACBackend(Backend):
    """Eigenvalue-corrected Kronecker-factored curvature (EK-FAC).

    Args:
        fisher: ``"expected"`` (exact true Fisher, one backward pass per model output),
            ``"sampled"`` (one random probe per example with the true Fisher's covariance;
            one backward pass) or ``"empirical"`` (the given labels). ``None`` (default) =
            expected up to 32 outputs, sampled above (e.g. 1,000-class models).
        seed: random probes for ``fisher="sampled"``.
    """

    refit_eigenvalues = True

    def __init__(self, *, fisher: Fisher | None = None, seed: int = 0) -> None:
        if fisher is not None and fisher not in ("expected", "sampled", "empirical"):
            raise InvalidInputError(
                f"fisher must be 'expected', 'sampled' or 'empirical', got {fisher!r}"
            )
        self.fisher: Fisher | None = fisher
        self.seed = seed
        self.damping = float("nan")
        self.layers: list[KronLayer] = []
        self.uncovered: list[str] = []
        self.n_covered = 0

    # -- fitting ---------------------------------------------------------------------------
    def _fisher_grads(self, cap: LayerCapture, gen: torch.Generator) -> list[list[torch.Tensor]]:
        """Per layer, the list of output-gradient tensors whose covariance is the Fisher."""
        out, y = cap.output, cap.targets
        if self.fisher == "empirical":
            return cap.output_grads(cap.engine.objective.loss(out, y).sum())
        factor = cap.engine.objective.output_hessian_factor(out.detach(), y).to(out.dtype)
        if self.fisher is None:
            self.fisher = "expected" if factor.shape[1] <= MAX_EXPECTED_OUTPUTS else "sampled"
        if self.fisher == "sampled":
            eps = torch.randn(factor.shape[:2], generator=gen, dtype=torch.float64)
            probe = torch.einsum("bkc,bk->bc", factor, eps.to(factor))
            return cap.output_grads(out, probe)
        per_row = [cap.output_grads(out, factor[:, k, :]) for k in range(factor.shape[1])]
        return [[row[i][0] for row in per_row] for i in range(len(self.layers))]

    def fit(
        self, engine: GradientEngine, data: BatchSource, *, damping: float | None, progress: bool
    ) -> None:
        self.layers, self.uncovered = find_layers(engine)
        if not self.layers:
            raise InvalidInputError(
                f"method={self.name!r} covers Linear and Conv2d layers (groups=1, zero "
                f"padding) only, and none of the selected parameters belongs to one "
                f"(uncovered: {self.uncovered[:8]}). Use method='arnoldi' or 'cg', or select "
                f"Linear/Conv2d parameters with params="
            )
        if self.uncovered:
            log.warning(
                "%s: %d selected parameter tensor(s) are not in a Linear/Conv2d layer and get "
                "no influence: %s",
                self.name,
                len(self.uncovered),
                self.uncovered[:12],
            )
        self.n_covered = sum(layer.n_params for layer in self.layers)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        n = len(data)
        self._fisher_sweep(engine, data, gen, "factors", progress, KronLayer.accumulate_factors)
        for layer in self.layers:
            layer.eigendecompose(n)
        if self.refit_eigenvalues:
            self._fisher_sweep(
                engine, data, gen, "eigenvalues", progress, KronLayer.accumulate_eigenvalues
            )
        for layer in self.layers:
            layer.finish_eigenvalues(n, refit=self.refit_eigenvalues)
        trace = sum(float(layer.eigenvalues.sum()) for layer in self.layers)
        if not np.isfinite(trace):
            raise CurvatureError(f"{self.name} eigenvalues are NaN or inf")
        self.damping = default_damping(trace, self.n_covered) if damping is None else float(damping)
        for layer in self.layers:
            layer.set_damping(self.damping, engine.dtype)
        self.bind(engine)

    def _fisher_sweep(
        self,
        engine: GradientEngine,
        data: BatchSource,
        gen: torch.Generator,
        what: str,
        progress: bool,
        update: Callable[[KronLayer, torch.Tensor, list[torch.Tensor]], None],
    ) -> None:
        """One pass over ``data`` feeding each layer's ``update`` method (activations, grads)."""
        bar = tqdm(
            data,
            total=data.n_batches,
            desc=f"{self.name} {what}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for start, x, y in bar:
            with LayerCapture(engine, self.layers, start, x, y) as cap:
                grads = self._fisher_grads(cap, gen)
                for layer, acts, gs in zip(self.layers, cap.inputs, grads, strict=True):
                    update(layer, acts, gs)

    # -- scoring ---------------------------------------------------------------------------
    def self_influence(
        self, engine: GradientEngine, data: BatchSource, *, progress: bool
    ) -> np.ndarray:
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
            with LayerCapture(engine, self.layers, start, x, y) as cap:
                grads = cap.output_grads(engine.objective.loss(cap.output, y).sum())
                s = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
                for layer, acts, gs in zip(self.layers, cap.inputs, grads, strict=True):
                    s += layer.self_scores(acts, gs[0])
            if not bool(torch.isfinite(s).all()):
                rows = (torch.nonzero(~torch.isfinite(s)).flatten()[:5] + start).tolist()
                raise NonFiniteError(f"{self.name} scores are NaN or inf for example(s) {rows}")
            out[start : start + x.shape[0]] = s.cpu().numpy()
        return out

    def _per_layer(self, grads: torch.Tensor, fn: str) -> list[Any]:
        parts = dict(zip(self._names, torch.split(grads, self._sizes, dim=1), strict=True))
        return [getattr(layer, fn)(parts) for layer in self.layers]

    def quadratic(self, grads: torch.Tensor) -> torch.Tensor:
        return torch.stack(self._per_layer(grads, "quadratic_flat")).sum(0)

    def solve(self, grads: torch.Tensor) -> torch.Tensor:
        """Uncovered parameters get zero (they carry no influence in this approximation)."""
        solved = dict(
            item for part in self._per_layer(grads, "solve_flat") for item in part.items()
        )
        cols = [
            solved.get(n, torch.zeros(grads.shape[0], s, dtype=grads.dtype, device=grads.device))
            for n, s in zip(self._names, self._sizes, strict=True)
        ]
        return torch.cat(cols, dim=1).to(grads.dtype)

    def bind(self, engine: GradientEngine) -> None:
        """Remember the engine's flat layout (for ``quadratic``/``solve`` on flat gradients)."""
        self._names = list(engine.names)
        self._sizes = list(engine.sizes)
        self._shapes = dict(zip(engine.names, engine.shapes, strict=True))
        for layer in self.layers:
            layer.bind_shapes(self._shapes)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "fisher": self.fisher,
            "layers": [layer.describe() for layer in self.layers],
            "covered_params": self.n_covered,
            "uncovered": list(self.uncovered),
        }


@register_backend("kfac")
class KFACBackend(EKFACBackend):
    """K-FAC: the same Kronecker factors, eigenvalues ``lambda_S x lambda_A / T`` (no refit)."""

    refit_eigenvalues = False
