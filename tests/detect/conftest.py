"""Session fixtures for detection tests: one digits model with planted flips, one clean split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from infgate.data.training import TrainingData
from infgate.examples.models import make_classifier, train_classifier
from infgate.influence import InfluenceScorer
from infgate.plugins.cli.demo import digits_with_flips
from torch import nn

WEIGHT_DECAY = 1e-3


@dataclass(frozen=True)
class Flipped:
    data: TrainingData
    flipped: np.ndarray
    clean: np.ndarray
    model: nn.Module
    scorer: InfluenceScorer


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    pool_x: np.ndarray
    pool_y: np.ndarray
    model: nn.Module


def _fit(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    model = make_classifier(x.shape[1], 10, generator=torch.Generator().manual_seed(seed))
    return train_classifier(model, x, y, weight_decay=WEIGHT_DECAY)


@pytest.fixture(scope="session")
def digits_flipped() -> Flipped:
    """Digits with 10% uniform flips, softmax regression, fitted exact curvature."""
    data, flipped, clean = digits_with_flips(0.10, seed=0)
    x, y = data.as_tensors()
    model = _fit(x, y, 0)
    scorer = InfluenceScorer(model, data, damping=WEIGHT_DECAY, progress=False)
    return Flipped(data, flipped, clean, model, scorer)


@pytest.fixture(scope="session")
def digits_split() -> Split:
    """Clean digits: 900 training rows (model fitted on them), the rest as an eval pool."""
    data, _, _ = digits_with_flips(0.0, seed=0)
    perm = np.random.default_rng(7).permutation(len(data))
    tr, pool = perm[:900], perm[900:]
    x = torch.as_tensor(data.features[tr])
    y = torch.as_tensor(data.labels[tr])
    return Split(x, y, data.features[pool], data.labels[pool], _fit(x, y, 1))
