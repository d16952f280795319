"""CG back-end: converges to the exact answer (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest
from infgate.errors import CurvatureError, InvalidInputError
from infgate.influence import InfluenceScorer, self_influence

from tests.influence.approx_helpers import DAMPING, default_mlp, one_thread, trained_mlp

__all__ = ["one_thread"]


@pytest.fixture(scope="module")
def case():
    return default_mlp()


def test_cg_matches_exact_within_1e4(case):
    model, x, y = case
    exact = self_influence(model, (x, y), damping=DAMPING, progress=False)
    res = self_influence(
        model,
        (x, y),
        method="cg",
        damping=DAMPING,
        batch_size=128,
        progress=False,
        backend_options={"block_size": 200},
    )
    rel = np.abs(res.scores - exact.scores) / np.abs(exact.scores)
    assert rel.max() < 1e-4
    assert res.method == "cg" and res.damping == DAMPING
    # blocks of 200 columns: 2 block solves for 300 examples, not 300 sequential ones
    assert len(res.details["iterations_per_block"]) == 2
    assert res.details["worst_relative_residual"] <= 1e-10


def test_cg_streamed_products_and_hessian_match_exact(case):
    model, x, y = case
    sub = (x[:120], y[:120])
    # On a subset the model is not at a minimum, so the Hessian needs more damping.
    for curvature, damping in (("gauss_newton", DAMPING), ("hessian", 0.5)):
        exact = self_influence(
            model,
            sub,
            method="exact",
            damping=damping,
            progress=False,
            backend_options={"curvature": curvature},
        )
        res = self_influence(
            model,
            sub,
            method="cg",
            damping=damping,
            progress=False,
            backend_options={"curvature": curvature, "cache_bytes": 0},
        )
        np.testing.assert_allclose(res.scores, exact.scores, rtol=1e-6)


def test_cg_solve_gives_the_influence_matrix(case):
    model, x, y = case
    exact = InfluenceScorer(model, (x, y), damping=DAMPING, progress=False)
    cg = InfluenceScorer(model, (x, y), method="cg", damping=DAMPING, progress=False)
    test = (x[:7], y[:7])
    np.testing.assert_allclose(
        cg.influence(test).values, exact.influence(test).values, rtol=1e-5, atol=1e-9
    )


def test_cg_bad_options_and_indefinite_curvature(case):
    model, x, y = case
    with pytest.raises(InvalidInputError, match="rtol must be in"):
        self_influence(model, (x, y), method="cg", progress=False, backend_options={"rtol": 2})
    with pytest.raises(InvalidInputError, match="curvature must be"):
        self_influence(
            model, (x, y), method="cg", progress=False, backend_options={"curvature": "fisher"}
        )
    # The Hessian of an untrained tanh MLP has negative eigenvalues; tiny damping exposes them.
    untrained = trained_mlp(x[:40], y[:40])
    for p in untrained.parameters():
        p.data.mul_(4.0)
    with pytest.raises(CurvatureError, match="non-positive curvature"):
        self_influence(
            untrained,
            (x, y),
            method="cg",
            damping=1e-8,
            progress=False,
            backend_options={"curvature": "hessian"},
        )


def test_spectral_preconditioner_same_answer_fewer_iterations(case):
    model, x, y = case
    kw = {"method": "cg", "damping": DAMPING, "progress": False}
    plain = self_influence(model, (x, y), backend_options={"precondition_rank": 0}, **kw)
    pre = self_influence(model, (x, y), backend_options={"precondition_rank": 40}, **kw)
    np.testing.assert_allclose(pre.scores, plain.scores, rtol=1e-6)
    assert pre.details["precondition_rank"] == 40
    assert sum(pre.details["iterations_per_block"]) < sum(plain.details["iterations_per_block"])
