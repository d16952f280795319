"""The curvature-filtered model: the fit with the few-example directions taken out.

Self-influence ``s_i = sum_k (v_k^T g_i)^2 / (h_k + lambda)`` (eigenpairs ``(h_k, v_k)`` of the
curvature ``H``) is large exactly for examples that pull on LOW-curvature directions:
directions that only a handful of training examples determine, which is where a model
stores what it memorized, mislabeled examples included. One Newton step of the training
objective towards a stronger ridge penalty ``lambda' > lambda`` (Koh & Liang 2017, Sec. 2.1
applied to the regularizer instead of one example) gives

    theta' = theta - (H + lambda' I)^{-1} (lambda' - lambda) theta
           = (H + lambda' I)^{-1} (H + lambda I) theta,

which keeps each eigen-direction in proportion ``(h_k + lambda) / (h_k + lambda')``: the
well-supported directions are untouched and the memorized ones shrink. Outputs of the
filtered model ``theta'`` are what the model says about an example once nothing it could
only have learned from a few examples is left; a label that disagrees with them is
suspect. ``lambda' = 0.1 x mean eigenvalue of H`` (scale-free; fixed on the development
grid, see :func:`infgate.detect.find_label_errors`). No retraining: one linear solve with
the curvature already fitted, one forward pass.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from infgate.influence import InfluenceScorer
from tqdm.auto import tqdm

__all__ = ["FILTER_STRENGTH", "filtered_probabilities"]

log = logging.getLogger(__name__)

#: lambda' / mean eigenvalue of H.
FILTER_STRENGTH = 0.1


def _gauss_newton_matvec(scorer: InfluenceScorer, v: torch.Tensor) -> torch.Tensor:
    """``H v`` for the Gauss-Newton matrix of the mean training loss, streamed."""
    out = torch.zeros_like(v)
    for start, x, y in scorer.train:
        u = scorer.engine.factor_grads(start, x, y).double()  # (B, K, P)
        out += torch.einsum("bkp,bk->p", u, torch.einsum("bkp,p->bk", u, v))
    return out / len(scorer.train)


def _curvature_trace(scorer: InfluenceScorer) -> float:
    total = 0.0
    for start, x, y in scorer.train:
        total += float(scorer.engine.factor_grads(start, x, y).double().pow(2).sum())
    return total / len(scorer.train)


def _solve_cg(scorer: InfluenceScorer, b: torch.Tensor, shift: float, iters: int) -> torch.Tensor:
    """Conjugate gradients on ``(H + shift I) x = b`` with streamed Gauss-Newton products."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = float(r @ r)
    for _ in tqdm(
        range(iters), desc="filtered model (CG)", disable=not scorer.progress, leave=False
    ):
        ap = _gauss_newton_matvec(scorer, p) + shift * p
        alpha = rs / float(p @ ap)
        x += alpha * p
        r -= alpha * ap
        rs_new = float(r @ r)
        if rs_new <= 1e-20 * float(b @ b):
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def filtered_probabilities(
    scorer: InfluenceScorer, *, strength: float = FILTER_STRENGTH, cg_iters: int = 100
) -> np.ndarray:
    """Softmax outputs of the curvature-filtered model on the training data, ``(n, C)``.

    Uses the exact back-end's curvature matrix when available; otherwise conjugate
    gradients on streamed Gauss-Newton products (``cg_iters`` data sweeps at most).
    """
    engine = scorer.engine
    theta = engine.flatten(engine.params).double()
    lam = float(scorer.backend.damping)
    h = getattr(scorer.backend, "h", None)
    if isinstance(h, torch.Tensor):
        p = h.shape[0]
        lam_f = strength * float(torch.trace(h)) / p
        eye = torch.eye(p, dtype=h.dtype, device=h.device)
        rhs = h @ theta + lam * theta
        theta_f = torch.linalg.solve(h + max(lam_f, lam) * eye, rhs)
    else:
        lam_f = strength * _curvature_trace(scorer) / engine.n_params
        rhs = _gauss_newton_matvec(scorer, theta) + lam * theta
        theta_f = _solve_cg(scorer, rhs, max(lam_f, lam), cg_iters)
    log.info("filtered model: lambda' = %.3g (damping %.3g)", max(lam_f, lam), lam)
    params = engine.unflatten(theta_f.to(engine.dtype))
    probs = []
    with torch.no_grad():
        for _, x, _ in scorer.train:
            probs.append(torch.softmax(engine.forward(params, x).double(), dim=1).cpu())
    return torch.cat(probs).numpy()
