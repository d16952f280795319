"""Recurrent text classifiers (``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN``) through every stage.

Three things broke on them: ``torch.func.vmap`` cannot batch the native recurrent kernels
(they write the hidden state in place), oneDNN's CPU LSTM kernel has no forward-mode rule
(the filtered model's ``jvp``), and EK-FAC refused recurrent weights. Known answers here:
per-example gradients and Jacobians from the one-example-at-a-time fallback equal
autograd's; the filtered pass's ``J v`` equals a central finite difference of the network;
EK-FAC gives recurrent weights their own diagonal block and still agrees with the exact
back-end on the head it factors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from infgate.detect import find_label_errors
from infgate.detect.filtered import filtered_logits_linearized
from infgate.examples.networks import TrainOptions, flip_labels, token_sequences, train_network
from infgate.influence import InfluenceScorer
from infgate.influence.backends.auto import AUTO_EXACT_MAX_PARAMS
from torch import nn


class _Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase], vocab: int, classes: int, hidden: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.rnn = cell(8, hidden, batch_first=True, bidirectional=cell is nn.LSTM)
        self.head = nn.Linear(hidden * (2 if cell is nn.LSTM else 1), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(x))
        return self.head(h.mean(1))


@pytest.fixture(scope="module")
def tokens() -> tuple[torch.Tensor, torch.Tensor, int, int]:
    x, y = token_sequences(460, seed=3)
    return x, y, int(y.max()) + 1, int(x.max()) + 1


def _trained(  # type: ignore[no-untyped-def]
    cell: type[nn.RNNBase], tokens, hidden: int = 6, labels=None, epochs: int = 4
) -> nn.Module:
    x, y, k, vocab = tokens
    y = y[:160] if labels is None else labels
    torch.manual_seed(0)
    opts = TrainOptions(epochs=epochs, lr=3e-3, weight_decay=1e-3, seed=0)
    return train_network(_Recurrent(cell, vocab, k, hidden), x[: len(y)], y, opts).eval()


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM, nn.RNN])
def test_per_example_passes_fall_back_to_one_example_at_a_time(cell, tokens, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from infgate.influence import gradients

    monkeypatch.setattr(gradients, "_WARNED_FALLBACK", set())  # warned once per process
    x, y, _, _ = tokens
    model = _trained(cell, tokens)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer = InfluenceScorer(model, (x[:160], y[:160]), method="exact", progress=False)
        grads = scorer.engine.per_example_grads(0, x[:4], y[:4])
        jac = scorer.engine.output_jacobians(x[:2])
    fell_back = [w for w in caught if "one example at a time" in str(w.message)]
    if cell is nn.LSTM:  # oneDNN's LSTM kernel batches (slowly) under vmap
        assert scorer.engine.vmap_fallback is None
    else:
        assert scorer.engine.vmap_fallback is not None and len(fell_back) == 1
    names = scorer.engine.names
    for i in range(4):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        want = torch.cat([dict(model.named_parameters())[n].grad.flatten() for n in names])
        torch.testing.assert_close(grads[i], want, rtol=1e-4, atol=1e-6)
    for c in range(jac.shape[1]):
        model.zero_grad()
        model(x[1:2])[0, c].backward()
        want = torch.cat([dict(model.named_parameters())[n].grad.flatten() for n in names])
        torch.testing.assert_close(jac[1, c], want, rtol=1e-4, atol=1e-6)
    assert np.isfinite(scorer.self_influence().scores).all()


def test_filtered_pass_linearizes_an_lstm(tokens) -> None:  # type: ignore[no-untyped-def]
    x, y, _, _ = tokens
    model = _trained(nn.LSTM, tokens)
    scorer = InfluenceScorer(model, (x[:160], y[:160]), method="exact", progress=False)
    engine = scorer.engine
    theta = engine.flatten(engine.params)
    step = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1)) * 1e-2
    z, dz = filtered_logits_linearized(scorer, step)
    eps = 1e-2
    with torch.no_grad():
        up = engine.forward(engine.unflatten(theta + eps * step), x[:160]).double()
        down = engine.forward(engine.unflatten(theta - eps * step), x[:160]).double()
    assert torch.allclose(z, engine.outputs(x[:160]).double(), atol=1e-5)
    fd = (up - down) / (2 * eps)
    assert float((dz - fd).abs().max()) <= 1e-3 * max(float(fd.abs().max()), 1e-3)


def test_auto_gives_recurrent_weights_their_own_block(tokens) -> None:  # type: ignore[no-untyped-def]
    x, y, _, _ = tokens
    model = _trained(nn.GRU, tokens, hidden=64)
    assert sum(p.numel() for p in model.parameters()) > AUTO_EXACT_MAX_PARAMS
    scorer = InfluenceScorer(model, (x[:160], y[:160]), progress=False)
    choice = scorer.choice
    assert choice.method == "ekfac"
    recurrent = {n for n in engine_names(scorer) if n.startswith("rnn.")}
    assert recurrent and recurrent <= set(choice.own_block)
    assert all("recurrent" in choice.own_block[n] for n in recurrent)
    assert "head.weight" in choice.covered and "head.weight" not in choice.own_block
    # on the head alone (which EK-FAC factors, exactly for one layer with the true
    # Fisher) EK-FAC and exact agree
    ek = InfluenceScorer(model, (x[:160], y[:160]), method="ekfac", params=["head"], progress=False)
    ex = InfluenceScorer(model, (x[:160], y[:160]), method="exact", params=["head"], progress=False)
    a, b = ek.self_influence().scores, ex.self_influence().scores
    assert np.corrcoef(a, b)[0, 1] > 0.99
    assert np.isfinite(scorer.self_influence().scores).all()


def engine_names(scorer: InfluenceScorer) -> list[str]:
    return list(scorer.engine.names)


def test_find_label_errors_on_an_lstm_ranks_its_flips(tokens) -> None:  # type: ignore[no-untyped-def]
    x, y, k, _ = tokens
    noisy, _ = flip_labels(y[:300], 0.1, classes=k, seed=0)
    flipped = (noisy != y[:300]).numpy()
    model = _trained(nn.LSTM, tokens, hidden=16, labels=noisy, epochs=15)
    df = find_label_errors(
        model, (x[:300], noisy), eval_data=(x[300:], y[300:]), damping=1e-3, progress=False
    )
    assert len(df) == 300 and df["score"].notna().all()
    assert 0.0 < df.attrs["filter_step_fraction"] <= 1.0  # the jvp pass ran
    order = df["example_id"].astype(int).to_numpy()
    top = set(order[: int(flipped.sum())])
    # the flips are found far above chance (10%) in the top k = #flips (measured 0.67)
    assert len(top & set(np.flatnonzero(flipped))) / flipped.sum() >= 0.4


@pytest.mark.parametrize(("cell", "hidden"), [(nn.GRU, 6), (nn.LSTM, 48)])
def test_pt2_recurrent_graph_scores_like_its_module(cell, hidden, tokens) -> None:  # type: ignore[no-untyped-def]
    """MLflow's pt2 flavour: the exported graph's ``aten.gru`` / ``aten.lstm`` weights get
    the same treatment (exact under the budget, a diagonal block under EK-FAC above it)."""
    x, y, k, vocab = tokens
    torch.manual_seed(0)
    module = _Recurrent(cell, vocab, k, hidden).eval()
    graph = torch.export.export(
        module, (x[:4],), dynamic_shapes=({0: torch.export.Dim("batch")},)
    ).module()
    on_graph = InfluenceScorer(graph, (x[:100], y[:100]), progress=False)
    expected = "exact" if hidden == 6 else "ekfac"
    assert on_graph.choice.method == expected
    if expected == "ekfac":
        assert any(n.startswith("rnn.") for n in on_graph.choice.own_block)
    on_module = InfluenceScorer(module, (x[:100], y[:100]), method=expected, progress=False)
    np.testing.assert_allclose(
        on_graph.self_influence().scores, on_module.self_influence().scores, rtol=1e-3, atol=1e-8
    )


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_iterative_back_ends_match_exact_on_recurrent_layers(cell, tokens) -> None:  # type: ignore[no-untyped-def]
    """cg, lissa and arnoldi multiply by the curvature with forward-mode products
    (``jvp``), which oneDNN's LSTM kernel lacks: they agree with the exact back-end on
    the Gauss-Newton matrix and, at a damping that makes it positive definite, on the
    Hessian."""
    x, y, _, _ = tokens
    model = _trained(cell, tokens)
    data = (x[:80], y[:80])
    for curvature, damping in (("gauss_newton", 1e-2), ("hessian", 1.0)):
        exact = InfluenceScorer(
            model, data, method="exact", damping=damping, progress=False,
            backend_options={"curvature": curvature},
        ).self_influence().scores  # fmt: skip
        for method, rtol in (("cg", 1e-4), ("lissa", 2e-2), ("arnoldi", 5e-2)):
            opts = {"curvature": curvature}
            if method == "arnoldi":  # every direction: exact up to the eigensolver
                opts["rank"] = sum(p.numel() for p in model.parameters())
            got = InfluenceScorer(
                model, data, method=method, damping=damping, progress=False,
                backend_options=opts,
            ).self_influence().scores  # fmt: skip
            err = np.abs(got - exact).max() / np.abs(exact).max()
            assert err <= rtol, (curvature, method, err)
