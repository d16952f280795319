"""Models that take several input tensors (``forward(input_ids, attention_mask)``).

Every stage of infgate hands a model ONE tensor per batch. :class:`SplitInputs` makes a
model of ``k`` inputs into one: it takes the inputs stacked along dimension 1, ``(B, k,
...)`` (how :mod:`infgate.data.decode` reads ``k`` token columns), and calls the model with
``x[:, 0], ..., x[:, k - 1]`` as positional arguments. Its parameters are the model's,
named ``model.<name>``.
"""

from __future__ import annotations

from typing import Any

import torch
from infgate.errors import InvalidInputError
from torch import nn

__all__ = ["SplitInputs"]


class SplitInputs(nn.Module):
    """``model`` called with ``x.unbind(1)``: its ``k`` inputs stacked along dimension 1.

    The wrapper keeps the model's mode (a model in training mode is still refused by the
    influence stage) and changes nothing about it.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        if not isinstance(k, int) or k < 2:
            raise InvalidInputError(f"SplitInputs needs k >= 2 inputs, got {k!r}")
        super().__init__()
        self.model = model
        self.k = k
        self.training = model.training  # the model's mode, not switched

    def forward(self, x: torch.Tensor) -> Any:
        if x.ndim < 2 or x.shape[1] != self.k:
            raise InvalidInputError(
                f"the model takes {self.k} inputs stacked along dimension 1, got a tensor of "
                f"shape {tuple(x.shape)}"
            )
        return self.model(*x.unbind(1))
