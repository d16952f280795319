"""Arnoldi back-end: top-k eigenpairs plus the residual term (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infgate.errors import CurvatureError, InvalidInputError
from infgate.influence import InfluenceScorer, self_influence

from tests.influence.approx_helpers import (
    DAMPING,
    default_mlp,
    one_thread,
    spearman,
    top_overlap,
    trained_mlp,
)

__all__ = ["one_thread"]

#: Documented setting: rank 40 of 212 parameters, Krylov dimension 80.
RANK = 40


@pytest.fixture(scope="module")
def case():
    model, x, y = default_mlp()
    exact = InfluenceScorer(model, (x, y), damping=DAMPING, progress=False)
    return model, x, y, exact


def test_arnoldi_ranks_like_exact_and_residual_helps(case):
    model, x, y, exact = case
    ref = exact.self_influence().scores
    res = self_influence(
        model,
        (x, y),
        method="arnoldi",
        damping=DAMPING,
        progress=False,
        backend_options={"rank": RANK},
    )
    assert spearman(res.scores, ref) >= 0.9
    assert top_overlap(res.scores, ref) >= 0.8
    trunc = self_influence(
        model,
        (x, y),
        method="arnoldi",
        damping=DAMPING,
        progress=False,
        backend_options={"rank": RANK, "residual": False},
    )
    err = np.abs(res.scores - ref).mean()
    assert err < np.abs(trunc.scores - ref).mean()
    assert spearman(res.scores, ref) > spearman(trunc.scores, ref)


def test_eigenpairs_match_the_exact_matrix(case):
    model, x, y, exact = case
    sc = InfluenceScorer(
        model,
        (x, y),
        method="arnoldi",
        damping=DAMPING,
        progress=False,
        backend_options={"rank": 10, "krylov_dim": 60},
    )
    assert exact.backend.h is not None
    top = torch.linalg.eigvalsh(exact.backend.h).flip(0)[:10]
    np.testing.assert_allclose(sc.backend.eigenvalues.numpy(), top.numpy(), rtol=1e-4)
    # Full rank: the residual term vanishes and scores are exact.
    full = self_influence(
        model,
        (x, y),
        method="arnoldi",
        damping=DAMPING,
        progress=False,
        backend_options={"rank": 212, "block": 64},
    )
    np.testing.assert_allclose(full.scores, exact.self_influence().scores, rtol=1e-6)


def test_errors(case):
    model, x, y, _ = case
    with pytest.raises(InvalidInputError, match="krylov_dim must be >= rank"):
        self_influence(
            model,
            (x, y),
            method="arnoldi",
            progress=False,
            backend_options={"rank": 10, "krylov_dim": 5},
        )
    bumpy = trained_mlp(x[:30], y[:30])
    for p in bumpy.parameters():
        p.data.mul_(4.0)
    with pytest.raises(CurvatureError, match="non-positive eigenvalue"):
        self_influence(
            bumpy,
            (x, y),
            method="arnoldi",
            damping=1e-8,
            progress=False,
            backend_options={"curvature": "hessian", "rank": 200, "block": 64},
        )
