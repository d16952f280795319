"""Diagonal curvature of normalisation layers' scale and shift, from forward hooks.

A BatchNorm (eval mode), LayerNorm or GroupNorm computes ``o = gamma * xhat + beta`` per
channel, so example b's gradient is ``d gamma = sum_t ds_bt * xhat_bt`` and
``d beta = sum_t ds_bt`` over its locations ``t``: both come from the captured input and the
batched output gradient, as EK-FAC's factors do, without a per-example backward pass (a
``vmap`` over a 1M-parameter CNN costs ~10x the whole EK-FAC sweep on CPU). The block's
curvature is its Gauss-Newton diagonal, ``(H + lambda I)^{-1} = diag(1 / (d + lambda))``.
It follows :class:`~infgate.influence.backends.kfac_layers.KronLayer`'s interface so the
EK-FAC back-end treats both alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from infgate.influence.backends.layer_plan import LayerSpec
from infgate.influence.gradients import GradientEngine
from torch import nn

__all__ = ["NormLayer"]


class NormLayer:
    """Per-channel scale/shift of one normalisation module, diagonal curvature."""

    refit = False

    def __init__(self, spec: LayerSpec, engine: GradientEngine) -> None:
        self.spec = spec
        self.path, self.module = spec.path, spec.module
        self.weight, self.bias = spec.weight, spec.bias
        self.kind = "norm"
        self.out_dim = spec.out_dim
        self.n_params = self.out_dim * ((1 if self.weight else 0) + (1 if self.bias else 0))
        pre = "" if spec.path == "<root>" else f"{spec.path}."
        self.stats = (engine.fixed.get(f"{pre}running_mean"), engine.fixed.get(f"{pre}running_var"))
        self.diag_sum: torch.Tensor | None = None
        self.eigenvalues = torch.empty(0)

    # -- layout ----------------------------------------------------------------------------
    def activations(self, raw: torch.Tensor) -> torch.Tensor:
        """``(B, T, C)`` normalised inputs ``xhat`` (before scale and shift)."""
        m = self.module
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            mean, var = self.stats
            assert mean is not None and var is not None
            shape = (1, -1) + (1,) * (raw.dim() - 2)
            xhat = (raw - mean.view(shape)) / torch.sqrt(var.view(shape) + m.eps)
            return self._channels_last(xhat)
        if isinstance(m, nn.GroupNorm):
            return self._channels_last(F.group_norm(raw, m.num_groups, eps=m.eps))
        assert isinstance(m, nn.LayerNorm)
        xhat = F.layer_norm(raw, m.normalized_shape, eps=m.eps)
        return xhat.reshape(raw.shape[0], -1, self.out_dim)

    def _channels_last(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2)

    def output_rows(self, g: torch.Tensor) -> torch.Tensor:
        if isinstance(self.module, nn.LayerNorm):
            return g.reshape(g.shape[0], -1, self.out_dim)
        return self._channels_last(g)

    def per_example(self, acts: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``(..., P_layer)`` gradients ``[d gamma, d beta]`` from ``(..., T, C)`` inputs."""
        parts = []
        if self.weight:
            parts.append((g * acts.to(g.dtype)).sum(-2))
        if self.bias:
            parts.append(g.sum(-2))
        return torch.cat(parts, dim=-1).double()

    def per_example_grads(self, acts: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (B, C)}`` per-example gradients (for checks on a few rows)."""
        names = [n for n in (self.weight, self.bias) if n]
        parts = torch.split(self.per_example(acts, g), self.out_dim, dim=1)
        return dict(zip(names, parts, strict=True))

    # -- fitting (the KronLayer interface) ---------------------------------------------------
    def accumulate_factors(self, acts: torch.Tensor, grads: list[torch.Tensor]) -> None:
        total = self.diag_sum if self.diag_sum is not None else 0
        for g in grads:
            total = total + self.per_example(acts, g).pow(2).sum(0)
        assert isinstance(total, torch.Tensor)
        self.diag_sum = total

    def eigendecompose(self, n: int) -> None:
        assert self.diag_sum is not None
        self.eigenvalues = self.diag_sum / n

    def accumulate_eigenvalues(self, acts: torch.Tensor, grads: list[torch.Tensor]) -> None:
        return None  # the diagonal is already exact per coordinate

    def finish_eigenvalues(self, n: int, *, refit: bool) -> None:
        return None

    def set_damping(self, damping: float, dtype: torch.dtype) -> None:
        self.inv = 1.0 / (self.eigenvalues + damping)

    def bind_shapes(self, shapes: dict[str, torch.Size]) -> None:
        return None

    # -- queries ---------------------------------------------------------------------------
    def self_scores(self, acts: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (self.per_example(acts, g).pow(2) * self.inv).sum(1)

    def _flat(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([parts[n] for n in (self.weight, self.bias) if n], dim=1).double()

    def _unflat(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        names = [n for n in (self.weight, self.bias) if n]
        return dict(zip(names, torch.split(v, self.out_dim, dim=1), strict=True))

    def quadratic_flat(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self._flat(parts).pow(2) * self.inv).sum(1)

    def solve_flat(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._unflat(self._flat(parts) * self.inv)

    def filter_flat(
        self, parts: dict[str, torch.Tensor], lam: float, lam_f: float
    ) -> dict[str, torch.Tensor]:
        d = self.eigenvalues
        return self._unflat(self._flat(parts) * (d + lam) / (d + lam_f))

    def leverage(
        self, acts: torch.Tensor, g: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(M, ||g||^2, ||A^{-1} g||^2)`` of this block; ``g`` is ``(B, C, T, C_norm)``."""
        jac = self.per_example(acts.unsqueeze(1), g)  # (B, C, P_layer)
        z = jac * self.inv.sqrt()
        lev = torch.einsum("bcp,bdp->bcd", z, z)
        gr = torch.einsum("bc,bcp->bp", r.double(), jac)
        return lev, gr.pow(2).sum(1), (gr * self.inv).pow(2).sum(1)

    def describe(self) -> dict[str, Any]:
        ev = self.eigenvalues
        return {
            "layer": self.path,
            "kind": "norm (diagonal)",
            "params": [n for n in (self.weight, self.bias) if n],
            "shape": [self.n_params],
            "top_eigenvalue": float(ev.max()) if ev.numel() else None,
        }
