"""Explanations: supporting/opposing training examples are the extremes of train->test influence."""

from __future__ import annotations

import numpy as np
import pytest
from infgate.detect import EXPLAIN_COLUMNS, explain
from infgate.errors import InvalidInputError

from .conftest import Flipped


def test_explain_training_examples_uses_exact_influence_extremes(digits_flipped: Flipped) -> None:
    f = digits_flipped
    ids = [str(i) for i in np.flatnonzero(f.flipped)[:2]]
    df = explain(f.scorer, f.data, ids, top=4)
    assert list(df.columns) == EXPLAIN_COLUMNS
    assert len(df) == 2 * 2 * 4
    x, y = f.data.as_tensors()
    rows = [int(i) for i in ids]
    values = f.scorer.influence((x[rows], y[rows])).values
    for j, ex in enumerate(ids):
        col = values[:, j].copy()
        col[rows[j]] = np.nan  # never its own supporter
        sub = df[df["example_id"] == ex]
        sup = sub[sub["role"] == "supporting"]
        opp = sub[sub["role"] == "opposing"]
        np.testing.assert_allclose(sup["influence"], np.sort(col[~np.isnan(col)])[:4])
        np.testing.assert_allclose(opp["influence"], np.sort(col[~np.isnan(col)])[::-1][:4])
        assert ex not in set(sup["train_example_id"])
        assert (sup["influence"].to_numpy() < 0).all() and (opp["influence"].to_numpy() > 0).all()


def test_explain_features_alone_uses_predictions(digits_flipped: Flipped) -> None:
    f = digits_flipped
    df = explain(f.scorer, f.data, f.data.features[:3], top=2)
    assert set(df["example_id"]) == {"eval0", "eval1", "eval2"}
    assert set(df["role"]) == {"supporting", "opposing"}
    with pytest.raises(InvalidInputError, match="not found"):
        explain(f.scorer, f.data, ["no-such-id"])
    with pytest.raises(InvalidInputError, match="shape"):
        explain(f.scorer, f.data, f.data.features[:3, :10])
