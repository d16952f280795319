"""Shared builders for the approximate back-end tests (issue 5): small trained models.

Everything is built inside fixtures with its own ``torch.Generator``; nothing at import time.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from infgate.examples.models import make_classifier, train_classifier
from scipy.stats import spearmanr
from torch import nn

#: Damping used against exact: the weight decay the models are trained with, so
#: ``H + lambda I`` is the Hessian (Gauss-Newton) of the training objective.
DAMPING = 1e-2


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Single-threaded torch: faster on the shared 2-core CI box (no thread contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(
    n: int = 300, d: int = 8, k: int = 4, seed: int = 0, flips: int = 15
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs (float64) with ``flips`` labels moved to the next class."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g, dtype=torch.float64) * 1.5
    y = torch.randint(0, k, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    flip = torch.randperm(n, generator=g)[:flips]
    y[flip] = (y[flip] + 1) % k
    return x, y


def trained_mlp(x: torch.Tensor, y: torch.Tensor, hidden: int = 16, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = make_classifier(
        x.shape[1], int(y.max()) + 1, hidden=(hidden,), generator=g, dtype=torch.float64
    )
    return train_classifier(model, x, y, weight_decay=DAMPING)


class TinyCNN(nn.Module):
    """conv(1->4, 3x3) -> tanh -> conv(4->6, 3x3, padding 1, stride 2) -> tanh -> linear."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.head = nn.Linear(6 * 2 * 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return self.head(h.flatten(1))


def images(n: int = 200, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """6x6 one-channel images of three oriented bar patterns plus noise (float64)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(3, 6, 6, dtype=torch.float64)
    base[0, 2:4, :] = 1.0
    base[1, :, 2:4] = 1.0
    base[2] = torch.eye(6, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    x = base[y] + 0.6 * torch.randn(n, 6, 6, generator=g, dtype=torch.float64)
    flip = torch.randperm(n, generator=g)[: n // 20]
    y[flip] = (y[flip] + 1) % 3
    return x.unsqueeze(1), y


def trained_cnn(x: torch.Tensor, y: torch.Tensor, seed: int = 4) -> nn.Module:
    torch.manual_seed(seed)  # module init only; data has its own Generator
    model = TinyCNN().double()
    return train_classifier(model, x.reshape(x.shape[0], 1, 6, 6), y, weight_decay=DAMPING)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a, b)[0])


def top_overlap(a: np.ndarray, b: np.ndarray, frac: float = 0.1) -> float:
    """Share of ``b``'s top ``frac`` examples that are also in ``a``'s top ``frac``."""
    k = max(1, round(len(a) * frac))
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k


@functools.cache
def _default_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x, y = blobs()
    return trained_mlp(x, y), x, y


def default_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The MLP on :func:`blobs` (212 parameters), trained once per test session; copies."""
    model, x, y = _default_mlp()
    return copy.deepcopy(model), x.clone(), y.clone()


@functools.cache
def _default_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x, y = images()
    return trained_cnn(x, y), x, y


def default_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """:class:`TinyCNN` on :func:`images`, trained once per test session; copies."""
    model, x, y = _default_cnn()
    return copy.deepcopy(model), x.clone(), y.clone()
