"""When may a trained model's outputs on its own training rows stand in for fresh rows?

Only through approximate leave-one-out outputs, and those are accurate only for a model
that is a generalized linear model in its trainable parameters (Rad & Maleki 2020); see
the "Validity" paragraph of :mod:`infgate.detect.mismatch`. :func:`glm_reason` is that rule.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["glm_reason"]


def glm_reason(model: nn.Module) -> str | None:
    """``None`` when ``model`` is a GLM in its trainable parameters (all in one
    ``nn.Linear``, nothing trainable upstream of it), else why not."""
    owners = {
        name.rsplit(".", 1)[0] if "." in name else ""
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    if not owners:
        return "the model has no trainable parameters"
    modules = dict(model.named_modules())
    if len(owners) == 1:
        owner = modules.get(next(iter(owners)))
        if isinstance(owner, nn.Linear) or _one_graph_linear(model):
            return None
    kinds = sorted({type(modules[o]).__name__ for o in owners if o in modules})
    return (
        f"the model is not linear in its parameters ({len(owners)} trainable modules: "
        f"{', '.join(kinds[:4])}); approximate leave-one-out outputs of its training rows are "
        f"not guaranteed to be distributed like outputs on fresh rows"
    )


def _one_graph_linear(model: nn.Module) -> bool:
    """A ``GraphModule`` (MLflow's pt2 flavour) whose trainable parameters all feed ONE
    ``aten.linear`` call, as its weight and bias: softmax regression, module types gone."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return False
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    users = {
        user
        for node in graph.nodes
        if node.op == "get_attr" and node.target in trainable
        for user in node.users
    }
    if len(users) != 1:
        return False
    (call,) = users
    return call.op == "call_function" and call.target is torch.ops.aten.linear.default
