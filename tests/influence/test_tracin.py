"""TracIn back-end: gradient norms at the final parameters or summed over checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infgate.errors import InvalidInputError
from infgate.influence import InfluenceScorer, self_influence

from tests.influence.approx_helpers import default_mlp, one_thread
from tests.influence.helpers import loop_grads

__all__ = ["one_thread"]


@pytest.fixture(scope="module")
def case():
    return default_mlp()


def test_plain_gradient_norm(case):
    model, x, y = case
    res = self_influence(model, (x, y), method="tracin", progress=False)
    ref = loop_grads(model, x, y).pow(2).sum(1).numpy()
    np.testing.assert_allclose(res.scores, ref, rtol=1e-10)
    assert res.damping == 0.0 and res.details["checkpoints"] == 0


def test_checkpoints_summed_with_learning_rates(case, tmp_path):
    model, x, y = case
    early = {k: v * 0.5 for k, v in model.state_dict().items()}
    late = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "late.pt"
    torch.save({"state_dict": late}, path)
    res = self_influence(
        model,
        (x, y),
        method="tracin",
        progress=False,
        backend_options={"checkpoints": [early, str(path)], "learning_rates": [0.3, 0.1]},
    )
    ref = 0.1 * loop_grads(model, x, y).pow(2).sum(1)
    model.load_state_dict(early)
    ref += 0.3 * loop_grads(model, x, y).pow(2).sum(1)
    np.testing.assert_allclose(res.scores, ref.numpy(), rtol=1e-10)
    assert res.details["checkpoints"] == 2


def test_solve_is_gradient_dot_product(case):
    model, x, y = case
    sc = InfluenceScorer(model, (x, y), method="tracin", progress=False)
    g = loop_grads(model, x, y)
    np.testing.assert_allclose(
        sc.influence((x[:3], y[:3])).values, -(g @ g[:3].T).numpy(), rtol=1e-10
    )


def test_bad_checkpoints(case, tmp_path):
    model, x, y = case
    with pytest.raises(InvalidInputError, match="does not exist"):
        self_influence(
            model,
            (x, y),
            method="tracin",
            progress=False,
            backend_options={"checkpoints": [str(tmp_path / "nope.pt")]},
        )
    with pytest.raises(InvalidInputError, match=r"checkpoint 0 does not fit the model"):
        self_influence(
            model,
            (x, y),
            method="tracin",
            progress=False,
            backend_options={"checkpoints": [{"other.weight": torch.zeros(2)}]},
        )
    with pytest.raises(InvalidInputError, match="learning_rates has 1 values for 2"):
        self_influence(
            model,
            (x, y),
            method="tracin",
            progress=False,
            backend_options={"checkpoints": [model.state_dict()] * 2, "learning_rates": [0.1]},
        )
