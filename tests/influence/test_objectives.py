"""User objectives: closed-form least squares, and the generic output-Hessian factor."""

from __future__ import annotations

import numpy as np
import torch
from infgate.influence import MSEObjective, Objective, self_influence
from torch import nn


def _regression() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(120, 4, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]], dtype=torch.float64)
    y = y + 0.1 * torch.randn(120, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, x, y


def test_least_squares_closed_form():
    """For 0.5 (w^T x - y)^2, H = X^T X / n and g_i = r_i x_i: s_i = r_i^2 x_i^T A^-1 x_i."""
    model, x, y = _regression()
    damping = 0.01
    res = self_influence(model, (x, y), loss=MSEObjective(), damping=damping, progress=False)
    r = (x @ model.weight.detach().T - y).squeeze(1)
    a = x.T @ x / x.shape[0] + damping * torch.eye(4, dtype=torch.float64)
    lev = torch.einsum("ip,pq,iq->i", x, torch.linalg.inv(a), x)
    np.testing.assert_allclose(res.scores, (r**2 * lev).numpy(), rtol=1e-9)


class _HuberLike(Objective):
    """A user objective with no closed-form factor: the generic autograd path is used."""

    name = "log_cosh"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.cosh(outputs - targets)).sum(dim=1)


def test_generic_factor_matches_closed_form_hessian():
    model, x, y = _regression()
    res = self_influence(model, (x, y), loss=_HuberLike(), damping=0.01, progress=False)
    r = (x @ model.weight.detach().T - y).squeeze(1)
    # d/dw log cosh(r) = tanh(r) x ; d2 = sech^2(r) x x^T.
    g = torch.tanh(r).unsqueeze(1) * x
    h = (x * (1 / torch.cosh(r) ** 2).unsqueeze(1)).T @ x / x.shape[0]
    a = h + 0.01 * torch.eye(4, dtype=torch.float64)
    ref = torch.einsum("ip,pq,iq->i", g, torch.linalg.inv(a), g)
    np.testing.assert_allclose(res.scores, ref.numpy(), rtol=1e-9)
