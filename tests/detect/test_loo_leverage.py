"""The leave-one-out step's leverage: below 1 for every row with the exact curvature, 1 or
more where a factored curvature under-represents a row's own directions, and said so."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from infgate.data.training import flip_labels
from infgate.detect import approximate_loo, find_label_errors
from infgate.examples.models import make_classifier, train_classifier
from infgate.influence import InfluenceScorer
from sklearn.datasets import load_digits


@pytest.fixture(scope="module")
def mlp() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A 32-unit MLP fitted to 200 digits with 10% flipped labels (more parameters, 2,410,
    than the 1,800 directions 200 rows of 10 classes span)."""
    d = load_digits()
    x = torch.as_tensor((d.data[:200] / 16.0).astype(np.float32))
    noisy, _ = flip_labels(d.target[:200], 0.1, 10, np.random.default_rng(0))
    y = torch.as_tensor(noisy)
    model = make_classifier(64, 10, hidden=(32,), generator=torch.Generator().manual_seed(0))
    train_classifier(model, x, y, weight_decay=1e-3, max_iter=200)
    return model, x, y


def test_exact_curvature_keeps_every_leverage_below_one(mlp: tuple) -> None:  # type: ignore[type-arg]
    """``H - H_i / n = (1/n) sum_{j != i} H_j + lambda I`` is positive definite, so every
    eigenvalue of ``L_i M_i / n`` is below 1 (measured max 0.90)."""
    model, x, y = mlp
    loo = approximate_loo(InfluenceScorer(model, (x, y), method="exact", damping=1e-3))
    assert loo.leverage.shape == (200,)
    assert 0.0 < loo.leverage.max() < 1.0
    assert loo.leverage_violation_rate == 0.0


@pytest.mark.parametrize("method", ["ekfac", "kfac"])
def test_factored_curvature_violations_are_measured_and_reported(
    mlp: tuple,  # type: ignore[type-arg]
    method: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The Kronecker-factored fits put less curvature in each row's own directions than the
    row itself contributes: leverage up to ~8 and 1 or more on 43-45% of the rows (measured).
    The rate reaches ``df.attrs`` and a warning, the ranking is computed all the same."""
    model, x, y = mlp
    scorer = InfluenceScorer(model, (x, y), method=method, damping=1e-3, progress=False)
    with caplog.at_level(logging.WARNING, logger="infgate.detect.label_errors"):
        df = find_label_errors(model, (x, y), scorer=scorer, progress=False)
    rate = df.attrs["loo_leverage_violation_rate"]
    assert 0.2 < rate < 0.8, rate
    assert any("leave-one-out leverage is 1 or more" in r.getMessage() for r in caplog.records)
    assert len(df) == 200 and np.isfinite(df["score"]).all()
