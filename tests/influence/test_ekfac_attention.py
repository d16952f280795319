"""EK-FAC on transformers: attention projections Kronecker-factored through taps, embedding
tables as hooked exact diagonals, and the hook check that sends every layer whose hooks
cannot give per-example gradients (shared position tables, tied weights, cross-attention)
to the exact per-example diagonal block, with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from infgate.influence import InfluenceScorer
from infgate.influence.backends.capture import LayerCapture
from infgate.influence.backends.layer_plan import plan_layers
from infgate.influence.backends.taps import tap_attention
from infgate.influence.gradients import GradientEngine
from infgate.influence.objective import CrossEntropyObjective
from torch import nn

from tests.influence.approx_helpers import DAMPING, one_thread
from tests.influence.test_ekfac_capabilities import TinyTransformer, _token_case

__all__ = ["one_thread"]


@pytest.fixture(scope="module")
def transformer_case():
    return _token_case(TinyTransformer(), 9, 5, 8)


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> InfluenceScorer:
    return InfluenceScorer(model, (x, y), method="ekfac", damping=DAMPING, progress=False)


def _blocks(sc: InfluenceScorer) -> tuple[list[str], dict[str, str]]:
    d = sc.backend.describe()
    block = [] if sc.backend.block is None else list(sc.backend.block.names)
    return block, {str(o["param"]): str(o["reason"]) for o in d["own_block"]}


@pytest.mark.parametrize("batch_first", [True, False])
def test_tapped_attention_is_pytorchs_attention(batch_first):
    """Outputs, attention weights and gradients equal PyTorch's MultiheadAttention for
    every mask kind (the tap path runs SDPA or PyTorch's own kernel on projected heads)."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).double().eval()
    tapped, taps = tap_attention(mha)  # type: ignore[misc]
    assert list(taps) == [""]
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1)
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    options = [
        {"need_weights": False},
        {},
        {"key_padding_mask": kpm},
        {"attn_mask": causal, "is_causal": True, "need_weights": False},
        {"attn_mask": torch.randn(5, 5, dtype=torch.float64), "average_attn_weights": False},
        {"attn_mask": causal, "key_padding_mask": kpm},
    ]
    for kw in options:
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        want, want_w = mha(xa, xa, xa, **kw)
        got, got_w = tapped(xb, xb, xb, **kw)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert (got_w is None) == (want_w is None)
        if want_w is not None:
            torch.testing.assert_close(got_w, want_w, rtol=1e-12, atol=1e-12)
        ga = torch.autograd.grad(want.pow(2).sum(), [xa, mha.in_proj_weight])
        gb = torch.autograd.grad(got.pow(2).sum(), [xb, tapped.in_proj_weight])
        for a, b in zip(ga, gb, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_attention_and_position_table_need_no_per_example_block(transformer_case):
    """Projections factored; the position table (looked up on arange(L), added to the token
    table's output) takes the token table's per-example output gradients."""
    model, x, y = transformer_case
    sc = _fit(model, x, y)
    layers = {str(d["layer"]) for d in sc.backend.describe()["layers"]}
    assert {"enc.self_attn.in_proj", "enc.self_attn.out_proj", "emb", "pos"} <= layers
    block, reasons = _blocks(sc)
    assert block == []
    assert "emb's output gradients" in reasons["pos.weight"]
    assert "embedding table" in reasons["emb.weight"]


def test_hooked_embedding_diagonal_is_the_exact_gauss_newton_diagonal(transformer_case):
    """The scattered per-example rows give the same diagonal as torch.func per-example
    Jacobians of the table (the expected true Fisher), padding row zero."""
    model, x, y = transformer_case
    sc = _fit(model, x, y)
    layer = next(ly for ly in sc.backend.layers if ly.path == "emb")
    eng = GradientEngine(model, CrossEntropyObjective(), params=["emb.weight"], device=x.device)
    u = eng.factor_grads(0, x, y).double()  # (n, K, V*E)
    want = u.pow(2).sum((0, 1)) / len(y)
    torch.testing.assert_close(layer.eigenvalues, want, rtol=1e-10, atol=1e-14)
    assert float(layer.eigenvalues.reshape(9, 8)[0].abs().max()) == 0.0  # padding_idx


def test_a_fitted_tapped_model_pickles(transformer_case):
    """The fitted back-end (its tapped model copy included) travels to Dask workers."""
    import pickle

    model, x, y = transformer_case
    sc = _fit(model, x, y)
    back = pickle.loads(pickle.dumps(sc.backend))
    a = sc.backend.self_influence(sc.engine, sc.train, progress=False)
    b = back.self_influence(sc.engine, sc.train, progress=False)
    np.testing.assert_array_equal(a, b)


def test_graph_and_module_give_the_same_scores(transformer_case):
    """A torch.export graph (MLflow's pt2 flavour) runs attention as linear calls on
    (L, B, E) and (L * B, E) rows; they are factored in sequence-major layout and the
    scores equal the module's."""
    model, x, y = transformer_case
    gm = torch.export.export(model, (x[:4],), dynamic_shapes=({0: torch.export.Dim("b")},)).module()
    a = _fit(model, x, y).self_influence((x, y)).scores
    sc = _fit(gm, x, y)
    b = sc.self_influence((x, y)).scores
    np.testing.assert_allclose(b, a, rtol=1e-8)
    seq = [ly.spec.seq_major for ly in sc.backend.layers if ly.kind == "linear"]
    assert (5, 1) in seq and (5, 0) in seq  # in-projection on (L, B, E), out on (L * B, E)
    block, _ = _blocks(sc)
    assert block == []  # layer norms and both tables hooked in the graph too


def test_graph_batch_norm_is_hooked_like_the_module(one_thread):
    """An exported CNN's eval-mode batch norms (aten.batch_norm) are tapped: no per-example
    block, and the scores equal the module's."""
    from tests.influence.test_ekfac_capabilities import _bn_case

    model, x, y = _bn_case()
    gm = torch.export.export(model, (x[:4],), dynamic_shapes=({0: torch.export.Dim("b")},)).module()
    a = _fit(model, x, y).self_influence((x, y)).scores
    sc = _fit(gm, x, y)
    np.testing.assert_allclose(sc.self_influence((x, y)).scores, a, rtol=1e-10)
    assert _blocks(sc)[0] == []


class TiedHead(nn.Module):
    """The output head reuses the embedding table (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.mix = nn.Linear(4, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.emb(tokens).mean(1)))
        return F.linear(h, self.emb.weight)[:, :3]


class SharedTableAfterTransform(nn.Module):
    """A position table added to tanh(token embeddings): the token table's output
    gradients are not the position table's, so the borrowing is refused by the check."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.pos = nn.Embedding(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        h = torch.tanh(self.emb(tokens)) * self.pos(pos).unsqueeze(0)
        return self.head(h.mean(1))


class CrossAttention(nn.Module):
    """Queries from one half of the sequence attend to the other half: q and k differ."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.att = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.emb(tokens)
        out, _ = self.att(e[:, :2], e[:, 2:], e[:, 2:])
        return self.head(out.mean(1))


@pytest.mark.parametrize(
    ("model", "params", "reason"),
    [
        (TiedHead(), ["emb.weight"], "differs from autograd's"),
        (CrossAttention(), ["att.in_proj_weight", "att.out_proj.weight"], "without calling"),
        (SharedTableAfterTransform(), ["pos.weight"], "does not lead with the batch"),
    ],
    ids=["tied-weights", "cross-attention", "shared-table"],
)
def test_layers_whose_hooks_cannot_give_per_example_gradients_get_the_exact_block(
    model, params, reason
):
    model, x, y = _token_case(model, 6, 4, 3)
    sc = _fit(model, x, y)
    block, reasons = _blocks(sc)
    for name in params:
        assert name in block and reason in reasons[name], (name, reasons.get(name))
    # the fitted curvature is still exact where it claims to be: scores equal the implied
    # matrix's (the block's per-example gradients come from torch.func)
    a_inv = sc.backend.solve(torch.eye(sc.engine.n_params, dtype=torch.float64))
    g = sc.engine.per_example_grads(0, x, y).double()
    want = torch.einsum("bp,pq,bq->b", g, a_inv, g).numpy()
    np.testing.assert_allclose(sc.self_influence((x, y)).scores, want, rtol=1e-8)


def test_batched_output_gradients_equal_one_backward_pass_per_row(transformer_case):
    model, x, y = transformer_case
    eng = GradientEngine(model, CrossEntropyObjective(), device=x.device)
    plan = plan_layers(eng)
    from infgate.influence.backends.ekfac import _layer_for

    layers = [_layer_for(s, eng) for s in plan.layers]
    with LayerCapture(eng, layers, 0, x[:7], y[:7], model=plan.model) as cap:
        c = cap.output.shape[1]
        probes = torch.randn(c, 7, c, dtype=torch.float64)
        many = cap.output_grads_many(cap.output, probes)
        for k in range(c):
            one = cap.output_grads(cap.output, probes[k])
            for a, b in zip(one, many[k], strict=True):
                torch.testing.assert_close(b[0], a[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["exact", "kfac", "ekfac"])
def test_scores_do_not_depend_on_how_far_sequences_are_padded(method):
    """A transformer that masks its pad id (embedding ``padding_idx``, key padding mask,
    masked mean) gives the same logits however far sequences are padded; the scores must
    not move either. For K-FAC/EK-FAC this needs padded positions (zero output gradient for
    every sampled output) left out of the input factor and the location count."""
    from infgate.examples.networks import TransformerClassifier, ragged_token_sequences

    torch.manual_seed(0)
    model = TransformerClassifier(
        vocab=12, classes=3, max_len=16, d_model=8, heads=2, layers=1, ff=16, pad_id=0
    ).double()
    model.eval()
    rows, y = ragged_token_sequences(30, vocab=12, min_length=2, max_length=9, classes=3, seed=1)

    def padded(length: int) -> torch.Tensor:
        x = torch.zeros(len(rows), length, dtype=torch.int64)
        for i, r in enumerate(rows):
            x[i, : len(r)] = torch.as_tensor(r)
        return x

    short, long = padded(9), padded(15)
    with torch.no_grad():
        torch.testing.assert_close(model(long), model(short), rtol=1e-12, atol=1e-12)
    a = InfluenceScorer(model, (short, y), method=method, damping=DAMPING, progress=False)
    b = InfluenceScorer(model, (long, y), method=method, damping=DAMPING, progress=False)
    sa, sb = a.self_influence().scores, b.self_influence().scores
    assert np.isfinite(sa).all() and sa.std() > 0
    np.testing.assert_allclose(sb, sa, rtol=1e-6)
