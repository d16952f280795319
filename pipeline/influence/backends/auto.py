"""``method="auto"``: exact when the selected parameters fit a budget, else EK-FAC.

The rule, stated once:

1. **Exact** when the exact back-end's peak memory, about
   :data:`AUTO_EXACT_PEAK_MATRICES` float64 ``P x P`` matrices for ``P`` selected parameters
   (the curvature, its damped copy, the Cholesky factor and its inverse), fits
   :data:`AUTO_EXACT_MAX_BYTES` (4 GB, so ``P <= 11,180``; the Cholesky then costs at most
   ``P^3 / 3 = 0.47`` TFLOP, seconds to a minute on a laptop CPU).
2. Otherwise **EK-FAC**: Linear / Conv1d / Conv2d weights and biases, and self-attention's
   in- and out-projections, are Kronecker-factored; norms and embedding tables get exact
   diagonal blocks from the same hooks; every other selected parameter of a known kind
   (position tables shared by the batch, tied weights, cross-attention projections, layers
   whose weights the forward uses without calling the module, transposed and 3-D
   convolutions, custom modules holding raw parameters) gets its own exact diagonal block
   from per-example gradients, named with the reason in ``CurvatureChoice.own_block`` (see
   :mod:`~infgate.influence.backends.layer_plan`); nothing is dropped silently. Works on
   MLflow ``pt2`` GraphModules through the graph's linear/conv/embedding calls.

What was chosen and why is a :class:`CurvatureChoice` (``InfluenceScorer.choice``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from infgate.errors import InvalidInputError
from infgate.influence.backends.base import Backend, available_backends
from infgate.influence.gradients import GradientEngine

__all__ = [
    "AUTO_EXACT_MAX_BYTES",
    "AUTO_EXACT_MAX_PARAMS",
    "AUTO_EXACT_PEAK_MATRICES",
    "CurvatureChoice",
    "auto_options",
    "choose_method",
    "curvature_choice",
]

#: Peak-memory budget of the exact back-end under ``auto``.
AUTO_EXACT_MAX_BYTES = 4e9
#: float64 P x P matrices alive at the exact back-end's peak (measured: a 20k-parameter fit
#: peaked at 19 GB resident before the damped copy stopped using an identity matrix).
AUTO_EXACT_PEAK_MATRICES = 4
#: The parameter count that budget allows, ``sqrt(4e9 / (4 x 8))`` = 11,180.
AUTO_EXACT_MAX_PARAMS = math.isqrt(int(AUTO_EXACT_MAX_BYTES) // (8 * AUTO_EXACT_PEAK_MATRICES))


@dataclass(frozen=True)
class CurvatureChoice:
    """Which curvature a scorer fitted, why, and what each parameter got.

    Attributes:
        method: the back-end fitted (``"exact"``, ``"ekfac"``...).
        reason: one sentence: the rule that picked it (or ``"method=... given"``).
        requested: what the caller asked for (``"auto"`` or a back-end name).
        n_params: selected parameters.
        covered: parameter names the main curvature covers (all of them for exact;
            the Kronecker-factored ones for EK-FAC).
        own_block: ``{name: reason}`` for parameters in EK-FAC's own diagonal block.
        left_out: ``{name: reason}`` for model parameters that get no influence (not
            selected by ``params=`` or frozen).
    """

    method: str
    reason: str
    requested: str
    n_params: int
    covered: tuple[str, ...] = ()
    own_block: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.method or not self.reason:
            raise InvalidInputError(
                f"CurvatureChoice needs a method and a reason, got {self.method!r}, {self.reason!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for MLflow params, the store and the report."""
        out = asdict(self)
        out["covered"] = list(self.covered)
        return out


def choose_method(engine: GradientEngine) -> tuple[str, str]:
    """The back-end ``auto`` picks for this model and parameter selection, and why.

    Raises:
        InvalidInputError: above the exact budget, a selected parameter of a kind EK-FAC
            can neither factor nor give a diagonal block (names the module).
    """
    p = engine.n_params
    gb = AUTO_EXACT_PEAK_MATRICES * p * p * 8 / 1e9
    budget = f"{AUTO_EXACT_MAX_BYTES / 1e9:.2g} GB"
    if p <= AUTO_EXACT_MAX_PARAMS:
        return "exact", (
            f"{p:,} selected parameters <= {AUTO_EXACT_MAX_PARAMS:,}: the exact back-end's "
            f"peak ({AUTO_EXACT_PEAK_MATRICES} float64 {p:,} x {p:,} matrices, {gb:.2g} GB) "
            f"fits the {budget} budget"
        )
    from infgate.influence.backends.layer_plan import plan_layers

    plan = plan_layers(engine)
    covered = sum(engine.sizes[engine.names.index(n)] for n in plan.factored_names)
    why = (
        f"{p:,} selected parameters > {AUTO_EXACT_MAX_PARAMS:,} (the exact back-end would peak "
        f"at {gb:.3g} GB, budget {budget}): EK-FAC factors {covered:,} of them in "
        f"{sum(s.kind not in ('norm', 'embedding') for s in plan.layers)} Linear/Conv/attention "
        f"layer(s)"
    )
    if plan.own_block:
        names = list(plan.own_block)
        more = f" and {len(names) - 4} more" if len(names) > 4 else ""
        why += f"; own diagonal block for {', '.join(names[:4])}{more}"
    return "ekfac", why


def curvature_choice(
    engine: GradientEngine, backend: Backend, *, requested: str, reason: str | None
) -> CurvatureChoice:
    """The :class:`CurvatureChoice` of a fitted ``backend`` (after fit: EK-FAC only knows
    which layers its forward pass never calls once it has run one)."""
    own: dict[str, str] = dict(getattr(backend, "own_reasons", {}) or {})
    covered = tuple(n for n in engine.names if n not in own)
    selected = set(engine.names)
    left = {
        n: (
            "frozen (requires_grad=False)"
            if not p.requires_grad
            else "not selected by params= (no influence flows through it)"
        )
        for n, p in engine.model.named_parameters()
        if n not in selected
    }
    return CurvatureChoice(
        method=backend.name,
        reason=reason or f"method={requested!r} given",
        requested=requested,
        n_params=engine.n_params,
        covered=covered,
        own_block=own,
        left_out=left,
    )


def auto_options(picked: str, backend_options: dict[str, Any] | None) -> dict[str, Any]:
    """Options for the picked back-end: with ``auto`` they are keyed by back-end name."""
    if not backend_options:
        return {}
    names = set(available_backends())
    if not set(backend_options) <= names:
        raise InvalidInputError(
            f"with method='auto', backend_options must be keyed by back-end name (e.g. "
            f"{{'ekfac': {{'fisher': 'sampled'}}}}); got keys {sorted(backend_options)}"
        )
    opts = backend_options.get(picked, {})
    if not isinstance(opts, dict):
        raise InvalidInputError(f"backend_options[{picked!r}] must be a dict, got {opts!r}")
    return dict(opts)
