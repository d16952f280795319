"""Neighbour agreement in the model's own representation: a label its neighbours disagree with.

The input of the model's last linear layer (the penultimate representation; for softmax
regression the features themselves) places examples the model treats alike next to each
other. A label that few of its ``k`` nearest neighbours (cosine similarity) share is
suspect regardless of how well the model memorized it: memorizing one flipped label moves
the head, not the representation of its neighbours (Bahri et al. 2020, "Deep k-NN for
noisy labels"). No retraining: one forward pass, then a chunked nearest-neighbour search.

Chosen on the development grid only (digits, breast_cancer, spam7, wine; softmax regression
and a 32-unit MLP; 5/10/20% uniform and class-conditional flips; seeds 0-1): the rank
average of the filtered margin and the neighbour disagreement (``k = 10``) had mean AP
0.844 (softmax) and 0.829 (MLP) against 0.824 / 0.770 for the filtered margin alone and
0.811 / 0.755 for the in-sample loss, and beat the loss in 31 of 32 softmax and 30 of 32
MLP paired runs (k = 5: 0.841 / 0.815, k = 20: 0.848 / 0.833).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from infgate.errors import InvalidInputError
from infgate.influence.batches import BatchSource
from torch import nn

__all__ = ["NEIGHBOURS", "neighbour_disagreement", "penultimate_features"]

log = logging.getLogger(__name__)

#: neighbours per example (fixed on the development grid).
NEIGHBOURS = 10


def _head(model: nn.Module) -> nn.Linear:
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise InvalidInputError(
            f"neighbour agreement needs a model whose output layer is nn.Linear; "
            f"{type(model).__name__} has none. Use a ranking method without 'neighbours'"
        )
    return heads[-1]


def penultimate_features(model: nn.Module, source: BatchSource) -> np.ndarray:
    """The input of the model's last ``nn.Linear`` for every example, ``(n, d)`` float32.

    Raises:
        InvalidInputError: the model has no ``nn.Linear`` layer.
    """
    head = _head(model)
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach().reshape(inputs[0].shape[0], -1).float().cpu())

    handle = head.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for _, x, _ in source:
                model(x.to(device))
    finally:
        handle.remove()
    return torch.cat(captured).numpy()


def neighbour_disagreement(
    features: np.ndarray, labels: np.ndarray, *, k: int = NEIGHBOURS, chunk: int = 2048
) -> np.ndarray:
    """Share of each example's ``k`` nearest neighbours (cosine) whose label differs, ``(n,)``.

    Args:
        features: ``(n, d)`` representation.
        labels: ``(n,)`` given labels.
        k: neighbours (capped at ``n - 1``).
        chunk: query rows per block (memory ``chunk x n`` floats).

    Raises:
        InvalidInputError: mismatched lengths or ``k < 1``.
    """
    if len(features) != len(labels):
        raise InvalidInputError(
            f"features has {len(features):,} rows but labels has {len(labels):,}"
        )
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k!r}")
    n = len(labels)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(n)
    f = np.asarray(features, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    out = np.empty(n)
    for start in range(0, n, chunk):
        sim = f[start : start + chunk] @ f.T
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf  # not its own neighbour
        nb = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        out[start : start + chunk] = 1.0 - (labels[nb] == labels[start + rows, None]).mean(1)
    return out
