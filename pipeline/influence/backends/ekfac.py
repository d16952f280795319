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
are float64. Selected parameters no Kronecker factor covers get their own diagonal block
(:mod:`~infgate.influence.backends.diagonal`), by the rule in
:mod:`~infgate.influence.backends.layer_plan`; ``details["own_block"]`` lists them with the
reason. The fitted eigenbasis also answers the detectors directly (:class:`CanWhiten`:
output-space leverage per example; :class:`CanFilter`: the curvature-filtered model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from infgate.errors import CurvatureError, InvalidInputError, NonFiniteError
from infgate.influence.backends.base import Backend, OutputLeverage, register_backend
from infgate.influence.backends.capture import LayerCapture
from infgate.influence.backends.diagonal import DiagonalBlock
from infgate.influence.backends.embedding_layers import EmbeddingLayer
from infgate.influence.backends.exact import default_damping
from infgate.influence.backends.kfac_layers import KronLayer
from infgate.influence.backends.layer_check import check_hooks
from infgate.influence.backends.layer_plan import LayerSpec, plan_layers
from infgate.influence.backends.norm_layers import NormLayer
from infgate.influence.batches import BatchSource
from infgate.influence.gradients import GradientEngine
from torch import nn
from tqdm.auto import tqdm

__all__ = ["EKFACBackend", "KFACBackend"]

log = logging.getLogger(__name__)

Fisher = Literal["expected", "sampled", "empirical"]

#: ``fisher=None`` takes the exact expectation up to this many outputs, else one probe.
MAX_EXPECTED_OUTPUTS = 32
#: ... and up to this many hooked parameters: the expectation costs one backward pass and one
#: rotation of every layer's gradient per output, the probe one (1M-parameter CNN, 10
#: classes: the expected eigenvalue refit alone is ~10x the per-example-gradient floor).
MAX_EXPECTED_PARAMS = 200_000


def _layer_for(spec: LayerSpec, engine: GradientEngine) -> Any:
    """The fitted block of one hooked layer: Kronecker factors, or a hooked diagonal."""
    if spec.kind == "norm":
        return NormLayer(spec, engine)
    if spec.kind == "embedding":
        return EmbeddingLayer(spec)
    return KronLayer(spec)


@register_backend("ekfac")
class EKFACBackend(Backend):
    """Eigenvalue-corrected Kronecker-factored curvature (EK-FAC).

    Args:
        fisher: ``"expected"`` (exact true Fisher, one backward pass per model output),
            ``"sampled"`` (one random probe per example with the true Fisher's covariance;
            one backward pass) or ``"empirical"`` (the given labels). ``None`` (default) =
            expected up to 32 outputs and 200k hooked parameters, sampled above (e.g.
            1,000-class models, a 1M-parameter CNN).
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
        self.layers: list[Any] = []  # KronLayer or NormLayer (the same interface)
        self.block: DiagonalBlock | None = None
        self.own_reasons: dict[str, str] = {}
        self.model: nn.Module | None = None  # tapped copy of a pt2 GraphModule
        self.n_covered = 0

    # -- fitting ---------------------------------------------------------------------------
    def _fisher_grads(self, cap: LayerCapture, gen: torch.Generator) -> list[list[torch.Tensor]]:
        """Per layer, the list of output-gradient tensors whose covariance is the Fisher."""
        out, y = cap.output, cap.targets
        if self.fisher == "empirical":
            return cap.output_grads(cap.engine.objective.loss(out, y).sum(), check=False)
        factor = cap.engine.objective.output_hessian_factor(out.detach(), y).to(out.dtype)
        if self.fisher is None:
            self.fisher = "expected" if factor.shape[1] <= MAX_EXPECTED_OUTPUTS else "sampled"
        if self.fisher == "sampled":
            eps = torch.randn(factor.shape[:2], generator=gen, dtype=torch.float64)
            probe = torch.einsum("bkc,bk->bc", factor, eps.to(factor))
            return cap.output_grads(out, probe, check=False)
        per_row = cap.output_grads_many(out, factor.transpose(0, 1))
        return [[row[i][0] for row in per_row] for i in range(len(self.layers))]

    def fit(
        self, engine: GradientEngine, data: BatchSource, *, damping: float | None, progress: bool
    ) -> None:
        plan = plan_layers(engine)
        self.model = plan.model
        layers: list[Any] = [_layer_for(spec, engine) for spec in plan.layers]
        own = dict(plan.own_block)
        start, x, y = next(iter(data))
        unusable, n_out = check_hooks(engine, layers, self.model, start, x, y)
        for layer in layers:
            if layer.path in unusable:
                for name in (layer.weight, layer.bias):
                    if name:
                        own[name] = f"{layer.path}: {unusable[layer.path]}"
        self.layers = [layer for layer in layers if layer.path not in unusable]
        for layer in self.layers:  # hooked diagonal blocks are named like the module plan's
            what = {"norm": "normalisation scale/shift", "embedding": "embedding table"}
            for name in (layer.weight, layer.bias) if layer.kind in what else ():
                if name:
                    own.setdefault(name, f"{layer.path}: {what[layer.kind]}")
            if getattr(layer, "donor", None) is not None:
                own[layer.weight] = (
                    f"{layer.path}: embedding table looked up with indices shared by the batch; "
                    f"its per-example gradients are {layer.donor.path}'s output gradients "
                    f"(checked against autograd)"
                )
        self.own_reasons = own
        hooked = {n for layer in self.layers for n in (layer.weight, layer.bias) if n}
        names = [n for n in engine.names if n in own and n not in hooked]
        self.block = DiagonalBlock(engine, names) if names else None
        if own:
            log.info(
                "%s: %d parameter tensor(s) get their own diagonal block: %s",
                self.name,
                len(own),
                list(own.values())[:6],
            )
        if self.fisher is None:
            big = sum(layer.n_params for layer in self.layers) > MAX_EXPECTED_PARAMS
            self.fisher = "expected" if n_out <= MAX_EXPECTED_OUTPUTS and not big else "sampled"
        self.n_covered = sum(
            layer.n_params for layer in self.layers if isinstance(layer, KronLayer)
        )
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        n = len(data)
        self._fisher_sweep(
            engine, data, gen, "factors", progress, "accumulate_factors", diagonal=True
        )
        for layer in self.layers:
            layer.eigendecompose(n)
        if self.refit_eigenvalues and self.layers:
            self._fisher_sweep(engine, data, gen, "eigenvalues", progress, "accumulate_eigenvalues")
        for layer in self.layers:
            layer.finish_eigenvalues(n, refit=self.refit_eigenvalues)
        trace = sum(float(layer.eigenvalues.sum()) for layer in self.layers)
        if self.block is not None:
            self.block.finish(n)
            trace += float(self.block.diag.sum())
        if not np.isfinite(trace):
            raise CurvatureError(f"{self.name} eigenvalues are NaN or inf")
        self.mean_eigenvalue = trace / max(engine.n_params, 1)
        self.damping = (
            default_damping(trace, engine.n_params) if damping is None else float(damping)
        )
        for layer in self.layers:
            layer.set_damping(self.damping, engine.dtype)
        if self.block is not None:
            self.block.set_damping(self.damping)
        self.bind(engine)

    def _fisher_sweep(
        self,
        engine: GradientEngine,
        data: BatchSource,
        gen: torch.Generator,
        what: str,
        progress: bool,
        update: str,
        *,
        diagonal: bool = False,
    ) -> None:
        """One pass over ``data`` feeding each layer's method ``update`` (activations, grads),
        and the diagonal block when ``diagonal``."""
        bar = tqdm(
            data,
            total=data.n_batches,
            desc=f"{self.name} {what}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for start, x, y in bar:
            if self.layers:
                with LayerCapture(engine, self.layers, start, x, y, model=self.model) as cap:
                    grads = self._fisher_grads(cap, gen)
                    for layer, acts, gs in zip(self.layers, cap.inputs, grads, strict=True):
                        getattr(layer, update)(acts, gs)
            if diagonal and self.block is not None:
                assert self.fisher is not None
                self.block.accumulate(start, x, y, self.fisher, gen)

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
            s = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            if self.layers:
                with LayerCapture(engine, self.layers, start, x, y, model=self.model) as cap:
                    grads = cap.output_grads(
                        engine.objective.loss(cap.output, y).sum(), check=False
                    )
                    for layer, acts, gs in zip(self.layers, cap.inputs, grads, strict=True):
                        s += layer.self_scores(acts, gs[0])
            if self.block is not None:
                s += self.block.self_scores(start, x, y)
            if not bool(torch.isfinite(s).all()):
                rows = (torch.nonzero(~torch.isfinite(s)).flatten()[:5] + start).tolist()
                raise NonFiniteError(f"{self.name} scores are NaN or inf for example(s) {rows}")
            out[start : start + x.shape[0]] = s.cpu().numpy()
        return out

    def _split(self, grads: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self._names, torch.split(grads, self._sizes, dim=1), strict=True))

    def _block_part(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.block is not None
        return torch.cat([parts[n] for n in self.block.names], dim=1)

    def quadratic(self, grads: torch.Tensor) -> torch.Tensor:
        parts = self._split(grads)
        s = torch.zeros(grads.shape[0], dtype=torch.float64, device=grads.device)
        for layer in self.layers:
            s += layer.quadratic_flat(parts)
        if self.block is not None:
            s += self.block.quadratic_flat(self._block_part(parts))
        return s

    def _assemble(self, solved: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        return torch.cat([solved[n] for n in self._names], dim=1).to(like.dtype)

    def _block_items(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.block is not None
        sizes = self.block.engine.sizes
        return dict(zip(self.block.names, torch.split(values, sizes, dim=1), strict=True))

    def solve(self, grads: torch.Tensor) -> torch.Tensor:
        parts = self._split(grads)
        solved: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            solved.update(layer.solve_flat(parts))
        if self.block is not None:
            solved.update(self._block_items(self.block.solve_flat(self._block_part(parts))))
        return self._assemble(solved, grads)

    def filter_parameters(self, theta: torch.Tensor, strength: float) -> tuple[torch.Tensor, float]:
        """Each eigen-direction scaled by ``(Lambda + lambda) / (Lambda + lambda')``."""
        lam_f = max(strength * self.mean_eigenvalue, self.damping)
        rows = theta.double().unsqueeze(0)
        parts = self._split(rows)
        out: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            out.update(layer.filter_flat(parts, self.damping, lam_f))
        if self.block is not None:
            shrunk = self.block.filter(self._block_part(parts), self.damping, lam_f)
            out.update(self._block_items(shrunk))
        return self._assemble(out, rows).squeeze(0), lam_f

    def output_leverage(
        self,
        engine: GradientEngine,
        start: int,
        x: torch.Tensor,
        y: torch.Tensor,
        residual: Callable[[torch.Tensor], torch.Tensor],
    ) -> OutputLeverage:
        """Leverage blocks from the eigenbasis: one backward pass per model output (batched),
        per-layer rotations of the captured factors, never a whole-model gradient."""
        with LayerCapture(engine, self.layers, start, x, y, model=self.model) as cap:
            logits = cap.output.detach().double()
            b, c = logits.shape
            r = residual(logits)
            lev = torch.zeros(b, c, c, dtype=torch.float64, device=logits.device)
            g2 = torch.zeros(b, dtype=torch.float64, device=logits.device)
            s2 = torch.zeros_like(g2)
            if self.layers:
                eye = torch.eye(c, dtype=cap.output.dtype, device=logits.device)
                per_out = cap.output_grads_many(cap.output, eye.unsqueeze(1).expand(c, b, c))
                for i, layer in enumerate(self.layers):
                    g = torch.stack([per_out[k][i][0] for k in range(c)], dim=1)
                    lv, gg, ss = layer.leverage(cap.inputs[i], g, r)
                    lev += lv
                    g2 += gg
                    s2 += ss
        if self.block is not None:
            lv, gg, ss = self.block.leverage(x, r)
            lev += lv
            g2 += gg
            s2 += ss
        finite = torch.isfinite(lev.reshape(b, -1)).all(1) & torch.isfinite(s2)
        if not bool(finite.all()):
            rows = (torch.nonzero(~finite).flatten()[:5] + start).tolist()
            raise NonFiniteError(f"{self.name} leverage is NaN or inf for example(s) {rows}")
        return OutputLeverage(logits, lev, g2.sqrt(), s2.sqrt())

    def bind(self, engine: GradientEngine) -> None:
        """Remember the engine's flat layout (for ``quadratic``/``solve`` on flat gradients)."""
        self._names = list(engine.names)
        self._sizes = list(engine.sizes)
        self._shapes = dict(zip(engine.names, engine.shapes, strict=True))
        for layer in self.layers:
            layer.bind_shapes(self._shapes)

    def describe(self) -> dict[str, Any]:
        own: list[dict[str, object]] = [
            {
                "param": n,
                "size": int(self._sizes[self._names.index(n)]),
                "reason": self.own_reasons[n],
            }
            for layer in self.layers
            if isinstance(layer, NormLayer | EmbeddingLayer)
            for n in (layer.weight, layer.bias)
            if n
        ]
        if self.block is not None:
            own += self.block.describe(self.own_reasons)
        own.sort(key=lambda d: self._names.index(str(d["param"])))
        return {
            **super().describe(),
            "fisher": self.fisher,
            "layers": [layer.describe() for layer in self.layers],
            "covered_params": self.n_covered,
            "own_block": own,
            "own_block_params": 0 if self.block is None else self.block.n_params,
        }


@register_backend("kfac")
class KFACBackend(EKFACBackend):
    """K-FAC: the same Kronecker factors, eigenvalues ``lambda_S x lambda_A / T`` (no refit)."""

    refit_eigenvalues = False
