"""Label-error ranking: leave-one-out maths against retraining, planted flips recovered."""

from __future__ import annotations

import copy
from typing import get_args

import numpy as np
import pytest
import torch
from infgate.detect import (
    LABEL_ERROR_COLUMNS,
    RankingMethod,
    approximate_loo,
    find_label_errors,
    ranking_scores,
)
from infgate.detect.calibrate import fit_noise_model
from infgate.detect.eval_influence import eval_loss_influence
from infgate.detect.filtered import filtered_probabilities
from infgate.detect.neighbours import neighbour_disagreement, penultimate_features
from infgate.errors import InvalidInputError
from infgate.examples.models import make_classifier, train_classifier
from infgate.influence import InfluenceScorer
from sklearn.datasets import load_breast_cancer

from .conftest import WEIGHT_DECAY, Flipped


def test_leave_one_out_probabilities_match_retraining() -> None:
    """Softmax regression: approximate LOO probabilities vs actually retraining without i."""
    d = load_breast_cancer()
    x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype(np.float32)[:300]
    y = d.target[:300].copy()
    y[[3, 10, 25]] = 1 - y[[3, 10, 25]]  # some hard examples with large LOO shifts
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model = make_classifier(30, 2, generator=torch.Generator().manual_seed(0))
    train_classifier(model, xt, yt, weight_decay=WEIGHT_DECAY, max_iter=2000)
    scorer = InfluenceScorer(model, (xt, yt), damping=WEIGHT_DECAY, progress=False)
    out = approximate_loo(scorer)
    exact = scorer.self_influence().scores
    np.testing.assert_allclose(out.self_influence, exact, rtol=1e-3, atol=1e-6 * exact.max())
    for i in (3, 10, 25, 40):
        weights = torch.ones(len(y))
        weights[i] = 0.0
        loo = copy.deepcopy(model)
        train_classifier(
            loo, xt, yt, weight_decay=WEIGHT_DECAY, sample_weight=weights, max_iter=2000
        )
        with torch.no_grad():
            true_p = torch.softmax(loo(xt[i : i + 1]).double(), 1)[0].numpy()
        shift = abs(true_p[y[i]] - out.probs[i, y[i]])
        err = abs(true_p[y[i]] - out.loo_probs[i, y[i]])
        assert err < 5e-3, (i, true_p, out.loo_probs[i])
        assert err < 0.2 * shift + 1e-4  # far closer than the in-sample probability


def test_planted_flips_are_recovered(digits_flipped: Flipped) -> None:
    f = digits_flipped
    df = find_label_errors(f.model, f.data, scorer=f.scorer, progress=False)
    assert list(df.columns) == LABEL_ERROR_COLUMNS
    assert df["rank"].tolist() == list(range(1, len(f.data) + 1))
    assert (np.diff(df["score"].to_numpy()) <= 0).all()
    rows = df["example_id"].astype(int).to_numpy()
    k = round(0.2 * len(df))
    recall = f.flipped[rows[:k]].sum() / f.flipped.sum()
    assert recall >= 0.9
    # Suggested labels restore the original label for most recovered flips.
    top = rows[:k][f.flipped[rows[:k]]]
    suggested = df["suggested_label"].to_numpy()[:k][f.flipped[rows[:k]]]
    assert (suggested == f.clean[top]).mean() >= 0.8
    conf = df["suggestion_confidence"].to_numpy()
    assert ((conf >= 0) & (conf <= 1)).all()
    # is_suspect: a prefix of the ranking sized by the noise model's expected error count.
    n_est = int(df.attrs["n_estimated_errors"])
    assert n_est == round(df["error_probability"].sum())
    assert df["is_suspect"].sum() == n_est
    assert df["is_suspect"].iloc[:n_est].all()
    assert 0.8 * f.flipped.sum() <= n_est <= 1.2 * f.flipped.sum()
    assert f.flipped[rows[:n_est]].mean() >= 0.9  # suspects are mostly real flips
    sus = df[df["is_suspect"]]
    assert (sus["suggested_label"] != sus["given_label"]).all()  # a suspect gets a replacement
    assert df["eval_influence"].isna().all()  # no eval_data given
    assert (df["given_label"].to_numpy() == f.data.labels[rows]).all()


def test_every_method_ranks_and_default_beats_random(digits_flipped: Flipped) -> None:
    out = approximate_loo(digits_flipped.scorer)
    filtered = filtered_probabilities(digits_flipped.scorer)
    noise = fit_noise_model(out.loo_probs, out.labels)
    flipped = digits_flipped.flipped
    x, _ = digits_flipped.data.as_tensors()
    ev = eval_loss_influence(digits_flipped.scorer, (x, torch.as_tensor(digits_flipped.clean)))
    nb = neighbour_disagreement(
        penultimate_features(digits_flipped.model, digits_flipped.scorer.train), out.labels
    )
    k = round(0.1 * len(flipped))
    for method in get_args(RankingMethod):
        s = ranking_scores(out, method, filtered, noise=noise, eval_influence=ev, neighbours=nb)
        assert s.shape == flipped.shape and np.isfinite(s).all()
        found = flipped[np.argsort(-s, kind="stable")[:k]].sum() / flipped.sum()
        assert found > 0.3, method  # random finds 10%


def test_bad_input_raises_clear_errors(digits_flipped: Flipped) -> None:
    f = digits_flipped
    with pytest.raises(InvalidInputError, match="method must be one of"):
        find_label_errors(f.model, f.data, method="bogus", progress=False)  # type: ignore[arg-type]
    x, y = f.data.as_tensors()
    y_bad = y.clone()
    y_bad[5] = 12
    with pytest.raises(InvalidInputError, match=r"valid labels are 0\.\.9"):
        find_label_errors(f.model, (x, y_bad), progress=False)
    with pytest.raises(InvalidInputError, match="fitted on 1,797 examples"):
        find_label_errors(f.model, (x[:100], y[:100]), scorer=f.scorer, progress=False)
    with pytest.raises(InvalidInputError, match=r"damping=0\.1 but the scorer was fitted"):
        find_label_errors(f.model, f.data, scorer=f.scorer, damping=0.1, progress=False)
    with pytest.raises(InvalidInputError, match="needs labelled evaluation data"):
        find_label_errors(f.model, f.data, scorer=f.scorer, method="eval_influence")
    with pytest.raises(InvalidInputError, match="eval_data has no labels"):
        find_label_errors(f.model, f.data, scorer=f.scorer, eval_data=x[:10], progress=False)


def test_neighbour_disagreement_by_hand() -> None:
    # two tight clusters on the unit circle; row 2 carries the other cluster's label
    f = np.array([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1], [0.0, 1.0], [0.1, 0.99], [-0.1, 0.98]])
    y = np.array([0, 0, 1, 1, 1, 1])
    got = neighbour_disagreement(f, y, k=2)
    # row 2's neighbours are rows 0 and 1 (label 0): both disagree; rows 0/1 see row 2 and
    # one of each other: 1 of 2 disagree; the second cluster agrees fully
    np.testing.assert_allclose(got, [0.5, 0.5, 1.0, 0.0, 0.0, 0.0])
    with pytest.raises(InvalidInputError, match="k must be >= 1, got 0"):
        neighbour_disagreement(f, y, k=0)


def test_filtered_neighbours_recovers_planted_flips(digits_flipped: Flipped) -> None:
    f = digits_flipped
    df = find_label_errors(f.model, f.data, scorer=f.scorer, method="filtered_neighbours")
    rows = df["example_id"].astype(int).to_numpy()
    k = round(0.1 * len(df))
    assert f.flipped[rows[:k]].sum() / f.flipped.sum() >= 0.9  # 10% checked, 10% flipped
