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
