"""EK-FAC's fitted eigenbasis answers the detectors directly (CanWhiten, CanFilter): checked
against the explicit matrix ``A^{-1}`` it implies (``solve`` applied to the identity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infgate.influence import CanFilter, CanWhiten, InfluenceScorer
from torch import nn

from tests.influence.approx_helpers import DAMPING, default_cnn, one_thread

__all__ = ["one_thread"]


class SeqNet(nn.Module):
    """Embedding -> Conv1d -> LayerNorm over channels -> Linear per position -> mean -> head."""

    def __init__(self, vocab: int = 7, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 4)
        self.conv = nn.Conv1d(4, 5, 3, padding=1)
        self.norm = nn.LayerNorm(5)
        self.mix = nn.Linear(5, 5)
        self.head = nn.Linear(5, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.emb(tokens).transpose(1, 2)).transpose(1, 2)  # (B, L, 5)
        h = torch.tanh(self.mix(self.norm(h)))  # dense layer at every position: T = L
        return self.head(h.mean(1))


class PosSeqNet(SeqNet):
    """SeqNet plus a position table looked up on ``arange(L)`` and added after the
    convolution: one row per position, shared by every example, and no hooked table's output
    carries its per-example gradient, so it gets the exact per-example diagonal block (the
    token table the hooked one)."""

    def __init__(self, vocab: int = 7, classes: int = 3, length: int = 6) -> None:
        super().__init__(vocab, classes)
        self.pos = nn.Embedding(length, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.conv(self.emb(tokens).transpose(1, 2)).transpose(1, 2)
        h = torch.tanh(self.mix(self.norm(h + self.pos(pos).unsqueeze(0))))
        return self.head(h.mean(1))


class TinyTransformer(nn.Module):
    """Token and position embeddings -> one TransformerEncoderLayer (PyTorch's attention,
    batch_first) -> LayerNorm -> mean -> head: the in-projection and out-projection are
    Kronecker-factored through the attention taps."""

    def __init__(self, vocab: int = 9, classes: int = 3, length: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 8, padding_idx=0)
        self.pos = nn.Embedding(length, 8)
        self.enc = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.1, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.enc(self.emb(tokens) + self.pos(pos).unsqueeze(0))
        return self.head(self.norm(h).mean(1))


def _token_case(model: nn.Module, vocab: int, length: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tokens = torch.randint(0, vocab, (36, length), generator=g)
    return model.double().eval(), tokens, torch.randint(0, 3, (36,), generator=g)


def _seq_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = SeqNet().double().eval()
    tokens = torch.randint(0, 7, (40, 6), generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    return model, tokens, y


def _bn_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Conv -> BatchNorm2d (eval, non-trivial running statistics) -> ReLU -> Linear."""
    g = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3)
    ).double()
    x = torch.randn(50, 1, 6, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        model.train()(x * 2 + 1)  # running statistics away from (0, 1)
        model[1].weight.uniform_(0.5, 1.5, generator=g)
    return model.eval(), x, torch.randint(0, 3, (50,), generator=g)


def _cases() -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    cnn, x, y = default_cnn()
    torch.manual_seed(8)
    return [
        ("cnn", cnn, x[:60], y[:60]),
        ("seq", *_seq_case()),
        ("bn", *_bn_case()),
        ("pos", *_token_case(PosSeqNet(), 7, 6, 7)),
        ("transformer", *_token_case(TinyTransformer(), 9, 5, 8)),
    ]


CASES = ["cnn", "seq", "bn", "pos", "transformer"]


def _implied_inverse(sc: InfluenceScorer) -> torch.Tensor:
    p = sc.engine.n_params
    return sc.backend.solve(torch.eye(p, dtype=torch.float64)).double()


def _ce_residual(y: torch.Tensor):
    def residual(logits: torch.Tensor) -> torch.Tensor:
        r = torch.softmax(logits, dim=1)
        r[torch.arange(len(y)), y] -= 1.0
        return r

    return residual


@pytest.mark.parametrize("method", ["ekfac", "kfac"])
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASES)
def test_leverage_equals_the_implied_matrix(method, case):
    _, model, x, y = _cases()[case]
    sc = InfluenceScorer(model, (x, y), method=method, damping=DAMPING, progress=False)
    assert isinstance(sc.backend, CanWhiten) and isinstance(sc.backend, CanFilter)
    a_inv = _implied_inverse(sc)
    xb, yb = x[:9], y[:9]
    got = sc.backend.output_leverage(sc.engine, 0, xb, yb, _ce_residual(yb))
    jac = sc.engine.output_jacobians(xb).double()
    want = torch.einsum("bcp,pq,bdq->bcd", jac, a_inv, jac)
    torch.testing.assert_close(got.leverage, want, rtol=1e-8, atol=1e-12)
    r = _ce_residual(yb)(sc.engine.outputs(xb).double())
    g = torch.einsum("bc,bcp->bp", r, jac)
    torch.testing.assert_close(got.grad_norm, g.norm(dim=1), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.solved_norm, (g @ a_inv).norm(dim=1), rtol=1e-8, atol=1e-12)
    # self-influence from the hooks agrees with the implied matrix too
    s = sc.self_influence((xb, yb)).scores
    np.testing.assert_allclose(s, torch.einsum("bp,pq,bq->b", g, a_inv, g).numpy(), rtol=1e-8)


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASES)
def test_filter_is_the_newton_step_with_the_implied_curvature(case):
    _, model, x, y = _cases()[case]
    sc = InfluenceScorer(model, (x, y), method="ekfac", damping=DAMPING, progress=False)
    a_inv = _implied_inverse(sc)
    p = a_inv.shape[0]
    eye = torch.eye(p, dtype=torch.float64)
    lam = sc.backend.damping
    h = torch.linalg.inv(a_inv) - lam * eye
    h = 0.5 * (h + h.T)
    theta = sc.engine.flatten(sc.engine.params).double()
    got, lam_f = sc.backend.filter_parameters(theta, 0.1)  # type: ignore[attr-defined]
    assert lam_f == pytest.approx(max(0.1 * float(torch.trace(h)) / p, lam), rel=1e-6)
    want = torch.linalg.solve(h + lam_f * eye, (h + lam * eye) @ theta)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
