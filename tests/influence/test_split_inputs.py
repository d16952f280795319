"""Models with several inputs (``forward(input_ids, attention_mask)``), wrapped by
:class:`SplitInputs`: the same scores as the same network taking one input, for the exact
and the EK-FAC back-ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infgate.errors import InvalidInputError
from infgate.examples.networks import (
    AttentionMaskClassifier,
    TransformerClassifier,
    ragged_token_sequences,
)
from infgate.influence import InfluenceScorer, SplitInputs

from tests.influence.approx_helpers import DAMPING, one_thread

__all__ = ["one_thread"]

KW = {"vocab": 12, "classes": 3, "max_len": 10, "d_model": 8, "heads": 2, "layers": 1, "ff": 16}


def _case() -> tuple[TransformerClassifier, SplitInputs, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    one = TransformerClassifier(pad_id=0, **KW).double().eval()  # masks its pad id itself
    two = AttentionMaskClassifier(pad_id=0, **KW).double().eval()  # takes the mask
    two.load_state_dict(one.state_dict())
    rows, y = ragged_token_sequences(24, vocab=12, min_length=2, max_length=9, classes=3, seed=2)
    ids = torch.zeros(24, 9, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r)
    return one, SplitInputs(two, 2), torch.stack([ids, (ids != 0).long()], dim=1), y


@pytest.mark.parametrize("method", ["exact", "ekfac"])
def test_two_inputs_score_like_one(method: str) -> None:
    one, packed, x, y = _case()
    with torch.no_grad():
        torch.testing.assert_close(packed(x), one(x[:, 0]), rtol=1e-12, atol=1e-12)
    kw = {"method": method, "damping": DAMPING, "progress": False}
    want = InfluenceScorer(one, (x[:, 0], y), **kw).self_influence().scores  # type: ignore[arg-type]
    sc = InfluenceScorer(packed, (x, y), **kw)  # type: ignore[arg-type]
    got = sc.self_influence().scores
    np.testing.assert_allclose(got, want, rtol=1e-8)
    assert all(n.startswith("model.") for n in sc.engine.names)


def test_split_inputs_keeps_the_mode_and_checks_the_stack() -> None:
    _, packed, x, _ = _case()
    assert not packed.training
    train_mode = SplitInputs(AttentionMaskClassifier(**KW).train(), 2)
    assert train_mode.training  # the influence stage refuses it, as it would the model
    with pytest.raises(InvalidInputError, match="takes 2 inputs stacked along dimension 1"):
        packed(x[:, 0])
    with pytest.raises(InvalidInputError, match="k >= 2"):
        SplitInputs(packed.model, 1)


def _exported(model: torch.nn.Module, *example: torch.Tensor) -> torch.nn.Module:
    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} for _ in example)
    return torch.export.export(model, example, dynamic_shapes=shapes).module()


def test_a_pt2_model_of_two_inputs_is_kronecker_factored_like_one() -> None:
    """A pt2 graph taking ``(input_ids, attention_mask)``, wrapped by SplitInputs: EK-FAC
    plans the graph inside the wrapper (its linear, attention, embedding and norm calls get
    their factors under the wrapper's ``model.`` names) and scores like the exported
    one-input network."""
    from infgate.influence.backends.layer_plan import plan_layers

    one, packed, x, y = _case()
    g_one = _exported(one, x[:2, 0])
    g_two = SplitInputs(_exported(packed.model, x[:2, 0], x[:2, 1]), 2)
    kw = {"method": "ekfac", "damping": DAMPING, "progress": False}
    want_sc = InfluenceScorer(g_one, (x[:, 0], y), **kw)  # type: ignore[arg-type]
    sc = InfluenceScorer(g_two, (x, y), **kw)  # type: ignore[arg-type]
    plan = plan_layers(sc.engine)
    want_plan = plan_layers(want_sc.engine)
    assert len(plan.layers) == len(want_plan.layers) > 0
    assert {s.weight for s in plan.layers} == {f"model.{s.weight}" for s in want_plan.layers}
    assert set(plan.own_block) == {f"model.{n}" for n in want_plan.own_block}
    assert isinstance(plan.model, SplitInputs)
    np.testing.assert_allclose(
        sc.self_influence().scores, want_sc.self_influence().scores, rtol=1e-8
    )
