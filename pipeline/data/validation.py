"""Checks of decoded input against the model, made before any compute."""

from __future__ import annotations

import numpy as np
import torch
from infgate.errors import InvalidInputError
from torch import nn

__all__ = ["check_token_ids", "embedding_size", "token_extremes"]


def embedding_size(model: nn.Module) -> int | None:
    """``num_embeddings`` of the model's first embedding, or ``None`` if it has none.

    Finds an ``nn.Embedding`` or ``nn.EmbeddingBag`` submodule, or in an exported (``pt2``)
    graph the weight of the first ``aten.embedding`` / ``aten.embedding_bag`` call, since
    exported modules no longer hold the modules.
    """
    for module in model.modules():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            return int(module.num_embeddings)
    for module in model.modules():  # the model, or a graph inside a wrapper (SplitInputs)
        if isinstance(getattr(module, "graph", None), torch.fx.Graph):
            return _graph_embedding_size(module)
    return None


def _graph_embedding_size(model: nn.Module) -> int | None:
    graph = getattr(model, "graph")  # noqa: B009  (a torch.fx.Graph, checked by the caller)
    assert isinstance(graph, torch.fx.Graph)
    aten = torch.ops.aten
    weight_first = (
        aten.embedding.default,
        aten.embedding_bag.default,
        aten.embedding_bag.padding_idx,
        aten._embedding_bag.default,
    )
    for node in graph.nodes:
        if node.op == "call_function" and (
            node.target in weight_first or node.target is torch.nn.functional.embedding
        ):
            weight = (
                node.args[0]
                if node.target in weight_first
                else (node.args[1] if len(node.args) > 1 else node.kwargs.get("weight"))
            )
            if getattr(weight, "op", None) == "get_attr":
                obj: object = model
                for part in str(weight.target).split("."):
                    obj = getattr(obj, part)
                if isinstance(obj, torch.Tensor):
                    return int(obj.shape[0])
    return None


def check_token_ids(
    low: int,
    high: int,
    num_embeddings: int,
    *,
    low_row: int | None = None,
    high_row: int | None = None,
    what: str = "training data",
) -> None:
    """Raise if token ids fall outside ``[0, num_embeddings)``.

    Args:
        low: smallest token id in the data.
        high: largest token id in the data.
        num_embeddings: the model's embedding rows.
        low_row: a row holding ``low`` (named in the message).
        high_row: a row holding ``high``.
        what: the data's name in messages.

    Raises:
        InvalidInputError: one line naming the id, the row and the embedding size.
    """
    if low < 0:
        at = f" (row {low_row})" if low_row is not None else ""
        raise InvalidInputError(
            f"{what} has token id {low}{at}; token ids must be >= 0 for the model's embedding"
        )
    if high >= num_embeddings:
        at = f" (row {high_row})" if high_row is not None else ""
        raise InvalidInputError(
            f"{what} has token id {high}{at} but the model's first nn.Embedding has only "
            f"{num_embeddings} rows (ids 0..{num_embeddings - 1}); re-tokenize with the model's "
            f"vocabulary"
        )


def token_extremes(features: np.ndarray) -> tuple[int, int, int, int]:
    """``(min, row of min, max, row of max)`` of integer features (rows first)."""
    flat = features.reshape(features.shape[0], -1)
    lo_i = int(np.unravel_index(np.argmin(flat), flat.shape)[0])
    hi_i = int(np.unravel_index(np.argmax(flat), flat.shape)[0])
    return int(flat.min()), lo_i, int(flat.max()), hi_i
