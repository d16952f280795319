"""The noise channel's identifiability check: ``NoiseModel.diagonal_margin``.

A class-conditional channel is identifiable only when it is diagonally dominant. A weak
model (untrained, or stopped early) makes EM explain the training labels with a channel
that mislabels most of every class, and the count becomes "every row": the check must
say so (warning, attrs, summary line), and stay quiet on a model that learned the data.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from infgate.detect import find_label_errors
from infgate.detect.calibrate import NoiseModel
from infgate.examples.networks import TrainOptions, flip_labels, train_network
from sklearn.datasets import load_digits
from torch import nn


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    noisy, _ = flip_labels(y[:600], 0.1, classes=10, seed=0)
    return x, y, noisy


def _mlp(x: torch.Tensor, labels: torch.Tensor, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    if epochs:
        opts = TrainOptions(epochs=epochs, lr=3e-3, weight_decay=1e-3, seed=0)
        model = train_network(model, x[:600], labels, opts)
    return model.eval()


def test_margin_is_the_smallest_diagonal_lead() -> None:
    t = np.array([[0.8, 0.15, 0.05], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3]])
    post = np.full((4, 3), 1 / 3)
    labels = np.array([0, 1, 2, 0])
    model = NoiseModel(transition=t, temperature=1.0, log_likelihood=0.0, posterior=post,
                       labels=labels)  # fmt: skip
    assert model.diagonal_margin == pytest.approx(0.3 - 0.5)
    # classes no given label uses do not count
    only = NoiseModel(transition=t, temperature=1.0, log_likelihood=0.0, posterior=post[:2],
                      labels=np.array([0, 1]))  # fmt: skip
    assert only.diagonal_margin == pytest.approx(0.3)


def test_a_weak_model_is_reported_not_counted(digits, caplog) -> None:  # type: ignore[no-untyped-def]
    """On the model's own leave-one-out posterior (``posterior="model"``, what a GLM and a
    scan without labelled evaluation data use) a weak model's channel is not identifiable
    and is reported; the default count of a network, from its evaluation neighbours, does
    not depend on the model at all and stays right."""
    from infgate.detect import NoiseModelOptions

    x, y, noisy = digits
    untrained = _mlp(x, noisy, epochs=0)  # about chance on the evaluation rows
    kw = {"eval_data": (x[600:900], y[600:900]), "damping": 1e-3, "progress": False}
    with caplog.at_level(logging.WARNING):
        df = find_label_errors(
            untrained, (x[:600], noisy), noise_options=NoiseModelOptions(posterior="model"), **kw
        )
    assert df.attrs["noise_diagonal_margin"] <= 0.0
    assert df.attrs["expected_errors"] > 300  # the count it would have trusted
    assert any("not diagonally dominant" in r.getMessage() for r in caplog.records)
    # digits rows are ordered by writer: a random split, so evaluation rows are drawn like
    # the training rows (the neighbour posterior's premise; an ordered split fails its test)
    rows = torch.as_tensor(np.random.default_rng(1).permutation(900))
    xs, ys = x[rows], y[rows]
    noisy_s, _ = flip_labels(ys[:600], 0.1, classes=10, seed=0)
    kw["eval_data"] = (xs[600:], ys[600:])
    by_neighbours = find_label_errors(_mlp(xs, noisy_s, epochs=0), (xs[:600], noisy_s), **kw)
    flips = int((noisy_s != ys[:600]).sum())
    assert by_neighbours.attrs["noise_posterior"] == "neighbours"
    assert abs(by_neighbours.attrs["expected_errors"] - flips) <= 0.25 * flips


def test_a_trained_model_passes_the_check(digits, caplog) -> None:  # type: ignore[no-untyped-def]
    x, y, noisy = digits
    trained = _mlp(x, noisy, epochs=30)
    with caplog.at_level(logging.WARNING):
        df = find_label_errors(
            trained, (x[:600], noisy), eval_data=(x[600:900], y[600:900]), damping=1e-3,
            progress=False,
        )  # fmt: skip
    assert df.attrs["noise_diagonal_margin"] > 0.5
    assert not any("not diagonally dominant" in r.getMessage() for r in caplog.records)
    flips = int((noisy != y[:600]).sum())
    assert 0.5 * flips <= df.attrs["expected_errors"] <= 2.0 * flips
