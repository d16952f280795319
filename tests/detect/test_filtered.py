"""Curvature-filtered model: streamed products and CG agree with the exact matrix."""

from __future__ import annotations

import numpy as np
import torch
from infgate.detect.filtered import (
    _curvature_trace,
    _gauss_newton_matvec,
    _solve_cg,
    filtered_probabilities,
)
from infgate.examples.models import make_classifier, train_classifier
from infgate.influence import InfluenceScorer
from sklearn.datasets import load_breast_cancer

from .conftest import WEIGHT_DECAY


def _scorer() -> InfluenceScorer:
    d = load_breast_cancer()
    x = torch.as_tensor(((d.data - d.data.mean(0)) / d.data.std(0)).astype(np.float64)[:200])
    y = torch.as_tensor(d.target[:200])
    model = make_classifier(
        30, 2, hidden=(4,), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    train_classifier(model, x, y, weight_decay=WEIGHT_DECAY, max_iter=50)  # needn't converge
    return InfluenceScorer(model, (x, y), damping=WEIGHT_DECAY, progress=False, batch_size=64)


def test_streamed_products_and_cg_match_the_exact_matrix() -> None:
    scorer = _scorer()
    h = scorer.backend.h  # type: ignore[attr-defined]
    v = torch.randn(h.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_gauss_newton_matvec(scorer, v), h @ v, rtol=1e-9, atol=1e-10)
    assert abs(_curvature_trace(scorer) - float(torch.trace(h))) < 1e-8 * float(torch.trace(h))
    shift = 0.1 * float(torch.trace(h)) / h.shape[0]
    direct = torch.linalg.solve(h + shift * torch.eye(h.shape[0], dtype=h.dtype), v)
    torch.testing.assert_close(_solve_cg(scorer, v, shift, 150), direct, rtol=1e-6, atol=1e-8)


def test_zero_strength_filter_returns_the_model_outputs() -> None:
    scorer = _scorer()
    x = torch.cat([x for _, x, _ in scorer.train])
    with torch.no_grad():
        p = torch.softmax(scorer.engine.outputs(x), 1).numpy()
    # lambda' = max(0, damping) = damping: theta' = theta exactly.
    np.testing.assert_allclose(filtered_probabilities(scorer, strength=0.0), p, atol=1e-9)
    shrunk = filtered_probabilities(scorer, strength=0.1)
    assert np.abs(shrunk - p).max() > 1e-5  # a real filter moves the outputs
