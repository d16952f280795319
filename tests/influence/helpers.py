"""Reference computations built by hand (explicit matrices, per-example loops) for the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

#: Shared tolerances: float64 references agree to 1e-6 relative; float32 runs to 1e-3.
RTOL64 = 1e-6
RTOL32 = 1e-3


def flat_params(model: nn.Module) -> tuple[torch.Tensor, list[tuple[str, torch.Size]]]:
    items = [(n, p.shape) for n, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return flat, items


def as_dict(flat: torch.Tensor, items: list[tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, shape in items:
        k = int(torch.Size(shape).numel())
        out[name] = flat[i : i + k].reshape(shape)
        i += k
    return out


def loop_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example gradients with a plain autograd loop, (n, P)."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def hand_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Hessian of the MEAN cross-entropy over flattened parameters (autograd.functional)."""
    flat, items = flat_params(model)

    def mean_loss(theta: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, as_dict(theta, items), (x,))
        return F.cross_entropy(out, y)

    return torch.autograd.functional.hessian(mean_loss, flat)  # type: ignore[return-value]


def hand_gauss_newton(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over examples of J_i^T (diag(p_i) - p_i p_i^T) J_i, with J_i built by autograd."""
    flat, items = flat_params(model)
    total = torch.zeros(flat.numel(), flat.numel(), dtype=flat.dtype)
    for i in range(x.shape[0]):

        def f(theta: torch.Tensor, xi: torch.Tensor = x[i : i + 1]) -> torch.Tensor:
            return functional_call(model, as_dict(theta, items), (xi,)).reshape(-1)

        jac = torch.autograd.functional.jacobian(f, flat)  # (C, P)
        p = torch.softmax(f(flat).detach(), dim=0)
        h_out = torch.diag(p) - torch.outer(p, p)
        total += jac.T @ h_out @ jac
    return total / x.shape[0]


def quad_scores(grads: torch.Tensor, curvature: torch.Tensor, damping: float) -> torch.Tensor:
    a = curvature + damping * torch.eye(curvature.shape[0], dtype=curvature.dtype)
    return torch.einsum("ip,ip->i", grads, torch.linalg.solve(a, grads.T).T)
