"""Is a loaded registry model deterministic (in eval mode)? Influence needs it to be.

A pickled model is an ``nn.Module``: :func:`infgate.registry.load_model` switches it to eval
mode (MLflow keeps the mode it was saved in) and says so when it was saved in training mode.
An MLflow ``pt2`` model is a ``torch.export`` GraphModule: its mode was frozen into the graph
when it was exported (``model.eval()`` raises ``NotImplementedError``), so a model logged in
training mode carries dropout that draws fresh noise on every call and batch norm that
normalises with the batch's own statistics (and updates its running ones). Its gradients
would depend on the batch; :func:`check_eval_mode` refuses it with a
:class:`~infgate.errors.ModelStateError` that names the ops and how to fix it.
"""

from __future__ import annotations

import logging
from typing import Any

from infgate.errors import ModelStateError
from torch import nn

__all__ = ["check_eval_mode", "training_mode_ops"]

log = logging.getLogger(__name__)

#: aten ops whose behaviour depends on a train flag, and the index of that flag argument.
_TRAIN_FLAG = {
    "dropout": 2,
    "feature_dropout": 2,
    "alpha_dropout": 2,
    "feature_alpha_dropout": 2,
    "native_dropout": 2,
    "batch_norm": 5,
    "native_batch_norm": 5,
    "instance_norm": 5,
}
#: aten ops that only exist in training mode.
_TRAINING_ONLY = ("_native_batch_norm_legit", "_native_batch_norm_legit_functional")


def _op_name(target: Any) -> str:
    """``aten.batch_norm.default`` -> ``batch_norm``."""
    name = getattr(target, "__name__", str(target))  # "batch_norm.default"
    return str(name).split(".")[0]


def training_mode_ops(model: nn.Module) -> list[str]:
    """The training-mode ops a ``torch.export`` graph holds (``[]`` for other modules)."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return []
    found: list[str] = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        if name in _TRAINING_ONLY:
            found.append(name)
            continue
        index = _TRAIN_FLAG.get(name)
        if index is None:
            continue
        flag = node.args[index] if len(node.args) > index else node.kwargs.get("train")
        if flag is None:
            flag = node.kwargs.get("training")
        if flag is True:
            found.append(name)
    return found


def check_eval_mode(model: nn.Module, uri: str) -> None:
    """Refuse a ``pt2`` model exported in training mode.

    Raises:
        ModelStateError: the graph holds dropout or batch norm in training mode.
    """
    ops = training_mode_ops(model)
    if ops:
        kinds = sorted(set(ops))
        raise ModelStateError(
            f"{uri} was logged in training mode: its pt2 graph has {len(ops)} training-mode "
            f"op(s) ({', '.join(kinds)}), so its outputs change from call to call and with the "
            f"batch; call model.eval() before mlflow.pytorch.log_model and register the new "
            f"version (or log it with serialization_format='pickle', which infgate switches "
            f"to eval mode)"
        )
