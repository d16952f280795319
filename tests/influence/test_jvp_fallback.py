"""Output Jacobian-vector products for models whose ops lack forward-mode rules
(``nn.EmbeddingBag``): the reverse-mode per-example-Jacobian path gives the forward-mode
numbers, and the default ranking runs on such models end to end."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from infgate.data.validation import embedding_size
from infgate.detect import find_label_errors
from infgate.influence import InfluenceScorer
from infgate.influence.gradients import GradientEngine
from infgate.influence.objective import CrossEntropyObjective
from infgate.registry.inputs import embedding_padding_idx
from torch import nn


class BagClassifier(nn.Module):
    """fastText-style: mean of token embeddings (``padding_idx`` left out), an MLP head."""

    def __init__(self, vocab: int = 30, dim: int = 8, classes: int = 3, bag: bool = True):
        super().__init__()
        self.bag = bag
        self.e: nn.Module = (
            nn.EmbeddingBag(vocab, dim, mode="mean", padding_idx=0)
            if bag
            else nn.Embedding(vocab, dim, padding_idx=0)
        )
        self.h = nn.Sequential(nn.Linear(dim, 8), nn.Tanh(), nn.Linear(8, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bag:
            return self.h(self.e(x))
        keep = (x != 0).unsqueeze(-1).to(torch.float64)  # EmbeddingBag's mean without pads
        return self.h((self.e(x) * keep).sum(1) / keep.sum(1).clamp_min(1.0))


def _tokens(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 30, (n, 7), generator=g)
    lengths = torch.randint(2, 8, (n,), generator=g)
    x[torch.arange(7)[None, :] >= lengths[:, None]] = 0  # ragged, padded with 0
    return x


def _engine(model: nn.Module) -> GradientEngine:
    return GradientEngine(model, CrossEntropyObjective(), device=torch.device("cpu"))


def test_reverse_mode_jvp_equals_forward_mode() -> None:
    torch.manual_seed(0)
    model = BagClassifier(bag=False).double().eval()  # every op has a forward-mode rule
    eng = _engine(model)
    x = _tokens(11, 1)
    tangent = {n: torch.randn_like(p) for n, p in eng.params.items()}
    z, dz = eng.output_jvp(x, tangent)
    assert eng.jvp_fallback is None
    z2, dz2 = eng.output_jvp_by_jacobians(x, tangent)
    torch.testing.assert_close(z2, z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dz2, dz, rtol=1e-10, atol=1e-12)


def test_embedding_bag_falls_back_to_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """EmbeddingBag has no forward-mode rule: ``output_jvp`` warns once and gives what the
    equivalent Embedding + masked mean gives by forward mode."""
    import infgate.influence.gradients as gradients

    monkeypatch.setattr(gradients, "_WARNED_FALLBACK", set())  # whatever ran before
    torch.manual_seed(0)
    ref = BagClassifier(bag=False).double().eval()
    bag = BagClassifier(bag=True).double().eval()
    bag.load_state_dict(ref.state_dict())
    x = _tokens(13, 2)
    torch.testing.assert_close(bag(x), ref(x), rtol=1e-12, atol=1e-12)
    eng_ref, eng_bag = _engine(ref), _engine(bag)
    tangent = {n: torch.randn_like(p) for n, p in eng_ref.params.items()}
    want = eng_ref.output_jvp(x, tangent)[1]
    with pytest.warns(RuntimeWarning, match="forward-mode autodiff cannot run this model"):
        _, got = eng_bag.output_jvp(x, tangent)
    assert eng_bag.jvp_fallback is not None and "forward AD" in eng_bag.jvp_fallback
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # once per model class
        eng_bag.output_jvp(x, tangent)


@pytest.mark.parametrize("method", ["exact", "ekfac"])
def test_default_ranking_runs_on_an_embedding_bag_classifier(method: str) -> None:
    torch.manual_seed(0)
    model = BagClassifier().double().eval()
    x = _tokens(60, 3)
    y = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(4))
    sc = InfluenceScorer(model, (x, y), method=method, damping=1e-2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        df = find_label_errors(model, (x, y), scorer=sc, progress=False)
    assert len(df) == 60 and np.isfinite(df["score"]).all()
    assert sc.engine.jvp_fallback is not None


def test_embedding_bag_size_and_padding_idx_module_and_graph() -> None:
    model = BagClassifier().eval()
    graph = torch.export.export(model, (_tokens(4, 5),)).module()
    assert embedding_size(model) == embedding_size(graph) == 30
    assert embedding_padding_idx(model) == embedding_padding_idx(graph) == 0


@pytest.mark.parametrize("method", ["cg", "arnoldi"])
def test_iterative_back_ends_on_embedding_bag_match_the_equivalent_model(method: str) -> None:
    """cg / arnoldi multiply by the Gauss-Newton matrix through ``J v``: on EmbeddingBag the
    products come from per-example Jacobians and the scores equal the equivalent
    Embedding model's (forward mode)."""
    torch.manual_seed(0)
    ref = BagClassifier(bag=False).double().eval()
    bag = BagClassifier(bag=True).double().eval()
    bag.load_state_dict(ref.state_dict())
    x = _tokens(40, 6)
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(7))
    kw = {"method": method, "damping": 1e-2, "progress": False}
    want = InfluenceScorer(ref, (x, y), **kw).self_influence().scores  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sc = InfluenceScorer(bag, (x, y), **kw)  # type: ignore[arg-type]
        got = sc.self_influence().scores
    assert sc.engine.jvp_fallback is not None
    np.testing.assert_allclose(got, want, rtol=1e-6)
