"""Leave-one-out retraining against the influence prediction (Koh & Liang 2017, Fig. 2).

Removing training example i is up-weighting it by eps = -1/n, so the predicted change in a
test loss is ``-I_up,loss(z_i, z_test) / n``. We retrain a convex model (softmax regression
with L2, L-BFGS to convergence, warm-started at the full-data optimum) without each of the
most influential points and compare.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from infgate.examples.models import make_classifier, train_classifier
from infgate.influence import influence
from scipy.stats import pearsonr, spearmanr
from sklearn.datasets import load_digits

WEIGHT_DECAY = 1e-2
N_TRAIN = 300
TOP = 20


@pytest.mark.slow
def test_leave_one_out_matches_prediction():
    d = load_digits()
    x = torch.tensor(d.data[: N_TRAIN + 50] / 16.0, dtype=torch.float64)
    y = torch.tensor(d.target[: N_TRAIN + 50])
    xtr, ytr, xte, yte = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    model = make_classifier(64, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    train_classifier(model, xtr, ytr, weight_decay=WEIGHT_DECAY, tolerance=1e-9, max_iter=2000)
    with torch.no_grad():
        test_losses = F.cross_entropy(model(xte), yte, reduction="none")
    j = int(test_losses.argmax())  # the worst-predicted test example: large, clear effects
    test = (xte[j : j + 1], yte[j : j + 1])

    # damping = weight decay makes H + lambda I the exact Hessian of the training objective.
    values = influence(model, (xtr, ytr), test, damping=WEIGHT_DECAY, progress=False).values[:, 0]
    predicted = -values / N_TRAIN
    top = np.argsort(-np.abs(predicted))[:TOP]

    base = float(test_losses[j])
    actual = []
    for i in top:
        weight = torch.ones(N_TRAIN, dtype=torch.float64)
        weight[i] = 0.0
        retrained = train_classifier(
            copy.deepcopy(model),
            xtr,
            ytr,
            weight_decay=WEIGHT_DECAY,
            tolerance=1e-9,
            max_iter=2000,
            sample_weight=weight,
        )
        with torch.no_grad():
            actual.append(float(F.cross_entropy(retrained(test[0]), test[1])) - base)
    actual_arr = np.array(actual)
    pear = pearsonr(predicted[top], actual_arr).statistic
    spear = spearmanr(predicted[top], actual_arr).statistic
    assert pear >= 0.95, f"Pearson {pear:.3f}"
    assert spear >= 0.95, f"Spearman {spear:.3f}"
    # And the scale is right, not only the order.
    slope = float(np.polyfit(predicted[top], actual_arr, 1)[0])
    assert 0.8 < slope < 1.3, f"slope {slope:.3f}"  # measured 1.20: removal is a finite step
