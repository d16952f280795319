"""``method="auto"``: exact when the selected parameters fit, else EK-FAC (else Arnoldi)."""

from __future__ import annotations

from typing import Any

from infgate.errors import InvalidInputError
from infgate.influence.backends.base import available_backends
from infgate.influence.backends.kfac_layers import find_layers
from infgate.influence.gradients import GradientEngine

__all__ = ["AUTO_EXACT_MAX_PARAMS", "auto_options", "choose_method"]

#: Above this many selected parameters ``auto`` stops forming the exact matrix: at 20k
#: the float64 matrix is 3.2 GB and its Cholesky ~2.7 TFLOP, minutes on a laptop CPU.
AUTO_EXACT_MAX_PARAMS = 20_000


def choose_method(engine: GradientEngine) -> tuple[str, str]:
    """The back-end ``auto`` picks for this model and parameter selection, and why."""
    p = engine.n_params
    gb = p * p * 8 / 1e9
    if p <= AUTO_EXACT_MAX_PARAMS:
        return "exact", (
            f"{p:,} selected parameters <= {AUTO_EXACT_MAX_PARAMS:,}: the exact {p:,} x {p:,} "
            f"curvature fits ({gb:.2g} GB in float64)"
        )
    layers, uncovered = find_layers(engine)
    if layers:
        covered = sum(layer.n_params for layer in layers)
        why = (
            f"{p:,} selected parameters > {AUTO_EXACT_MAX_PARAMS:,} (the exact matrix would "
            f"take {gb:.3g} GB): EK-FAC covers {covered:,} of them in {len(layers)} "
            f"Linear/Conv2d layer(s)"
        )
        if uncovered:
            why += f"; not covered (no influence from them): {uncovered[:6]}"
        return "ekfac", why
    return "arnoldi", (
        f"{p:,} selected parameters > {AUTO_EXACT_MAX_PARAMS:,} and none sits in a "
        f"Linear/Conv2d layer EK-FAC could factor: using the matrix-free Arnoldi back-end"
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
