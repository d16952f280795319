"""Small reference models and a deterministic trainer (demo, tests, benchmarks).

Influence functions assume the model sits at a minimum of its training objective
(Koh & Liang 2017, Sec. 2), so the trainer runs full-batch L-BFGS to convergence with L2
weight decay rather than a few epochs of SGD.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from infgate.errors import InvalidInputError
from torch import nn

__all__ = ["make_classifier", "train_classifier"]

log = logging.getLogger(__name__)


def make_classifier(
    n_features: int,
    n_classes: int,
    *,
    hidden: Sequence[int] = (),
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """Softmax regression (``hidden=()``) or a tanh MLP with the given hidden widths."""
    if n_features < 1 or n_classes < 2:
        raise InvalidInputError(
            f"need n_features >= 1 and n_classes >= 2, got {n_features} and {n_classes}"
        )
    layers: list[nn.Module] = []
    width = n_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.Tanh()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    model = nn.Sequential(*layers).to(dtype)
    if generator is not None:
        with torch.no_grad():
            for p in model.parameters():
                bound = 1.0 / np.sqrt(p.shape[-1]) if p.ndim > 1 else 0.0
                p.copy_(torch.empty_like(p).uniform_(-bound, bound, generator=generator))
    return model


def train_classifier(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    weight_decay: float = 1e-3,
    max_iter: int = 500,
    tolerance: float = 1e-9,
    sample_weight: torch.Tensor | None = None,
) -> nn.Module:
    """Minimise mean cross-entropy + ``weight_decay/2 * ||theta||^2`` with L-BFGS, in place.

    Args:
        model: module to train (its current parameters are the warm start).
        features: ``(n, d)`` inputs.
        labels: ``(n,)`` class indices.
        weight_decay: L2 strength; use it as ``damping`` for exact influence.
        max_iter: L-BFGS iterations.
        tolerance: gradient-norm tolerance.
        sample_weight: optional per-example weights (e.g. 0 to leave an example out); the
            mean is still over all n examples, matching the up-weighting in Koh & Liang.

    Returns:
        The same model, in eval mode.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=tolerance * 1e-3,
        history_size=50,
        line_search_fn="strong_wolfe",
    )
    n = features.shape[0]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        per = F.cross_entropy(model(features), labels, reduction="none")
        data_loss = (per * sample_weight).sum() / n if sample_weight is not None else per.mean()
        reg = 0.5 * weight_decay * sum(p.pow(2).sum() for p in params)
        loss = data_loss + reg
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    model.eval()
    return model
