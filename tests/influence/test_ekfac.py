"""K-FAC / EK-FAC back-ends: fidelity vs exact on an MLP and a tiny CNN, coverage errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infgate.errors import InvalidInputError, NonFiniteError
from infgate.influence import InfluenceScorer, self_influence
from torch import nn

from tests.influence.approx_helpers import (
    DAMPING,
    default_cnn,
    default_mlp,
    one_thread,
    spearman,
    top_overlap,
    trained_mlp,
)

__all__ = ["one_thread"]


@pytest.fixture(scope="module")
def mlp_case():
    model, x, y = default_mlp()
    return model, x, y, self_influence(model, (x, y), damping=DAMPING, progress=False).scores


@pytest.fixture(scope="module")
def cnn_case():
    model, x, y = default_cnn()
    return model, x, y, self_influence(model, (x, y), damping=DAMPING, progress=False).scores


@pytest.mark.parametrize("method", ["ekfac", "kfac"])
def test_mlp_ranks_like_exact(mlp_case, method):
    model, x, y, exact = mlp_case
    res = self_influence(
        model, (x, y), method=method, damping=DAMPING, batch_size=64, progress=False
    )
    assert spearman(res.scores, exact) >= 0.9
    assert top_overlap(res.scores, exact) >= 0.8
    assert res.details["own_block"] == [] and res.details["covered_params"] == res.n_params
    assert [layer["layer"] for layer in res.details["layers"]] == ["0", "2"]


def test_cnn_ranks_like_exact(cnn_case):
    model, x, y, exact = cnn_case
    res = self_influence(model, (x, y), method="ekfac", damping=DAMPING, progress=False)
    assert spearman(res.scores, exact) >= 0.9
    assert top_overlap(res.scores, exact) >= 0.8
    kinds = {layer["layer"]: layer["kind"] for layer in res.details["layers"]}
    assert kinds == {"conv1": "conv2d", "conv2": "conv2d", "head": "linear"}


@pytest.mark.parametrize("fisher", ["sampled", "empirical"])
def test_other_fishers_rank_like_exact(cnn_case, fisher):
    model, x, y, exact = cnn_case
    res = self_influence(
        model,
        (x, y),
        method="ekfac",
        damping=DAMPING,
        progress=False,
        backend_options={"fisher": fisher},
    )
    assert spearman(res.scores, exact) >= 0.9


def test_hook_scores_equal_flat_gradient_scores(cnn_case):
    """Self-influence from layer hooks == quadratic form on whole-model gradients."""
    model, x, y, _ = cnn_case
    sc = InfluenceScorer(model, (x, y), method="ekfac", damping=DAMPING, progress=False)
    hooks = sc.self_influence().scores
    flat = sc.backend.quadratic(sc.gradients((x, y))).numpy()
    np.testing.assert_allclose(hooks, flat, rtol=1e-9)
    g = sc.gradients((x[:5], y[:5]))
    solved = sc.backend.solve(g)
    np.testing.assert_allclose((g * solved).sum(1).numpy(), hooks[:5], rtol=1e-9)


class _Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(8, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.norm(self.emb(x))))


def test_layers_ekfac_cannot_factor_get_an_exact_diagonal_block(mlp_case, caplog):
    _, x, y, _ = mlp_case
    torch.manual_seed(0)
    model = _Normed().double().eval()
    with caplog.at_level("INFO"):
        res = self_influence(model, (x, y), method="ekfac", progress=False)
    assert [d["param"] for d in res.details["own_block"]] == ["norm.weight", "norm.bias"]
    assert res.details["own_block"][0]["reason"] == "norm (LayerNorm): normalisation scale/shift"
    assert res.details["covered_params"] == res.n_params - 12
    assert "own diagonal block" in caplog.text
    # Only the norm selected: EK-FAC is then exactly the Gauss-Newton diagonal.
    only = InfluenceScorer(model, (x, y), method="ekfac", params=["norm"], progress=False)
    ref = InfluenceScorer(model, (x, y), method="exact", params=["norm"], progress=False)
    d = torch.diagonal(ref.backend.h)  # type: ignore[attr-defined]
    g = ref.gradients((x, y)).double()
    lam = only.backend.damping
    expected = (g.pow(2) / (d + lam)).sum(1).numpy()
    np.testing.assert_allclose(only.self_influence().scores, expected, rtol=1e-9)


class _RawParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8, dtype=torch.float64))
        self.head = nn.Linear(8, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x * self.scale)


class _Transposed(nn.Module):
    """A transposed convolution, a PReLU (whose Jacobian ``vmap`` cannot batch: the
    per-example fallback) and a bilinear head: layers EK-FAC has no factors for."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(1, 2, 2, stride=2).double()
        self.act = nn.PReLU(2).double()
        self.mix = nn.Bilinear(8, 8, 4).double()
        self.head = nn.Linear(8, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.up(x.reshape(-1, 1, 2, 4))).mean(1).reshape(-1, 4, 8).mean(1)
        return self.head(h) + self.mix(h, h)


@pytest.mark.parametrize("cls", [_RawParam, _Transposed])
def test_parameters_without_factors_get_their_own_exact_diagonal_block(mlp_case, cls):
    """Raw parameters of a custom module, transposed convolutions and nn.Bilinear get the
    Gauss-Newton diagonal (exact per coordinate, checked against the exact matrix's
    diagonal), named with the module in the choice; the factored head is unaffected."""
    _, x, y, _ = mlp_case
    torch.manual_seed(0)
    model = cls().eval()
    scorer = InfluenceScorer(model, (x, y), method="ekfac", progress=False)
    own = scorer.choice.own_block
    names = [n for n, _ in model.named_parameters() if not n.startswith("head.")]
    assert sorted(own) == sorted(names)
    owner = {n: type(model.get_submodule(n.rpartition(".")[0])).__name__ for n in names}
    assert all(f"({owner[n]}): " in own[n] for n in names), own  # names the module
    assert "head.weight" in scorer.choice.covered
    exact = InfluenceScorer(model, (x, y), method="exact", params=names, progress=False)
    d = torch.diagonal(exact.backend.h)  # type: ignore[attr-defined]
    block = scorer.backend.block  # type: ignore[attr-defined]
    np.testing.assert_allclose(block.diag.numpy(), d.numpy(), rtol=1e-9, atol=1e-15)
    assert (block.engine.vmap_fallback is not None) == (cls is _Transposed)  # PReLU's
    assert np.isfinite(scorer.self_influence().scores).all()


def test_non_finite_and_bad_options(mlp_case):
    model, x, y, _ = mlp_case
    broken = trained_mlp(x[:20], y[:20])
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        self_influence(broken, (x, y), method="ekfac", progress=False)
    with pytest.raises(InvalidInputError, match="fisher must be"):
        self_influence(
            model, (x, y), method="ekfac", progress=False, backend_options={"fisher": "true"}
        )


def test_default_fisher_is_exact_for_few_outputs_and_sampled_for_many(mlp_case):
    model, x, y, _ = mlp_case
    few = self_influence(model, (x, y), method="ekfac", progress=False)
    assert few.details["fisher"] == "expected"
    wide = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 40)).double().eval()
    many = self_influence(wide, (x, y), method="ekfac", progress=False)
    assert many.details["fisher"] == "sampled"
    assert np.all(many.scores > 0)
