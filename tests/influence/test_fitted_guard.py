"""One fitted-state guard for every back-end: queries before ``fit`` raise NotFittedError."""

from __future__ import annotations

import pytest
import torch
from infgate.errors import NotFittedError
from infgate.influence import InfluenceScorer, available_backends
from infgate.influence.backends.base import get_backend

from tests.influence.approx_helpers import default_mlp


@pytest.mark.parametrize("name", [n for n in available_backends() if n != "tracin"])
def test_queries_before_fit_name_the_class_and_the_call(name):
    backend = get_backend(name)
    g = torch.zeros(2, 5)
    with pytest.raises(NotFittedError, match=rf"{type(backend).__name__}\.quadratic\(\).*\.fit\("):
        backend.quadratic(g)
    with pytest.raises(NotFittedError, match=r"\.solve\(\)"):
        backend.solve(g)
    assert not backend.fitted


def test_fitted_backend_answers():
    model, x, y = default_mlp()
    sc = InfluenceScorer(model, (x, y), method="exact", damping=0.01, progress=False)
    assert sc.backend.fitted
    g = sc.gradients((x[:3], y[:3]))
    assert sc.backend.quadratic(g).shape == (3,)
