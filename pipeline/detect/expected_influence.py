"""The label-free influence-space strangeness score of unlabelled rows.

``E_{y ~ p(.|x)}[g_y^T (H + lambda I)^{-1} g_y] = tr(L(x) M(x))`` with ``L = diag(p) - p
p^T`` and ``M = J (H + lambda I)^{-1} J^T`` (``J`` the Jacobian of the logits in the
parameters; for cross-entropy ``g_y = J^T (p - e_y)`` and ``E_y[(p - e_y)(p - e_y)^T] =
L``). Higher = the row sits where the fitted curvature is thin (stranger).
"""

from __future__ import annotations

import numpy as np
import torch
from infgate.influence import InfluenceScorer
from infgate.influence.backends.base import CanWhiten

__all__ = ["on_scorer_device", "probs_and_expected_influence"]


def on_scorer_device(x: torch.Tensor, scorer: InfluenceScorer) -> torch.Tensor:
    """A batch on the scorer's device; floats in its dtype, token ids left int64."""
    if x.is_floating_point():
        return x.to(scorer.device, scorer.engine.dtype)
    return x.to(scorer.device)


def probs_and_expected_influence(
    scorer: InfluenceScorer, x: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs and ``tr(L M)`` for unlabelled rows, in batches.

    A back-end with output-space leverage (:class:`CanWhiten`: exact, EK-FAC, Arnoldi)
    gives ``M`` from its factorisation; others take the Gauss-Newton factor rows, a
    ``(B, C, P)`` tensor (gigabytes for a million-parameter network).
    """
    sc = scorer
    if isinstance(sc.backend, CanWhiten):
        return _whitened_scores(sc, x, sc.backend)
    probs, scores = [], []
    for start in range(0, x.shape[0], sc.batch_size):
        xb = on_scorer_device(x[start : start + sc.batch_size], sc)
        dummy = torch.zeros(xb.shape[0], dtype=torch.long, device=sc.device)
        u = sc.engine.factor_grads(start, xb, dummy)  # (B, C, P); label-free for CE
        b, c, p = u.shape
        scores.append(sc.backend.quadratic(u.reshape(b * c, p)).reshape(b, c).sum(1))
        probs.append(torch.softmax(sc.engine.outputs(xb).double(), dim=1))
    return (
        torch.cat(probs).cpu().numpy(),
        torch.cat(scores).double().clamp_min(0).cpu().numpy(),
    )


def _whitened_scores(
    sc: InfluenceScorer, x: torch.Tensor, backend: CanWhiten
) -> tuple[np.ndarray, np.ndarray]:
    """``probs_and_expected_influence`` from ``M = J (H + lambda I)^{-1} J^T`` (one batched
    pass)."""
    probs, scores = [], []

    def residual(logits: torch.Tensor) -> torch.Tensor:  # unused by tr(L M)
        return torch.softmax(logits, dim=1)

    for start in range(0, x.shape[0], sc.batch_size):
        xb = on_scorer_device(x[start : start + sc.batch_size], sc)
        dummy = torch.zeros(xb.shape[0], dtype=torch.long, device=sc.device)
        piece = backend.output_leverage(sc.engine, start, xb, dummy, residual)
        p = torch.softmax(piece.logits.double(), dim=1)
        cov = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # L(x)
        scores.append(torch.einsum("bcd,bdc->b", cov, piece.leverage.double()))
        probs.append(p)
    return (
        torch.cat(probs).cpu().numpy(),
        torch.cat(scores).clamp_min(0).cpu().numpy(),
    )
