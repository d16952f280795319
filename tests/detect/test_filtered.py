"""Curvature-filtered model: one step with the fitted factorisation, checked against the
eigendecomposition of the exact matrix; back-ends without a factorisation are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infgate.detect.filtered import filtered_probabilities
from infgate.errors import InvalidInputError
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


def test_exact_filter_keeps_each_eigendirection_in_proportion() -> None:
    scorer = _scorer()
    h = scorer.backend.h  # type: ignore[attr-defined]
    lam = scorer.backend.damping
    theta = scorer.engine.flatten(scorer.engine.params).double()
    got, lam_f = scorer.backend.filter_parameters(theta, 0.1)  # type: ignore[attr-defined]
    evals, evecs = torch.linalg.eigh(h)
    assert lam_f == pytest.approx(max(0.1 * float(evals.mean()), lam), rel=1e-9)
    want = evecs @ (((evals + lam) / (evals + lam_f)) * (evecs.T @ theta))
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_backends_without_a_factorisation_are_refused() -> None:
    base = _scorer()
    x = torch.cat([x for _, x, _ in base.train])
    y = torch.cat([y for _, _, y in base.train])
    cg = InfluenceScorer(base.engine.model, (x, y), method="cg", damping=WEIGHT_DECAY,
                         progress=False)  # fmt: skip
    with pytest.raises(InvalidInputError, match=r"'cg' \(CGBackend\) has none.*'ekfac'"):
        filtered_probabilities(cg)
    with pytest.raises(InvalidInputError, match="strength must be"):
        filtered_probabilities(base, strength=-1.0)


def test_zero_strength_filter_returns_the_model_outputs() -> None:
    scorer = _scorer()
    x = torch.cat([x for _, x, _ in scorer.train])
    with torch.no_grad():
        p = torch.softmax(scorer.engine.outputs(x), 1).numpy()
    # lambda' = max(0, damping) = damping: theta' = theta exactly.
    np.testing.assert_allclose(filtered_probabilities(scorer, strength=0.0), p, atol=1e-9)
    shrunk = filtered_probabilities(scorer, strength=0.1)
    assert np.abs(shrunk - p).max() > 1e-5  # a real filter moves the outputs
