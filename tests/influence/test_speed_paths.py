"""Speed paths keep the old results: EK-FAC's own diagonal block takes its products in the
model's dtype (float32) and keeps float64 results, as the Kronecker layers do; checked here
against the float64 formulas it replaced, on a float32 model (relative 1e-5)."""

from __future__ import annotations

import torch
from infgate.influence import InfluenceScorer

from tests.influence.approx_helpers import DAMPING, one_thread
from tests.influence.test_ekfac_capabilities import PosSeqNet

__all__ = ["one_thread"]


def _case() -> tuple[InfluenceScorer, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    model = PosSeqNet().eval()  # float32: the position table goes to the diagonal block
    tokens = torch.randint(0, 7, (48, 6), generator=g)
    y = torch.randint(0, 3, (48,), generator=g)
    sc = InfluenceScorer(model, (tokens, y), method="ekfac", damping=DAMPING, progress=False)
    return sc, tokens, y


def test_diagonal_block_float32_products_match_the_float64_formulas() -> None:
    sc, tokens, y = _case()
    block = sc.backend.block
    assert block is not None and block.names == ["pos.weight"]
    assert sc.backend.fisher == "expected"
    # the fitted diagonal: E_i[sum_k (A_i J_i)_kp^2], old path squared a float64 copy
    u = block.engine.factor_grads(0, tokens, y).double()
    torch.testing.assert_close(block.diag, u.pow(2).sum((0, 1)) / len(y), rtol=1e-5, atol=1e-12)
    # the leverage pieces, old path: float64 Jacobians and einsum
    logits = block.engine.outputs(tokens).double()
    r = torch.softmax(logits, dim=1)
    r[torch.arange(len(y)), y] -= 1.0
    lev, g2, s2 = block.leverage(tokens, r)
    jac = block.engine.output_jacobians(tokens).double()
    z = jac * block.inv.sqrt()
    want = torch.einsum("bcp,bdp->bcd", z, z)
    scale = float(want.abs().max())
    torch.testing.assert_close(lev, want, rtol=1e-5, atol=1e-6 * scale)
    g = torch.einsum("bc,bcp->bp", r, jac)
    torch.testing.assert_close(g2, g.pow(2).sum(1), rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(s2, (g * block.inv).pow(2).sum(1), rtol=1e-5, atol=1e-12)
    assert lev.dtype == g2.dtype == s2.dtype == torch.float64


def test_leave_one_out_sweep_filled_in_place_equals_the_joined_batches() -> None:
    """The sweep writes each batch into arrays allocated once (flat memory in n); the
    result is exactly the old join of per-batch outputs, in dataset order."""
    from dataclasses import fields

    from infgate.detect.loo import LooOutputs, _loo_batch, approximate_loo

    sc, tokens, y = _case()
    sc_small = InfluenceScorer(
        sc.engine.model, (tokens, y), method="ekfac", damping=DAMPING, progress=False,
        batch_size=7,
    )  # fmt: skip
    got = approximate_loo(sc_small)
    parts = [
        LooOutputs(**_loo_batch(sc_small.engine, sc_small.backend, len(y), s, x, t))
        for s, x, t in sc_small.train
    ]
    want = LooOutputs.concat(parts)
    assert len(got.labels) == len(y)
    for f in fields(LooOutputs):
        assert (getattr(got, f.name) == getattr(want, f.name)).all(), f.name
